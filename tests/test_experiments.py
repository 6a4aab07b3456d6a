"""Ready experiments: every file validates at every scale, and the Dark Room experiment runs
end to end through the CLI (Q-learning histories -> AD and ED imitators under Tune -> every
evaluation agent as Ray tasks -> MLflow), then `understudy report` prints it back."""
import json
import os
import re
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from understudy.platform.config import ConfigError, parse_config


def test_every_ready_experiment_validates_at_every_scale():
    from understudy.platform import experiment
    from understudy.platform.distill import selected_games

    names = experiment.available()
    assert {"breakout_to_spaceinvaders", "teacher_cutoff", "multigame_holdout", "darkroom_ad"} <= set(names)
    for name in names:
        scales = yaml.safe_load(experiment.experiment_path(name).read_text())["scales"]
        assert {"demo", "full"} <= set(scales), name
        for scale in scales:
            cfg = experiment.load(name, scale)
            assert cfg.scale == scale
            assert cfg.distill.teacher == cfg.teach.name == cfg.evaluate.teacher
            assert cfg.evaluate.imitator == cfg.distill.name
            assert not set(cfg.evaluate.heldout_games) & set(selected_games(cfg.distill)), (name, scale)
            for part in experiment.rotations(cfg) if cfg.leave_one_out else ():  # each rotation's game never trained on
                assert part.evaluate.heldout_games and not (set(part.evaluate.heldout_games)
                                                            & set(selected_games(part.distill))), (name, scale)


def test_ready_contexts_hold_two_episodes_wherever_episode_length_is_capped():
    """Where the teacher's episodes are capped (Dark Room's 20 steps, the demos' step cap), the
    AD context holds at least two whole episodes by construction, so distill's check passes;
    uncapped (full Atari) scales are checked on the recorded data at distill time."""
    from understudy.algorithms import imitators
    from understudy.platform import experiment

    checked = 0
    for name in experiment.available():
        for scale in ("tiny", "demo", "full"):
            try:
                cfg = experiment.load(name, scale)
            except ConfigError:
                continue
            cap = 20 if cfg.teach.games == ["DarkRoom"] else cfg.teach.max_episode_steps
            if not imitators.get(cfg.distill.algorithm).cross_episode or cap is None:
                continue
            assert cfg.distill.model.context >= 2 * cap, (name, scale, cfg.distill.model.context, cap)
            assert cfg.evaluate.max_episode_steps in (None, cap), (name, scale)  # plays episodes as it saw them
            checked += 1
    assert checked >= 6


def test_full_scale_is_the_same_file_with_bigger_numbers():
    from understudy.platform import experiment

    demo, full = experiment.load("multigame_holdout", "demo"), experiment.load("multigame_holdout", "full")
    assert demo.distill.algorithm == full.distill.algorithm == "ad"
    assert len(full.teach.games) == 46 and full.evaluate.heldout_games == [
        "Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner"]
    assert demo.evaluate.heldout_games == ["Pong", "SpaceInvaders"]


def test_unknown_experiment_and_scale_are_named():
    from understudy.platform import experiment

    with pytest.raises(ConfigError, match="ready ones: .*darkroom_ad"):
        experiment.load("darkroom")
    with pytest.raises(ConfigError, match="scale 'huge' is not defined; valid: .*full"):
        experiment.load("darkroom_ad", "huge")


def test_heldout_game_in_the_training_data_is_rejected_before_anything_runs():
    data = {"kind": "experiment", "name": "x",
            "teach": {"algorithm": "ppo", "games": ["Breakout", "Pong"], "env_steps": 1024},
            "distill": {"games": ["Breakout", "Pong"]},
            "evaluate": {"games": ["Breakout", "Pong"], "heldout_games": ["Pong"]}}
    with pytest.raises(ConfigError, match=r"heldout_games \['Pong'\] are also training games"):
        parse_config(data)
    data["distill"] = {"games": ["Breakout", "Pong"], "data": {"games": ["Breakout"]}}
    assert parse_config(data).evaluate.heldout_games == ["Pong"]  # filtered out of the data: fine


