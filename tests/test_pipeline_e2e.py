"""The whole pipeline at the smallest budget, on real ALE + RLlib + Tune + MLflow, then every
output checked independently of the code that wrote it."""
import glob
import json
import os

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO_ROOT
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(ray_session, tmp_path_factory):
    from understudy.platform import cli

    ws = tmp_path_factory.mktemp("ws")
    config = os.path.join(REPO_ROOT, "tune_configs", "pipelines", "smoke.yaml")
    assert cli.main(["--workspace", str(ws), "pipeline", config]) == 0
    return ws


def stage(ws, kind, name):
    return json.loads((ws / "stages" / f"{kind}-{name}.json").read_text())


def read_run_with_plain_pyarrow(run_dir):
    """Shards of a run found through its catalog, read without any understudy code."""
    tables = []
    for entry_path in sorted(glob.glob(os.path.join(run_dir, "catalog", "*.json"))):
        entry = json.load(open(entry_path))
        with pa.memory_map(os.path.join(run_dir, entry["path"])) as source:
            tables.append(pa.ipc.open_file(source).read_all())
    return pa.concat_tables(tables)


def test_shards_hold_whole_ordered_histories(pipeline):
    teach = stage(pipeline, "teach", "smoke-teachers")
    assert sorted(r["game"] for r in teach["runs"]) == ["Breakout", "Pong"]
    for run in teach["runs"]:
        table = read_run_with_plain_pyarrow(os.path.join(teach["shard_root"], run["run_id"]))
        expected = {"run_id", "game", "algorithm", "seed", "env_runner", "episode_index", "step",
                    "global_step", "policy_version", "frame", "action", "reward", "terminated",
                    "truncated", "lives", "epsilon", "policy_outputs"}
        assert expected <= set(table.column_names)
        assert set(table["game"].to_pylist()) == {run["game"]}
        assert set(table["run_id"].to_pylist()) == {run["run_id"]}
        assert {len(f) for f in table["frame"].to_pylist()[:50]} == {84 * 84}
        assert all(0 <= a < 18 for a in table["action"].to_pylist())  # full action space
        rows = table.sort_by([("env_runner", "ascending"), ("global_step", "ascending")])
        versions = np.asarray(rows["policy_version"])
        assert (np.diff(versions) >= 0).all(), "policy versions decrease within a run"
        assert versions[-1] >= 1, "the history should span more than one learner update"
        # Each episode: steps 0..T-1, exactly one terminal flag, on its last row.
        for ep in np.unique(np.asarray(table["episode_index"])):
            mask = np.asarray(table["episode_index"]) == ep
            steps = np.asarray(table["step"])[mask]
            assert (np.sort(steps) == np.arange(len(steps))).all()
            done = np.asarray(table["terminated"])[mask] | np.asarray(table["truncated"])[mask]
            assert done.sum() == 1 and done[np.argmax(steps)]


def test_teach_records_each_teachers_greedy_curve_and_verdict(pipeline):
    """The learning gate's inputs: the greedy evaluations (return against env steps) and a
    verdict on the last of them, in the manifest and next to the shards."""
    from understudy.histories import shards

    teach = stage(pipeline, "teach", "smoke-teachers")
    for run in teach["runs"]:
        steps = [s for s, _ in run["greedy_curve"]]
        assert steps and steps == sorted(steps)
        verdict = run["verdict"]
        assert verdict["basis"] == "greedy evaluation" and verdict["final_return"] == run["greedy_curve"][-1][1]
        # smoke episodes are cut short, so the whole-game references cannot judge them
        assert verdict["learned"] is None and "episodes cut at" in verdict["why"]
        assert shards.read_run_verdict(teach["shard_root"], run["run_id"]) == verdict
    assert teach["hyperparameters"]["settings"]["clip_param"] == 0.1 and teach["hyperparameters"]["reward"] == "sign"


