"""The same answer twice (#33): the same experiment config and seeds on the same machine give
the same evaluation rows and the same imitator weights, bitwise, when run again and when its
evaluation is killed partway and resumed; and every stage records what else its result depends
on (seeds, library versions, the CPU's kernels, thread counts), in its manifest and as params of
its MLflow stage run. Real experiments at the tiny scale, through the CLI."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from understudy.histories import shards
from understudy.platform import reproducibility
from understudy.platform.manifests import TeachManifest
from understudy.platform.workspace import Workspace

LIBRARIES = {"python", "torch", "ray", "numpy", "gymnasium", "ale_py", "minatar", "mlflow", "pyarrow"}
# what differs between two runs of the same thing by design: MLflow's ids and the seconds tasks took
VOLATILE = ("mlflow_run_id", "played_s", "tasks")


def test_a_stage_manifest_written_before_the_record_existed_still_validates():
    older = {"kind": "teach", "name": "t", "shard_root": "/x", "runs": [{"run_id": "r", "game": "DarkRoom"}]}
    assert TeachManifest.model_validate(older).reproducibility is None
    record = reproducibility.record(seeds={"teachers": [0, 1]})
    assert TeachManifest.model_validate({**older, "reproducibility": record}).reproducibility.seeds == {
        "teachers": [0, 1]}


def test_the_record_names_seeds_versions_cpu_and_threads_and_flattens_to_params(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    record = reproducibility.record(seeds={"training": [0, 2]}, workers={"trials": {"torch": 2}})
    assert set(record["versions"]) == LIBRARIES and record["versions"]["torch"] == torch.__version__
    assert record["cpu"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"]["driver"]["torch"] == torch.get_num_threads()
    assert record["threads"]["driver"]["OMP_NUM_THREADS"] == "3"
    params = reproducibility.params(record)
    assert params["seeds.training"] == "[0, 2]" and params["versions.torch"] == torch.__version__
    assert params["threads.trials.torch"] == "2" and params["threads.driver.OMP_NUM_THREADS"] == "3"
    # workers that disagree are all named, never one for all
    assert reproducibility.worker_threads([{"torch": 1}, None, {"torch": 1}]) == {"torch": 1}
    assert reproducibility.worker_threads([{"torch": 1}, {"torch": 2}]) == [{"torch": 1}, {"torch": 2}]


# ---- the same outcome, checked -----------------------------------------------------------------

def _manifest(ws, kind: str, name: str) -> dict:
    return json.loads((ws / "stages" / f"{kind}-{name}.json").read_text())


def _stages(ws, kind: str) -> list[str]:
    return sorted(p.name[len(kind) + 1:-5] for p in (ws / "stages").glob(f"{kind}-*.json")
                  if not p.name.endswith(".running.json"))


def _weights(checkpoint: str) -> dict:
    from understudy.platform import storage

    with storage.local_copy(checkpoint) as local:  # a download from object storage
        return torch.load(os.path.join(local, "model.pt"), weights_only=True)


def _history(root: str, run_id: str) -> dict:
    table = shards.open_run(root, run_id).to_table()
    return {c: table[c] for c in table.schema.names if c != "run_id"}  # the run id holds the session's time


def assert_same_outcome(a, b, experiment: str | None) -> None:
    """Two workspaces of the same experiment (or pipeline: None) and seeds hold the same
    outcome: the raw results rows, the evaluation's rows and aggregate, every imitator's
    weights and every recorded history, bitwise."""
    if experiment is not None:
        rows_a = json.loads((a / "results" / f"{experiment}.json").read_text())
        rows_b = json.loads((b / "results" / f"{experiment}.json").read_text())
        assert rows_a and rows_a == rows_b
    evaluations = _stages(a, "evaluate")
    assert evaluations and evaluations == _stages(b, "evaluate")
    for name in evaluations:
        ea, eb = _manifest(a, "evaluate", name), _manifest(b, "evaluate", name)
        strip = lambda rows: [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]  # noqa: E731
        assert ea["episodes"] and ea["episodes"] == eb["episodes"], name  # the raw rows of a pipeline too
        assert strip(ea["rows"]) == strip(eb["rows"]) and ea["aggregate"] == eb["aggregate"], name
    distills = _stages(a, "distill")
    assert distills and distills == _stages(b, "distill")
    for name in distills:
        runs_a, runs_b = _manifest(a, "distill", name)["runs"], _manifest(b, "distill", name)["runs"]
        assert [r["seed"] for r in runs_a] == [r["seed"] for r in runs_b]
        for ra, rb in zip(runs_a, runs_b):
            wa, wb = _weights(ra["checkpoint"]), _weights(rb["checkpoint"])
            assert wa.keys() == wb.keys()
            differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
            assert not differ, (name, ra["seed"], differ)
    for name in _stages(a, "teach"):
        ta, tb = _manifest(a, "teach", name), _manifest(b, "teach", name)
        assert len(ta["runs"]) == len(tb["runs"])
        for ra, rb in zip(ta["runs"], tb["runs"]):
            ha, hb = _history(ta["shard_root"], ra["run_id"]), _history(tb["shard_root"], rb["run_id"])
            differ = [c for c in ha if not ha[c].equals(hb[c])]
            assert ha.keys() == hb.keys() and not differ, (name, ra["run_id"], differ)


def assert_recorded(ws) -> None:
    """Every stage's manifest and MLflow stage run name its seeds, the library versions and the
    threads of the driver and of the workers that did the work."""
    client = MlflowClient(Workspace.resolve(str(ws)).tracking_uri)
    workers = {"teach": "trials", "distill": "trials", "evaluate": "play"}
    for kind in ("teach", "distill", "evaluate"):
        for name in _stages(ws, kind):
            manifest = _manifest(ws, kind, name)
            record = manifest["reproducibility"]
            assert record["seeds"] and set(record["versions"]) == LIBRARIES, (kind, name)
            assert record["versions"]["torch"] == torch.__version__
            assert record["threads"]["driver"]["torch"] >= 1
            local_teach = kind == "teach" and manifest["algorithm"] in ("qlearning", "annealed")
            if not local_teach:  # a history source records in the driver
                assert record["threads"][workers[kind]]["torch"] >= 1, (kind, name, record["threads"])
            (run,) = [r for r in client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                f"tags.`understudy.stage` = '{kind}' and params.stage = '{name}'")]
            params = run.data.params
            assert params["versions.torch"] == torch.__version__ and params["versions.mlflow"]
            assert params["cpu.torch_cpu_capability"] == record["cpu"]["torch_cpu_capability"]
            assert params["threads.driver.torch"] == str(record["threads"]["driver"]["torch"])
            assert any(k.startswith("seeds.") for k in params), (kind, name)
            if not local_teach:
                assert params[f"threads.{workers[kind]}.torch"] == str(record["threads"][workers[kind]]["torch"])
    evaluation = _manifest(ws, "evaluate", _stages(ws, "evaluate")[0])
    assert evaluation["reproducibility"]["seeds"]["env_seeds"]  # each run's env seed (players.eval_seed)


def _experiment(ws, name: str, *extra: str) -> None:
    from understudy.platform import cli

    assert cli.main(["--workspace", str(ws), "experiment", name, "--scale", "tiny", *extra]) == 0


# ---- Dark Room ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def darkroom(ray_session, tmp_path_factory):
    """The tiny Dark Room experiment, run once uninterrupted: the reference."""
    ws = tmp_path_factory.mktemp("darkroom") / "ws"
    _experiment(ws, "darkroom_ad")
    return ws


@pytest.mark.slow
def test_darkroom_experiment_run_twice_gives_the_same_rows_weights_and_histories(darkroom, tmp_path):
    """Q-learning histories, AD and ED imitators (two training seeds), every evaluation agent
    with the fine-tuning arm and the learner from scratch: twice in one Ray session, whose
    worker processes carry the first run's state into the second."""
    again = tmp_path / "ws"
    _experiment(again, "darkroom_ad")
    assert_same_outcome(darkroom, again, "darkroom_ad")
    assert_recorded(again)