@pytest.mark.slow
def test_darkroom_experiment_end_to_end_and_report(ray_session, postgres, tmp_path, capsys, monkeypatch):
    """Through an `mlflow server` whose backend store is PostgreSQL, as on a cluster (k8s/)."""
    from services import mlflow_server

    from understudy.platform import cli

    ws = tmp_path / "ws"
    with mlflow_server(str(tmp_path), str(tmp_path / "mlartifacts"), dict(os.environ),
                       postgres.database_for(str(tmp_path))) as server:
        argv = ["--workspace", str(ws), "--tracking-uri", server.uri]
        assert cli.main([*argv, "experiment", "darkroom_ad", "--scale", "tiny"]) == 0
        printed = capsys.readouterr().out
        # distill progress with totals: updates done / a trial's total, an ETA, trials done / all
        assert re.search(r"\[distill\] darkroom_ad-imitator-ad-DarkRoom-\S+: steps 4/~?4 \(ETA 0 min\) "
                         r".*\[\d/2 trials done\]", printed), printed
        check_darkroom_outputs(ws, server.uri)
        check_darkroom_study(ws, server.uri, printed, monkeypatch)
        check_stage_speeds(ws)
        capsys.readouterr()
        assert cli.main([*argv, "report", "darkroom_ad"]) == 0
        out = capsys.readouterr().out
        evaluation = json.loads((ws / "stages" / "evaluate-darkroom_ad-evaluate.json").read_text())
        assert "Experiment darkroom_ad" in out and "| imitator | DarkRoom | True | 2 | 32 | 4 |" in out
        assert out.strip().endswith(evaluation["table"].strip().splitlines()[-1])
        assert cli.main([*argv, "report", "breakout_to_spaceinvaders"]) == 1
        assert "experiments with results: darkroom_ad" in capsys.readouterr().err


