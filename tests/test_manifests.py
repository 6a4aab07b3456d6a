"""Stage manifests are typed: written from their models, read back validated, and a broken one
is refused with one line that names the file and the field."""
import json

import pytest

from understudy.platform import cli
from understudy.platform.manifests import DistillManifest, TeachManifest, TeachRun
from understudy.platform.workspace import StageInvalid, Workspace


def test_a_manifest_round_trips_as_its_model(tmp_path):
    ws = Workspace.resolve(str(tmp_path / "ws")).ensure()
    teach = TeachManifest(name="t", shard_root="/shards", algorithm="ppo",
                          runs=[TeachRun(run_id="r1", game="Breakout", seed=3, checkpoint="/ck")])
    ws.write_stage("teach", "t", teach)
    back = ws.read_stage("teach", "t")
    assert isinstance(back, TeachManifest) and back == teach
    assert back.runs[0].checkpoint == "/ck" and back.runs[0].goal is None
    # a dict is validated on the way in, so nothing untyped reaches the workspace
    with pytest.raises(ValueError, match="shard_root"):
        ws.write_stage("teach", "u", {"kind": "teach", "name": "u"})
    assert not ws.stage_path("teach", "u").exists()


def test_unknown_keys_are_ignored_and_missing_optional_ones_default(tmp_path):
    ws = Workspace.resolve(str(tmp_path / "ws")).ensure()
    ws.stage_path("teach", "old").write_text(json.dumps(
        {"kind": "teach", "name": "old", "shard_root": "/s", "runs": [{"run_id": "r", "game": "Pong"}],
         "from_a_newer_version": 1}))
    assert ws.read_stage("teach", "old").runs[0].seed == 0


def test_a_broken_manifest_names_the_file_and_the_field(tmp_path, capsys):
    ws = Workspace.resolve(str(tmp_path / "ws")).ensure()
    path = ws.stage_path("distill", "d")
    path.write_text(json.dumps({"kind": "distill", "name": "d", "num_actions": "many"}))
    with pytest.raises(StageInvalid) as err:
        ws.read_stage("distill", "d")
    assert str(path) in str(err.value) and "algorithm" in str(err.value)
    fields = DistillManifest.model_fields
    assert "data_returns" in fields and "checkpoint" in fields

    config = tmp_path / "eval.yaml"
    config.write_text("kind: evaluate\nname: e\nimitator: d\nteacher: t\ngames: [DarkRoom]\nagents: [random]\n")
    ws.write_stage("teach", "t", TeachManifest(name="t", shard_root="/s"))
    assert cli.main(["--workspace", str(ws.root), "evaluate", str(config)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and str(path) in line and "not a valid distill manifest" in line


def test_an_interrupted_stage_resumes_only_with_the_config_it_started_with(tmp_path, capsys):
    """`--resume` of a stage started with another config (a key changed, a key the code added
    since) starts it afresh, saying what changed, instead of restoring trials built from the
    old config; the same config resumes; a marker without its config cannot be trusted."""
    ws = Workspace.resolve(str(tmp_path / "ws"), None, None, None)
    ws.ensure()
    started = {"lr": 0.001, "model": {"d_model": 64, "dropout": 0.1}}
    ws.write_stage("distill", "ad.running", {"experiment": "/x/distill-ad-1", "config": started})
    assert ws.interrupted("distill", "ad", json.loads(json.dumps(started)))["experiment"] == "/x/distill-ad-1"
    assert capsys.readouterr().out == ""

    now = {"lr": 0.001, "model": {"d_model": 64, "dropout": 0.1, "attention_dropout": 0.0}}
    assert ws.interrupted("distill", "ad", now) is None
    out = capsys.readouterr().out
    assert "[distill] --resume: the interrupted stage 'ad'" in out and "starting it afresh" in out
    assert "model.attention_dropout: '(absent)' -> 0.0" in out

    ws.write_stage("teach", "t.running", {"session": "s", "experiment": "/x/teach-t-s"})
    assert ws.interrupted("teach", "t", started) is None
    assert "config not recorded" in capsys.readouterr().out


def test_a_tune_state_file_cut_by_a_kill_is_restored_from_tune_s_staging_copy(tmp_path, monkeypatch, capsys):
    """A SIGKILL while Tune copied its searcher state to the storage folder leaves it truncated,
    and Tune would then silently start the whole run over. The intact staging copy replaces it;
    with no copy left, the stage is not resumed, and one line says so."""
    import ray.cloudpickle as cloudpickle

    from understudy.platform.workspace import repair_tune_state, tune_state_usable

    name = "distill-d-20261207-010101"
    experiment = tmp_path / "ray_results" / name
    experiment.mkdir(parents=True)
    state = {"_trial_generator": [], "_finished": True}
    (experiment / "experiment_state-s.json").write_text(json.dumps({"trial_data": []}))
    (experiment / "basic-variant-state-s.json").write_bytes(cloudpickle.dumps(state)[:7])  # cut short
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    assert not tune_state_usable("distill", str(experiment))
    assert "[distill] --resume: Tune's state" in capsys.readouterr().out

    staging = tmp_path / "tmp" / "ray" / "session_1" / "artifacts" / "2026-12-07_01-01-01" / name / "driver_artifacts"
    staging.mkdir(parents=True)
    (staging / "basic-variant-state-s.json").write_bytes(cloudpickle.dumps(state))
    assert repair_tune_state(str(experiment)) == []
    assert "restored from Tune's own copy" in capsys.readouterr().out
    assert cloudpickle.loads((experiment / "basic-variant-state-s.json").read_bytes()) == state
    assert tune_state_usable("distill", str(experiment)) and capsys.readouterr().out == ""


def test_json_is_written_whole_or_not_at_all_and_readable_by_others(tmp_path):
    import json
    import stat

    from understudy.platform.workspace import write_json_atomic

    path = write_json_atomic(tmp_path / "results" / "x.json", [{"a": 1}])
    assert json.loads(path.read_text()) == [{"a": 1}]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's owner-only 0600
    with pytest.raises(TypeError):
        write_json_atomic(path, [{"a": object()}])  # fails half-way through the dump
    assert json.loads(path.read_text()) == [{"a": 1}]  # the old file stands
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary left behind