def test_episode_rewards_sum_to_the_returns_mlflow_recorded(pipeline):
    teach = stage(pipeline, "teach", "smoke-teachers")
    client = MlflowClient(f"sqlite:///{pipeline / 'mlflow.db'}")
    for run in teach["runs"]:
        table = read_run_with_plain_pyarrow(os.path.join(teach["shard_root"], run["run_id"]))
        episodes = np.asarray(table["episode_index"])
        rewards = np.asarray(table["reward"])
        sums = [rewards[episodes == e].sum() for e in np.unique(episodes)]
        history = client.get_metric_history(run["mlflow_run_id"], "episode_return")
        logged = [m.value for m in sorted(history, key=lambda m: m.step)]
        assert len(logged) == len(sums) >= 1
        np.testing.assert_allclose(sums, logged)


def test_mlflow_has_the_pipeline_as_a_study_with_metrics_and_plots(pipeline):
    """The pipeline is one MLflow experiment (its study), the invocation one parent run, each
    stage a run under it, and its trials or agents runs under that."""
    client = MlflowClient(f"sqlite:///{pipeline / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.note.content"].startswith("Pipeline smoke: teach smoke-teachers")
    every = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    stages = {r.data.tags["understudy.stage"]: r for r in every if "understudy.stage" in r.data.tags}
    assert sorted(stages) == ["distill", "evaluate", "teach"]
    assert {r.data.tags["mlflow.parentRunId"] for r in stages.values()} == {parent.info.run_id}
    for name, metric, plot in [("teach", "episode_return_mean", "learning_curve.png"),
                               ("distill", "train_loss", "training_curves.png"),
                               ("evaluate", "return_mean", "returns_per_episode.png")]:
        runs = [r for r in every if r.data.tags.get("mlflow.parentRunId") == stages[name].info.run_id]
        assert runs, name
        assert all(metric in r.data.metrics for r in runs), (name, metric)
        if name == "teach":  # the greedy evaluation curve, from separate env runners
            assert all("greedy_return_mean" in r.data.metrics for r in runs)
            assert all(r.data.params["atari.sticky_action_prob"] == "0.25" for r in runs)
            assert all(len(r.data.params["env.rom_sha256"]) == 64 for r in runs)
            # throughput reaches MLflow as a number; the teacher's complete settings as params
            assert all(r.data.metrics.get("env_steps_per_s", 0) > 0 for r in runs)
            assert all(r.data.params["reward"] == "sign" and "ppo.clip_param" in r.data.params for r in runs)
        runs.append(stages[name])  # the evaluation's plot is on its stage run, the summary
        artifacts = {a.path for r in runs for a in client.list_artifacts(r.info.run_id)}
        assert plot in artifacts, (name, artifacts)
        assert all(r.data.tags.get("understudy.code_version") for r in runs)
    evaluate = stage(pipeline, "evaluate", "smoke-eval")
    assert {(r["agent"], r["game"]) for r in evaluate["rows"]} == {
        (a, g) for a in ("imitator", "teacher", "random") for g in ("Breakout", "Pong")}
    for row in evaluate["rows"]:
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.metrics["return_mean"] == pytest.approx(row["return_mean"])
        assert len(client.get_metric_history(row["mlflow_run_id"], "episode_return")) == row["episodes"]


def test_imitator_checkpoint_loads_without_code_execution(pipeline):
    import torch

    from understudy.algorithms import imitation

    distill = stage(pipeline, "distill", "smoke-bc")
    state = torch.load(os.path.join(distill["checkpoint"], "model.pt"), weights_only=True)
    assert state
    model, meta = imitation.load(distill["checkpoint"], expect="bc")
    assert meta["games"] == ["Breakout"] and meta["num_actions"] == 18
    assert meta["data_version"] == distill["data_version"]
    assert model(torch.zeros(2, 84, 84, 4, dtype=torch.uint8)).shape == (2, 18)


def test_shards_cli_verifies_the_recorded_runs(pipeline):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "understudy.platform.cli", "--workspace",
                           str(pipeline), "shards", "verify"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok") == 2
