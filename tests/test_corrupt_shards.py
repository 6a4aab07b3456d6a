"""A corrupted shard in a teacher's history: training refuses it, or skips it only when told."""
import json

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_shards import STATIC, play_random

from understudy.histories import shards
from understudy.platform.workspace import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture
def workspace_with_corrupt_shard(tmp_path):
    ws = Workspace.resolve(str(tmp_path / "ws")).ensure()
    root = ws.shard_root
    writer = shards.ShardWriter(root, "run-x", STATIC, env_runner=0, max_rows=10**9)
    shards.write_run_metadata(root, "run-x", {**STATIC, "protocol": {"full_action_space": True}})
    for i, (episode, _) in enumerate(play_random(episodes=3, max_steps=40)):
        writer.add(episode)
        writer.flush()  # one shard per episode
    ws.write_stage("teach", "t", {"kind": "teach", "name": "t", "shard_root": root,
                                  "protocol": {"full_action_space": True},
                                  "runs": [{"run_id": "run-x", "game": "Breakout"}]})
    bad = f"{root}/run-x/shards/r000-000001.arrow"
    with open(bad, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    return ws, bad


def distill_config(tmp_path, **extra):
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump({"kind": "distill", "name": "d", "teacher": "t", "game": "Breakout",
                                    "epochs": 1, "data": {"heldout_episodes": 0},
                                    "allow_unlearned": True, "allow_flat_windows": True, **extra}))
    return str(path)


def test_training_refuses_a_corrupted_shard(ray_session, tmp_path, workspace_with_corrupt_shard, capsys):
    from understudy.platform import cli

    ws, bad = workspace_with_corrupt_shard
    code = cli.main(["--workspace", str(ws.root), "distill", distill_config(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert bad in err and "sha256" in err and "skip_corrupt_shards" in err
    assert not ws.stage_path("distill", "d").exists()


def test_training_skips_a_corrupted_shard_only_when_told_and_logs_it(
        ray_session, tmp_path, workspace_with_corrupt_shard, capsys):
    from understudy.platform import cli

    ws, bad = workspace_with_corrupt_shard
    code = cli.main(["--workspace", str(ws.root), "distill",
                     distill_config(tmp_path, skip_corrupt_shards=True)])
    assert code == 0
    assert f"skipping corrupted shard {bad}" in capsys.readouterr().out
    manifest = json.loads(ws.stage_path("distill", "d").read_text())
    run = MlflowClient(ws.tracking_uri).get_run(manifest["mlflow_run_id"])
    assert run.data.params["skipped_shards"] == bad
    # The data version names exactly what was read: the two intact shards.
    assert manifest["data_version"] == shards.data_version(ws.shard_root, ["run-x"], exclude={bad})
    assert manifest["data_version"] != shards.data_version(ws.shard_root, ["run-x"])
