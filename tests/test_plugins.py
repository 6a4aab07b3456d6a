"""A user's own imitator from a package outside understudy (tests/plugin_pkg, installed for real
with pip into a folder of its own): named in YAML by `module:attribute` or by its entry point,
it is validated against its own constructor, planned, distilled, registered in MLflow and
evaluated like a built-in one, with nothing in platform/, algorithms/ or envs/ changed for it."""
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
                "allow_unlearned": True},
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

        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(yaml.safe_dump(PIPELINE))
        proc = understudy(site, ray_tmp, "--workspace", ws, "plan", str(pipeline))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "plugin-mlp" in proc.stdout

        proc = understudy(site, ray_tmp, "--workspace", ws, "pipeline", str(pipeline))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        stages = Path(ws) / "stages"
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