def _stage_speeds():
    """bench/stage_speeds.py as a module (bench/ is not a package)."""
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("stage_speeds", os.path.join(REPO_ROOT, "bench", "stage_speeds.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_stage_speeds(ws):
    """bench/stage_speeds.py reads every finished distill stage's real trials back from Tune's
    own records (one figure per trial, from the updates it made and the seconds it ran), and
    every evaluation's playing tasks from their own times (env steps per second per agent)."""
    stage_speeds = _stage_speeds()
    stages = {s["stage"]: s for s in stage_speeds.distill_stages(str(ws))}
    assert set(stages) == {"darkroom_ad-imitator", "darkroom_ad-ed"}
    for name, stage in stages.items():
        manifest = json.loads((ws / "stages" / f"distill-{name}.json").read_text())
        assert set(stage["trials"]) == {str(t["seed"]) for t in manifest["trials"]}
        assert stage["model"] == {k: v for k, v in manifest["config"]["model"].items() if v is not None}
        for trial in stage["trials"].values():
            assert trial["updates"] > 0 and 0 < trial["seconds_per_update"] <= trial["seconds"]
    evaluation = json.loads((ws / "stages" / "evaluate-darkroom_ad-evaluate.json").read_text())
    for row in evaluation["rows"]:  # every playing task's own seconds and env steps
        if "tasks" in row:
            assert row["tasks"] and all(t["seconds"] > 0 for t in row["tasks"]), row["agent"]
            assert sum(t["env_steps"] for t in row["tasks"]) == row["env_steps"], row["agent"]
    plays = {p["agent"]: p for p in stage_speeds.evaluate_stages(str(ws))}
    assert {"imitator", "ed", "random", "noop", "scratch", "finetune"} <= set(plays)
    assert all(p["family"] == "darkroom" and p["env_steps_per_s"] > 0 for p in plays.values())
    assert plays["imitator"]["model"] == stages["darkroom_ad-imitator"]["model"]
    assert plays["ed"]["model"] == stages["darkroom_ad-ed"]["model"] and plays["random"]["model"] is None


def check_darkroom_outputs(ws, tracking_uri):
    manifest = json.loads((ws / "stages" / "experiment-darkroom_ad.json").read_text())
    assert manifest["scale"] == "tiny"
    evaluation = json.loads((ws / "stages" / "evaluate-darkroom_ad-evaluate.json").read_text())
    rows = {r["agent"]: r for r in evaluation["rows"]}
    assert set(rows) == {"imitator", "context_reset", "reward_blind", "warmup", "ed", "random", "noop", "scratch",
                         "finetune"}
    for agent, row in rows.items():  # 16 held-out goals, 4 consecutive episodes each
        # two AD seeds (ED one); the controls play AD's runs; random and no-op one run beside each
        two = agent in ("imitator", "context_reset", "reward_blind", "warmup", "finetune", "scratch", "random", "noop")
        assert row["held_out"] and row["runs"] == (2 if two else 1) and row["episodes"] == 4, agent
        assert row["copies"] == (32 if two else 16), agent
        assert row["data_best"] > 0 and "improvement" in row and "late_normalized" in row
    assert rows["noop"]["return_mean"] == 0.0  # the centre is never a goal
    # learners and players get the same env steps, counted: 2 runs x 16 goals x 4 episodes x 20 steps
    assert {rows[a]["env_steps"] for a in ("imitator", "finetune", "scratch")} == {2560}
    assert rows["ed"]["env_steps"] == 1280
    distills = {n: json.loads((ws / "stages" / f"distill-darkroom_ad-{n}.json").read_text())
                for n in ("imitator", "ed")}
    assert distills["imitator"]["checkpoint"] != distills["ed"]["checkpoint"]
    assert [r["seed"] for r in distills["imitator"]["runs"]] == [0, 1]
    assert {a["agent"]: a["runs"] for a in evaluation["aggregate"]}["imitator"] == 2
    # raw rows: one per agent, goal, training run and copy
    raw = json.loads((ws / "results" / "darkroom_ad.json").read_text())
    imitator = [r for r in raw if r["agent"] == "imitator"]
    assert len(imitator) == 16 * 2 and {r["imitator_seed"] for r in imitator} == {0, 1}
    assert all(len(r["episode_returns"]) == 4 and r["optimal_return"] > 0 and r["teacher_seed"] == 0
               for r in imitator)
    assert all(r["arm"] == "imitator" and r["heldout"] is True and 0 <= r["task"] < 16 for r in imitator)
    # paired: random's run beside AD seed s plays AD seed s's env seeds, and the two seeds differ
    seeds: dict = {}
    for r in raw:
        if r["agent"] != "scratch":  # a learner from scratch: its run seed is its training seed
            seeds.setdefault(r["run_seed"], set()).add(r["eval_seed"])
    seeds.pop(None, None)
    assert len(seeds[0]) == len(seeds[1]) == 1 and seeds[0] != seeds[1], seeds
    assert {r["agent"] for r in raw if r["run_seed"] == 1} >= {"imitator", "context_reset", "reward_blind",
                                                              "warmup", "random", "noop"}
    # the controls' in-context effect is reported on the per-goal scale (paired over AD's 2 runs)
    assert {f"imitator - {c}" for c in ("context_reset", "reward_blind", "warmup")} <= {
        line.split(" | ")[0].lstrip("| ") for line in evaluation["table"].splitlines()}

    client = MlflowClient(tracking_uri)
    summary = client.get_run(evaluation["summary_run_id"])
    assert summary.data.tags["understudy.experiment"] == "darkroom_ad"
    assert {"returns_per_episode.png", "results.md", "results.html"} <= {
        a.path for a in client.list_artifacts(summary.info.run_id)}
    finetune = client.get_run(rows["finetune"]["mlflow_run_id"])
    assert int(finetune.data.params["gradient_steps"]) > 0  # the weights really were updated
    history = client.get_metric_history(rows["imitator"]["mlflow_run_id"], "episode_return")
    assert len(history) == 4
    ed_run = client.search_runs([client.get_experiment_by_name("darkroom_ad").experiment_id],
                                filter_string="params.stage = 'darkroom_ad-ed' and tags.`tune.trial_id` != ''")[0]
    assert ed_run.data.params["data.expert_last"] == "5"


def check_darkroom_study(ws, tracking_uri, printed, monkeypatch):
    """The study as MLflow's UI shows it: its own experiment with a description, one parent run
    for the invocation (its URL printed), stage runs under it, trial and agent runs under
    those, unique names; the answer on the parent; the shards each imitator read as its
    dataset; the code version as the source; real durations; models in the registry."""
    import mlflow
    import torch

    from understudy.algorithms import imitation
    from understudy.platform import experiment, tracking

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("darkroom_ad")
    assert exp.tags["mlflow.note.content"] == experiment.load("darkroom_ad").description
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
    parent_of = {i: r.data.tags.get("mlflow.parentRunId") for i, r in runs.items()}
    (parent,) = [runs[i] for i, p in parent_of.items() if p is None]
    assert f"{tracking_uri}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}" in printed
    assert parent.info.status == "FINISHED"
    stages = {r.data.tags["understudy.stage"] + " " + r.data.params["stage"]: r for r in runs.values()
              if "understudy.stage" in r.data.tags}
    assert sorted(stages) == ["distill darkroom_ad-ed", "distill darkroom_ad-imitator",
                              "evaluate darkroom_ad-evaluate", "teach darkroom_ad-teach"]
    assert all(parent_of[r.info.run_id] == parent.info.run_id and r.info.status == "FINISHED"
               for r in stages.values())
    names = [r.info.run_name for r in runs.values()]
    assert len(set(names)) == len(names), sorted(names)

    # teacher, trial and agent runs sit under their stage's run
    stage_of = {n: r.info.run_id for n, r in stages.items()}
    teach = json.loads((ws / "stages" / "teach-darkroom_ad-teach.json").read_text())
    assert {parent_of[r["mlflow_run_id"]] for r in teach["runs"]} == {stage_of["teach darkroom_ad-teach"]}
    evaluation = json.loads((ws / "stages" / "evaluate-darkroom_ad-evaluate.json").read_text())
    assert evaluation["summary_run_id"] == stage_of["evaluate darkroom_ad-evaluate"]
    assert {parent_of[r["mlflow_run_id"]] for r in evaluation["rows"]} == {evaluation["summary_run_id"]}
    trials = {}
    for name in ("imitator", "ed"):
        distill = json.loads((ws / "stages" / f"distill-darkroom_ad-{name}.json").read_text())
        for trial in distill["trials"]:
            run = runs[trial["mlflow_run_id"]]
            assert parent_of[run.info.run_id] == stage_of[f"distill darkroom_ad-{name}"]
            # the shards it read, as an MLflow dataset input: teach stage, data version, shard root
            (read,) = run.inputs.dataset_inputs
            assert (read.dataset.name, read.dataset.digest) == ("teach darkroom_ad-teach", distill["data_version"])
            assert json.loads(read.dataset.source)["uri"] == distill["shard_root"]
            trials[run.info.run_id] = (trial, distill["data_version"])
    assert len(trials) == 3  # two AD seeds, one ED

    # the evaluation's answer on the parent run
    aggregate = {a["agent"]: a for a in evaluation["aggregate"]}
    rows = {r["agent"]: r for r in evaluation["rows"]}
    for key in ("iqm", "ci_low", "ci_high"):
        assert parent.data.metrics[f"{key}/imitator/heldout"] == pytest.approx(aggregate["imitator"][key])
    assert parent.data.metrics["improvement/imitator/DarkRoom"] == pytest.approx(rows["imitator"]["improvement"])

    # the code version in MLflow's source tags
    commit = tracking.code_version().removesuffix("+dirty")
    assert all(r.data.tags["mlflow.source.git.commit"] == commit and
               r.data.tags["mlflow.source.name"].startswith("understudy experiment darkroom_ad")
               for r in runs.values())

    # agent runs last as long as their tasks played, not the moment it took to log them
    assert rows["finetune"]["played_s"] > 1  # it trains as it plays: seconds (noop: milliseconds)
    for row in evaluation["rows"]:
        info = runs[row["mlflow_run_id"]].info
        assert info.end_time - info.start_time == pytest.approx(row["played_s"] * 1000, abs=2), row["agent"]
        summary = runs[evaluation["summary_run_id"]].info
        assert summary.start_time <= info.start_time and info.end_time <= summary.end_time

    # one registered model per study and algorithm, a version per trained run, tagged with its data
    versions = client.search_model_versions("name = 'darkroom_ad-ad'")
    assert sorted(v.run_id for v in versions) == sorted(trials)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    for v in versions:
        trial, data_version = trials[v.run_id]
        assert v.tags["understudy.data_version"] == data_version
    # it loads without unpickling anything: no pickle in it, the weights read with weights_only
    version = max(versions, key=lambda v: int(v.version))
    local = mlflow.artifacts.download_artifacts(f"models:/darkroom_ad-ad/{version.version}")
    files = {str(p.relative_to(local)) for p in __import__("pathlib").Path(local).rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert {"MLmodel", "data/checkpoint/model.pt", "data/checkpoint/model.json"} <= files
    # it carries understudy's own code, and no requirement names a PyPI `understudy` (tests/test_wheel.py)
    assert "code/understudy/platform/imitator_model.py" in files
    requirements = open(os.path.join(local, "requirements.txt")).read().split()
    assert not [r for r in requirements if re.match(r"understudy\b", r)], requirements
    torch.load(os.path.join(local, "data", "checkpoint", "model.pt"), weights_only=True)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_model puts the model's code/ first on it
    loaded = mlflow.pyfunc.load_model(f"models:/darkroom_ad-ad/{version.version}").get_raw_model()
    trained, _ = imitation.load(trials[version.run_id][0]["checkpoint"])
    assert loaded.state_dict().keys() == trained.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], t) for k, t in trained.state_dict().items())


