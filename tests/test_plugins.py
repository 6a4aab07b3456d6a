"""A user's own imitator and env family from a package outside understudy (tests/plugin_pkg,
installed for real with pip into a folder of its own). The imitator, named in YAML by
`module:attribute` or by its entry point, is validated against its own constructor, planned,
distilled, registered in MLflow and evaluated like a built-in one; the env family (a Gymnasium
game, found by its entry point) is taught by an RLlib teacher, distilled and evaluated. Nothing
in platform/, algorithms/ or envs/ is changed for either."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
BY_PLACE = "understudy_plugin_example.imitator:MLP_BC"
BY_ENTRY_POINT = "mlp_bc"

PIPELINE = {
    "kind": "pipeline", "name": "plugin",
    "teach": {"name": "plugin-teach", "algorithm": "qlearning", "games": ["DarkRoom"], "env_steps": 200},
    "distill": {"name": "plugin-mlp", "game": "DarkRoom", "algorithm": BY_PLACE, "model": {"hidden": 16, "depth": 2},
                "epochs": 1, "batch_size": 16, "max_batches_per_epoch": 2, "verify_shards": False,
                "allow_unlearned": True, "allow_flat_windows": True},
    "evaluate": {"name": "plugin-eval", "games": ["DarkRoom"], "agents": ["imitator", "random"], "episodes": 2},
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The plug-in installed by pip (from a copy: a build writes beside its sources) into a
    folder that only the subprocesses below have on their path."""
    tmp = tmp_path_factory.mktemp("plugin")
    shutil.copytree(HERE / "plugin_pkg", tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(tmp / "site"), str(tmp / "src")],
                   check=True, timeout=600, capture_output=True)
    assert list((tmp / "site").glob("understudy_plugin_example-*.dist-info/entry_points.txt"))
    return tmp / "site"


def understudy(site: Path, ray_tmp: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "UNDERSTUDY_NUM_CPUS": "2", "RAY_TMPDIR": ray_tmp}
    return subprocess.run([sys.executable, "-m", "understudy.platform.cli", *args], env=env, capture_output=True,
                          text=True, timeout=900)


def plan_and_run(site: Path, ray_tmp: str, ws: str, tmp_path: Path, pipeline: dict) -> tuple[str, Path]:
    """`understudy plan` and then `understudy pipeline` on a pipeline config: (the plan, the
    folder of the stages' manifests)."""
    path = tmp_path / f"{pipeline['name']}.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    plan = understudy(site, ray_tmp, "--workspace", ws, "plan", str(path))
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
    proc = understudy(site, ray_tmp, "--workspace", ws, "pipeline", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return plan.stdout, Path(ws) / "stages"


def test_a_plugin_imitator_is_planned_distilled_and_evaluated_like_a_builtin(site, tmp_path):
    assert importlib.util.find_spec("understudy_plugin_example") is None  # only the install reaches it
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's sockets need a short path
    ws = str(tmp_path / "ws")
    try:
        # its `model:` keys are its constructor's: anything else is refused by name
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**PIPELINE["distill"], "kind": "distill", "teacher": "plugin-teach",
                                       "model": {"layers": 2}}))
        proc = understudy(site, ray_tmp, "--workspace", ws, "distill", str(bad))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"model.layers: unknown key for algorithm '{BY_PLACE}'; valid keys here: cnn, stack, hidden, depth" \
            in proc.stderr

        plan, stages = plan_and_run(site, ray_tmp, ws, tmp_path, PIPELINE)
        assert "plugin-mlp" in plan
        distill = json.loads((stages / "distill-plugin-mlp.json").read_text())
        assert distill["algorithm"] == BY_PLACE
        # the family's encoder filled in (Dark Room: grid), the rest the constructor's defaults
        assert distill["config"]["model"] == {"cnn": "grid", "stack": None, "hidden": 16, "depth": 2}
        meta = json.loads((Path(distill["checkpoint"]) / "model.json").read_text())
        recorded = ("algorithm", "num_actions", "cnn", "stack", "hidden", "depth")  # spec: its constructor's
        assert [meta[k] for k in recorded] == [BY_PLACE, 5, "grid", 1, 16, 2]
        evaluate = json.loads((stages / "evaluate-plugin-eval.json").read_text())
        played = {r["agent"] for r in evaluate["episodes"]}
        assert {"imitator", "random"} <= played
        imitator = [r for r in evaluate["episodes"] if r["agent"] == "imitator"]
        assert imitator and all(len(r["episode_returns"]) == 2 for r in imitator)
        client = MlflowClient(f"sqlite:///{ws}/mlflow.db")
        versions = client.search_model_versions("name = 'plugin-understudy_plugin_example.imitator.MLP_BC'")
        assert [v.run_id for v in versions] == [distill["mlflow_run_id"]]

        # the same imitator by the entry point its package declares
        by_name = tmp_path / "distill.yaml"
        by_name.write_text(yaml.safe_dump({**PIPELINE["distill"], "kind": "distill", "name": "plugin-ep",
                                           "teacher": "plugin-teach", "algorithm": BY_ENTRY_POINT}))
        proc = understudy(site, ray_tmp, "--workspace", ws, "distill", str(by_name))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        meta = json.loads((Path(json.loads((stages / "distill-plugin-ep.json").read_text())["checkpoint"])
                           / "model.json").read_text())
        assert meta["algorithm"] == BY_ENTRY_POINT and meta["hidden"] == 16
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


