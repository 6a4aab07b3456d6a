"""Shards, checkpoints and MLflow artifacts on S3-compatible object storage (a real moto server
on loopback), and MLflow as a real `mlflow server` with a database store and its artifact root
on that storage. Credentials and the endpoint come only from AWS_* environment variables."""
import os

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from services import mlflow_server, query
from test_shards import STATIC, play_random

from understudy.histories import shards
from understudy.platform import storage, tracking
from understudy.platform.workspace import Workspace


def test_shards_round_trip_through_s3(s3_env):
    bucket = s3_env.new_bucket()
    root = f"s3://{bucket}/histories"
    played = play_random(episodes=2, max_steps=40)
    shards.write_run_metadata(root, "run-s3", dict(STATIC))
    writer = shards.ShardWriter(root, "run-s3", STATIC, env_runner=0, max_rows=10**9)
    writer.add(played[0][0])
    writer.flush()
    writer.add(played[1][0])
    writer.flush()

    # What the bucket holds, seen with boto3 (not pyarrow): shards, catalog, no temporary files.
    keys = s3_env.keys(bucket)
    assert "histories/run-s3/run.json" in keys
    assert sorted(k for k in keys if k.endswith(".arrow")) == [
        "histories/run-s3/shards/r000-000000.arrow", "histories/run-s3/shards/r000-000001.arrow"]
    assert not [k for k in keys if "/.tmp-" in k]

    assert shards.list_runs(root) == ["run-s3"]
    assert shards.verify_run(root, "run-s3") == []
    table = shards.open_run(root, "run-s3").to_table()
    assert table.num_rows == sum(ep.steps for ep, _ in played)
    np.testing.assert_array_equal(table["action"].to_numpy(),
                                  np.concatenate([ep.columns["action"] for ep, _ in played]))

    # A shard corrupted in the bucket is caught by its checksum.
    s3_env.client().put_object(Bucket=bucket, Key="histories/run-s3/shards/r000-000001.arrow",
                               Body=b"not an arrow file")
    problems = shards.verify_run(root, "run-s3")
    assert len(problems) == 1 and "r000-000001" in problems[0]


def test_checkpoint_on_s3_is_named_by_uri_and_loaded_from_a_local_copy(s3_env, tmp_path):
    import pyarrow.fs as pafs
    import torch
    from ray import tune

    from understudy.algorithms import bc, imitation

    bucket = s3_env.new_bucket()
    model = bc.ConvPolicy(num_actions=6)
    imitation.save(model, str(tmp_path / "ckpt"), {"game": "Breakout"})
    fs, path = shards.filesystem(f"s3://{bucket}/runs/ray_results/trial/checkpoint_000000")
    pafs.copy_files(str(tmp_path / "ckpt"), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)

    checkpoint = tune.Checkpoint(path, filesystem=fs)  # what Tune returns with s3 storage
    uri = storage.checkpoint_uri(checkpoint)
    assert uri == f"s3://{bucket}/runs/ray_results/trial/checkpoint_000000"
    with storage.local_copy(uri) as local:
        assert not local.startswith("s3://") and os.path.isdir(local)
        loaded, meta = imitation.load(local, expect="bc")
    assert not os.path.exists(local), "the local copy is removed afterwards"
    assert meta["num_actions"] == 6
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)

    local_dir = str(tmp_path / "ckpt")
    assert storage.checkpoint_uri(tune.Checkpoint(local_dir)) == local_dir
    with storage.local_copy(local_dir) as same:
        assert same == local_dir
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with storage.local_copy(f"s3://{bucket}/runs/nothing-here"):
            pass


def test_one_storage_setting_puts_everything_remote(s3_env, tmp_path):
    """--storage s3://...: shards, Tune results and (with a local MLflow store) MLflow artifacts
    all go to the bucket; only the workspace's manifests and SQLite file stay local."""
    bucket = s3_env.new_bucket()
    ws = Workspace.resolve(str(tmp_path), storage=f"s3://{bucket}/exp/")
    assert ws.shard_root == f"s3://{bucket}/exp/shards"
    assert ws.ray_results == f"s3://{bucket}/exp/ray_results"
    assert ws.artifact_root == f"s3://{bucket}/exp/mlartifacts"
    assert ws.remote_locations() == {f"s3://{bucket}/exp": "--storage / UNDERSTUDY_STORAGE",
                                     f"s3://{bucket}/exp/shards": "--shard-root / UNDERSTUDY_SHARD_ROOT"}

    client = tracking.client_for(ws)
    exp = tracking.experiment_id(client, ws, "understudy-evaluate")
    assert client.get_experiment(exp).artifact_location == \
        f"s3://{bucket}/exp/mlartifacts/understudy-evaluate"
    run = tracking.start_run(client, exp, "s3-artifacts", {"a": 1})
    tracking.log_text(client, run, "| agent | return |", "results.md")
    key = f"exp/mlartifacts/understudy-evaluate/{run}/artifacts/results.md"
    assert key in s3_env.keys(bucket)
    assert s3_env.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"| agent | return |"


def test_mlflow_server_with_database_store_and_artifacts_on_s3(s3_server, postgres, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from understudy.platform import preflight

    bucket = s3_server.new_bucket()
    server_env = {**os.environ, **s3_server.env}
    with mlflow_server(str(tmp_path), f"s3://{bucket}/mlflow", server_env,
                       postgres.database_for(str(tmp_path))) as server:
        # The client holds no object-storage credentials: the server proxies artifacts.
        for key in s3_server.env:
            monkeypatch.delenv(key, raising=False)
        preflight.check_tracking_uri(server.uri)
        ws = Workspace.resolve(str(tmp_path / "ws"), tracking_uri=server.uri)
        assert ws.artifact_root is None  # the server decides where artifacts go
        client = tracking.client_for(ws)
        exp = tracking.experiment_id(client, ws, "understudy-teach")
        assert client.get_experiment(exp).artifact_location.startswith("mlflow-artifacts:")
        run = tracking.start_run(client, exp, "through-the-server", {"game": "Pong"})
        tracking.log_metric_series(client, run, "episode_return", [1.0, -2.0, 3.5])
        fig = plt.figure()
        plt.plot([1, 2, 3])
        tracking.log_figure(client, run, fig, "learning_curve.png")
        client.set_terminated(run, "FINISHED")

        assert [a.path for a in MlflowClient(server.uri).list_artifacts(run)] == ["learning_curve.png"]
        history = client.get_metric_history(run, "episode_return")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == [1.0, -2.0, 3.5]

    keys = s3_server.keys(bucket, "mlflow/")
    assert any(k.endswith(f"/{run}/artifacts/learning_curve.png") for k in keys), keys
    # the run is a row in the server's PostgreSQL database
    assert query(server.backend_store_uri, "select name, status from runs where run_uuid = %s", (run,)) == \
        [("through-the-server", "FINISHED")]
    assert not (tmp_path / "ws" / "mlartifacts").exists()