@pytest.mark.slow
def test_darkroom_slow_source_experiment_reports_time_to_the_optimum(ray_session, tmp_path, capsys):
    """The Laskin-like slow source through the whole pipeline: its histories are recorded whole,
    AD trains on every 2nd episode, and the report says in how many episodes AD and the source
    first reach 0.9 of each goal's optimum (the source at this tiny budget: never)."""
    from understudy.platform import cli

    ws = tmp_path / "ws"
    assert cli.main(["--workspace", str(ws), "experiment", "darkroom_ad_slow", "--scale", "tiny"]) == 0
    teach = json.loads((ws / "stages" / "teach-darkroom_ad_slow-teach.json").read_text())
    assert teach["hyperparameters"]["planning_sweeps"] == 0 and teach["hyperparameters"]["q_init"] == 0.0
    distill = json.loads((ws / "stages" / "distill-darkroom_ad_slow-imitator.json").read_text())
    assert all(len(h) == 20 for h in distill["history_returns"].values())  # recorded whole
    assert all(len(s) == 9 for s in distill["split_returns"].values())  # gap 2, one held out
    rows = {r["agent"]: r for r in json.loads(
        (ws / "stages" / "evaluate-darkroom_ad_slow-evaluate.json").read_text())["rows"]}
    assert {"reached_0.9", "source_reached_0.9"} <= set(rows["imitator"])
    assert rows["imitator"]["source_reached_0.9"] < 0.5 and rows["imitator"]["source_episodes_to_0.9"] is None

    # --resume does not run finished stages again (same config), the evaluation included
    before = {p.name: p.read_text() for p in (ws / "stages").glob("*-darkroom_ad_slow-*.json")}
    capsys.readouterr()
    assert cli.main(["--workspace", str(ws), "experiment", "darkroom_ad_slow", "--scale", "tiny", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier with this config") == 3  # teach, the imitator's distill, evaluate
    assert "not played again" in out
    assert {p.name: p.read_text() for p in (ws / "stages").glob("*-darkroom_ad_slow-*.json")} == before


@pytest.mark.slow
def test_minatar_experiment_end_to_end(ray_session, tmp_path):
    """The essay's experiment on MinAtar, through every stage at the tiny scale: a PPO teacher
    recorded on MinAtar Breakout, AD and ED distilled from its shards of whole 10x10x10
    observations, and every agent (the teacher included) playing Breakout and the held-out
    Space Invaders, scored against the family's references."""
    from understudy.platform import cli

    ws = tmp_path / "ws"
    name = "minatar_breakout_to_spaceinvaders"
    assert cli.main(["--workspace", str(ws), "experiment", name, "--scale", "tiny"]) == 0
    evaluation = json.loads((ws / "stages" / f"evaluate-{name}-evaluate.json").read_text())
    rows = {(r["agent"], r["game"]): r for r in evaluation["rows"]}
    agents = {"imitator", "ed", "teacher", "random", "noop", "scratch", "finetune"}
    # forgetting: the fine-tuned weights, frozen, replayed on Breakout
    assert {a for a, _ in rows} == agents | {"finetune on MinAtar/SpaceInvaders, then frozen"}
    for game in ("MinAtar/Breakout", "MinAtar/SpaceInvaders"):
        for agent in agents - ({"teacher"} if game == "MinAtar/SpaceInvaders" else set()):  # it plays what it learned
            row = rows[(agent, game)]
            assert row["held_out"] == (game == "MinAtar/SpaceInvaders"), (agent, game)
            if agent in ("imitator", "teacher"):
                assert row["episodes"] == 12, (agent, game)
            else:  # the imitator's env steps, in whole episodes (scratch: over the teacher's 8 envs)
                assert row["episodes"] >= 1, (agent, game)
                imitated = rows[("imitator", game)]["env_steps"]
                if agent != "scratch":  # every copy stops at its share, cut to the fewest episodes
                    assert 0.5 * imitated <= row["env_steps"] <= 1.5 * imitated, (
                        agent, game, row["env_steps"], imitated)
    # scratch learns for exactly the env steps the imitator played there
    assert (rows[("scratch", "MinAtar/SpaceInvaders")]["env_steps"]
            == rows[("imitator", "MinAtar/SpaceInvaders")]["env_steps"])
    # Space Invaders pays 1 per alien: random play scores on the family's scale, normalised
    # against (random, the authors' DQN), and the no-op cannon never fires
    assert rows[("random", "MinAtar/SpaceInvaders")]["return_mean"] > 0
    assert rows[("noop", "MinAtar/SpaceInvaders")]["return_mean"] == 0
    assert "late_normalized" in rows[("imitator", "MinAtar/SpaceInvaders")]
    raw = json.loads((ws / "results" / f"{name}.json").read_text())
    replayed = "finetune on MinAtar/SpaceInvaders, then frozen"  # the forgetting rows, exported
    assert {r["agent"] for r in raw} == agents | {replayed} and all(r["goal"] is None for r in raw)
    assert {r["game"] for r in raw if r["agent"] == replayed} == {"MinAtar/Breakout"}


def test_leave_one_out_rotations_hold_out_each_game_of_the_suite_once():
    from understudy.platform import experiment

    cfg = experiment.load("minatar_holdout", "demo")
    parts = experiment.rotations(cfg)
    games = ["MinAtar/Asterix", "MinAtar/Breakout", "MinAtar/Freeway", "MinAtar/Seaquest", "MinAtar/SpaceInvaders"]
    assert [p.evaluate.heldout_games for p in parts] == [[g] for g in games]
    for part, held in zip(parts, games):
        assert part.teach == cfg.teach  # one teacher stage for every rotation
        assert part.distill.train_games == [g for g in games if g != held]
        assert part.distill.name == f"minatar_holdout-no-{held.split('/')[1].lower()}-imitator"
        assert part.evaluate.imitator == part.distill.name and part.evaluate.ed == part.ed.name
        assert part.ed.train_games == part.distill.train_games and part.ed.data.expert_last == 100
    assert len({p.distill.name for p in parts} | {p.ed.name for p in parts} | {p.evaluate.name for p in parts}) == 15
    bad = {**yaml.safe_load(experiment.experiment_path("minatar_holdout").read_text()),
           "teach": {"algorithm": "ppo", "preset": "minatar", "games": ["MinAtar/Breakout", "MinAtar/Freeway"],
                     "env_steps": 4096}}
    with pytest.raises(ConfigError, match="leave_one_out.*missing"):
        parse_config({k: v for k, v in bad.items() if k != "scales"}, "test", expect=("experiment",))


@pytest.mark.slow
def test_minatar_holdout_end_to_end_and_resume(ray_session, tmp_path, capsys, monkeypatch):
    """All five rotations at the tiny scale: one teacher stage over the five MinAtar games, an
    imitator per rotation that never saw its held-out game (the tiny scale leaves ED out; the
    rotations' ED stages are checked without running them), each played on that game;
    the answer over rotations is an IQM over the five held-out games. `--resume` afterwards
    runs nothing again."""
    from understudy.platform import cli

    ws = tmp_path / "ws"
    name = "minatar_holdout"
    assert cli.main(["--workspace", str(ws), "experiment", name, "--scale", "tiny"]) == 0
    stages = ws / "stages"
    teach = json.loads((stages / f"teach-{name}-teach.json").read_text())
    games = ["MinAtar/Asterix", "MinAtar/Breakout", "MinAtar/Freeway", "MinAtar/Seaquest", "MinAtar/SpaceInvaders"]
    assert sorted({r["game"] for r in teach["runs"]}) == games
    for held in games:
        tag = f"{name}-no-{held.split('/')[1].lower()}"
        distill = json.loads((stages / f"distill-{tag}-imitator.json").read_text())
        assert sorted(distill["data_games"]) == [g for g in games if g != held], tag
        evaluation = json.loads((stages / f"evaluate-{tag}-evaluate.json").read_text())
        assert {r["game"] for r in evaluation["rows"]} == {held}
        assert all(r["held_out"] for r in evaluation["rows"])
        # the teacher that plays is the held-out game's own (what its whole budget reached)
        assert {r["agent"] for r in evaluation["rows"]} == {"imitator", "teacher", "random"}
    raw = json.loads((ws / "results" / f"{name}.json").read_text())
    assert {r["game"] for r in raw} == set(games) and {r["experiment"] for r in raw} == {name}
    table = (ws / "results" / f"{name}-table.md").read_text()
    # one IQM row per agent over the five held-out games (tasks), each with its runs
    assert re.search(r"\| imitator \| held-out games \(5; 5\) \| 1 \|", table), table
    check_episode_lengths_plan(ws, name, games, tmp_path / "bench", monkeypatch)
    from understudy.platform.workspace import Workspace

    summary = json.loads((stages / f"experiment-{name}.json").read_text())["summary_run_id"]
    client = MlflowClient(Workspace.resolve(str(ws)).tracking_uri)  # one figure over the five held-out games
    assert {"returns_per_episode.png", "results.md"} <= {a.path for a in client.list_artifacts(summary)}
    capsys.readouterr()
    assert cli.main(["--workspace", str(ws), "experiment", name, "--scale", "tiny", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("not run again") == 6 and out.count("not played again") == 5, out


def check_episode_lengths_plan(ws, name, games, bench, monkeypatch):
    """bench/stage_speeds.py reads each rotation's episode lengths back (the imitator's and the
    teacher's env steps over their episodes), keyed so that `understudy plan` of the same
    experiment and scale finds them: then no evaluation of its plan is an upper bound."""
    import shutil

    from understudy.platform import experiment, plan

    lengths = {e["stage"]: e for e in _stage_speeds().episode_steps(str(ws))}
    assert set(lengths) == {f"{name}-no-{g.split('/')[1].lower()}-evaluate" for g in games}
    for stage, entry in lengths.items():
        rows = json.loads((ws / "stages" / f"evaluate-{stage}.json").read_text())["rows"]
        for row in rows:
            if row["agent"] in ("imitator", "teacher"):
                assert entry["mean_episode_steps"][row["agent"]][row["game"]] == pytest.approx(
                    row["env_steps"] / (row["episodes"] * row["copies"]))
    shutil.copytree(plan.BENCH, bench)
    (bench / "stage_speeds.json").write_text(json.dumps({"episode_steps": list(lengths.values())}))
    monkeypatch.setattr(plan, "BENCH", bench)
    evaluations = [c for c in plan.plan(experiment.load(name, "tiny")) if c.stage == "evaluate"]
    assert len(evaluations) == 5 and not any(c.bounded for c in evaluations)


@pytest.mark.slow
def test_minatar_teacher_cutoff_end_to_end(ray_session, tmp_path):
    """The cutoff experiment at the tiny scale: AD trained only on the episodes that ended in
    the teacher's first 2,048 env steps, judged against the best of that data (episode and
    k-episode stretch) and against the teacher's whole history."""
    from understudy.platform import cli

    ws = tmp_path / "ws"
    name = "minatar_teacher_cutoff"
    assert cli.main(["--workspace", str(ws), "experiment", name, "--scale", "tiny"]) == 0
    distill = json.loads((ws / "stages" / f"distill-{name}-imitator.json").read_text())
    (run_id, history), = distill["history_returns"].items()
    split = distill["split_returns"][run_id]
    assert 0 < len(split) < len(history)  # the data stops at the cutoff; the history goes on
    evaluation = json.loads((ws / "stages" / f"evaluate-{name}-evaluate.json").read_text())
    row = next(r for r in evaluation["rows"] if r["agent"] == "imitator")
    assert row["data_best"] == pytest.approx(max(split))
    for key in ("late_minus_data", "data_best_late", "late_minus_data_late", "history_best_late",
                "late_minus_history_late"):
        assert isinstance(row[key], float), key
    assert row["data_best_late"] <= row["data_best"] and row["history_best"] >= row["data_best"]
    assert {r["agent"] for r in evaluation["rows"]} == {"imitator", "teacher", "random", "noop", "scratch"}


def test_a_distill_stage_its_data_refuses_stops_the_experiment_before_any_training(tmp_path, capsys):
    """ED's context (30 steps) is too short for two Dark Room episodes (20 steps each): the
    experiment stops right after teach, naming the ED stage, before AD (which comes first and
    is fine) has trained at all."""
    from conftest import REPO_ROOT

    from understudy.platform import cli

    experiment = yaml.safe_load(open(os.path.join(REPO_ROOT, "tune_configs/experiments/darkroom_ad.yaml")))
    experiment["scales"]["tiny"]["ed"]["model"] = {"context": 30}
    config = tmp_path / "darkroom_ad.yaml"
    config.write_text(yaml.safe_dump(experiment))
    ws = tmp_path / "ws"
    assert cli.main(["--workspace", str(ws), "experiment", str(config), "--scale", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "distill stage 'darkroom_ad-ed', checked before any distill stage trains" in err, err
    assert "model.context 30 steps holds 1.5 episodes" in err and "allow_short_context" in err, err
    assert (ws / "stages" / "teach-darkroom_ad-teach.json").exists()
    assert not list((ws / "stages").glob("distill-*")) and not list(ws.glob("ray_results/distill-*"))