CATCH_PIPELINE = {
    "kind": "pipeline", "name": "catch",
    "teach": {"name": "catch-teach", "algorithm": "ppo", "games": ["Catch"], "env_steps": 1024, "cnn": "minatar",
              "num_envs_per_runner": 4, "env_steps_per_iter": 512},
    "distill": {"name": "catch-mlp", "game": "Catch", "algorithm": BY_ENTRY_POINT, "model": {"hidden": 16},
                "epochs": 1, "batch_size": 16, "max_batches_per_epoch": 2, "verify_shards": False,
                "allow_unlearned": True, "allow_flat_windows": True},
    "evaluate": {"name": "catch-eval", "games": ["Catch"], "agents": ["imitator", "teacher", "random"],
                 "episodes": 2},
}


def test_a_plugin_env_family_is_taught_distilled_and_evaluated(site, tmp_path):
    """The package's Gymnasium game, found by its entry point in the driver, the Tune trials and
    the evaluation tasks: an RLlib PPO teacher records its history through the fast env runner,
    the package's own imitator learns from it (the family's encoder filled in), and the
    imitator, the teacher and random play are evaluated against the family's references."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ws = str(tmp_path / "ws")
    try:
        plan, stages = plan_and_run(site, ray_tmp, ws, tmp_path, CATCH_PIPELINE)
        assert "ppo on catch: not measured" in plan
        teach = json.loads((stages / "teach-catch-teach.json").read_text())
        run = teach["runs"][0]
        assert run["game"] == "Catch" and run["recorded_episodes"] >= 100  # 1,024 steps of 9-step episodes
        assert run["verdict"]["random_score"] == -0.8 and run["verdict"]["reference_score"] == 1.0
        distill = json.loads((stages / "distill-catch-mlp.json").read_text())
        assert distill["config"]["model"]["cnn"] == "minatar"
        evaluate = json.loads((stages / "evaluate-catch-eval.json").read_text())
        played = {r["agent"]: r for r in evaluate["episodes"]}
        assert set(played) == {"imitator", "teacher", "random"}
        # every Catch episode ends with a catch (+1) or a miss (-1)
        assert all(set(r["episode_returns"]) <= {-1.0, 1.0} and len(r["episode_returns"]) == 2
                   for r in evaluate["episodes"])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