@pytest.mark.slow
def test_darkroom_evaluation_killed_partway_resumes_with_the_same_rows(darkroom, tmp_path):
    """SIGKILL the whole `understudy experiment` process group while its evaluation plays (some
    tasks done, others not), then `--resume`: the finished tasks are read back, the others
    played, and the rows are those of the unbroken run; the runs the killed invocation left
    RUNNING in MLflow are ended as KILLED, none is left running and none finished twice."""
    from conftest import REPO_ROOT

    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "understudy.platform.cli", "--workspace", str(ws), "experiment", "darkroom_ad",
           "--scale", "tiny"]
    env = {**os.environ, "UNDERSTUDY_NUM_CPUS": "2"}
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + 600
    try:
        while True:
            done = [int(n) for n in re.findall(r"\[evaluate\] (\d+)/\d+ done", log_path.read_text())]
            if done and max(done) >= 3:
                break
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "no third evaluation task in time"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    total = int(re.search(r"\[evaluate\] \d+/(\d+) done", log_path.read_text()).group(1))
    assert not (ws / "stages" / "evaluate-darkroom_ad-evaluate.json").exists(), "killed after it finished"
    assert (ws / "stages" / "evaluate-darkroom_ad-evaluate.running.json").exists()
    finished = len(list((ws / "stages" / "evaluate-darkroom_ad-evaluate.tasks").glob("*.json")))
    assert 3 <= finished < total

    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert out.count("finished earlier with this config") == 3  # teach and both distills: not run again
    read_back = int(re.search(r"\[evaluate\] --resume: (\d+) task\(s\) that finished before", out).group(1))
    assert read_back == finished
    assert re.search(r"\[mlflow\] --resume: \d+ run\(s\) an interrupted invocation left RUNNING", out), out[-3000:]
    assert_same_outcome(darkroom, ws, "darkroom_ad")
    assert not (ws / "stages" / "evaluate-darkroom_ad-evaluate.tasks").exists()  # nothing left to resume
    assert_runs_settled(ws, "darkroom_ad", killed=1)


def assert_runs_settled(ws, study: str, killed: int, tracking_uri: str | None = None) -> None:
    """No run of the study is left RUNNING; each stage, trial and evaluation agent finished in
    one run; each of the `killed` invocations shows as KILLED beside the one that finished."""
    client = MlflowClient(tracking_uri or Workspace.resolve(str(ws)).tracking_uri)
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    stages = [(r.data.tags["understudy.stage"], r.data.params["stage"]) for r in finished
              if "understudy.stage" in r.data.tags]
    assert len(stages) == len(set(stages)), sorted(stages)
    trials = [(r.data.tags["tune.experiment"], r.data.tags["tune.trial_id"]) for r in runs
              if "tune.trial_id" in r.data.tags]
    assert len(trials) == len(set(trials)), sorted(trials)  # a resumed trial continues its own run
    agents = [(r.data.params["stage"], r.data.params["agent"], r.data.params["game"]) for r in finished
              if "agent" in r.data.params]
    assert agents and len(agents) == len(set(agents)), sorted(agents)
    invocations = sorted(r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert invocations == ["FINISHED"] + ["KILLED"] * killed, invocations


# ---- MinAtar ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_minatar_experiment_run_twice_gives_the_same_rows_weights_and_histories(ray_session, tmp_path):
    """A PPO teacher on MinAtar Breakout (sampling in its trial's own process), AD on the first
    part of its history, and the imitator, the teacher, random and no-op play and PPO from
    scratch (RLlib in a Ray task): twice in one Ray session."""
    for ws in (tmp_path / "a", tmp_path / "b"):
        _experiment(ws, "minatar_teacher_cutoff")
    assert_same_outcome(tmp_path / "a", tmp_path / "b", "minatar_teacher_cutoff")
    assert_recorded(tmp_path / "b")


@pytest.mark.slow
def test_smoke_pipeline_run_twice_gives_the_same_rows_weights_and_histories(ray_session, tmp_path):
    """The smallest real pipeline: two PPO teachers on ALE Breakout and Pong as parallel Tune
    trials (ale-py's vector env stepping half its envs while the policy acts on the other
    half), a BC imitator, imitator, teacher and random play on both games: twice."""
    from conftest import REPO_ROOT

    from understudy.platform import cli

    for ws in (tmp_path / "a", tmp_path / "b"):
        assert cli.main(["--workspace", str(ws), "pipeline",
                         os.path.join(REPO_ROOT, "tune_configs/pipelines/smoke.yaml")]) == 0
    assert_same_outcome(tmp_path / "a", tmp_path / "b", None)
    assert_recorded(tmp_path / "b")


@pytest.mark.slow
def test_a_teacher_sampling_on_one_env_runner_records_the_same_history_twice(ray_session, tmp_path):
    """Sampling on a remote env runner process instead of the trial's own: the teacher's
    history (every frame, action, reward and policy output) is the same again. With several
    env runners or APPO it is not promised (docs/reliability.md)."""
    from understudy.platform import cli

    config = tmp_path / "teach.yaml"
    config.write_text("kind: teach\nname: one-runner\nalgorithm: ppo\npreset: minatar\ngames: [MinAtar/Breakout]\n"
                      "env_steps: 2048\nnum_env_runners: 1\n")
    for ws in (tmp_path / "a", tmp_path / "b"):
        assert cli.main(["--workspace", str(ws), "teach", str(config)]) == 0
    assert_same_outcome_of_teach(tmp_path / "a", tmp_path / "b")


def assert_same_outcome_of_teach(a, b) -> None:
    ta, tb = _manifest(a, "teach", "one-runner"), _manifest(b, "teach", "one-runner")
    ((ra,), (rb,)) = ta["runs"], tb["runs"]
    assert ra["recorded_steps"] == rb["recorded_steps"] > 0
    ha, hb = _history(ta["shard_root"], ra["run_id"]), _history(tb["shard_root"], rb["run_id"])
    assert all(ha[c].equals(hb[c]) for c in ha), [c for c in ha if not ha[c].equals(hb[c])]
