"""The platform off the laptop, for real: a Ray cluster of two `ray start` nodes on loopback, the
smoke pipeline submitted with `ray job submit`, shards and checkpoints on an S3-protocol server
(moto), MLflow as an `mlflow server` process whose artifacts live on that object storage.
Outputs are then checked without understudy's own readers."""
import hashlib
import io
import json
import os
import time

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO_ROOT
from mlflow.tracking import MlflowClient
from services import BIN, mlflow_server, query, ray_cluster

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 540


@pytest.fixture(scope="module")
def cluster_run(s3_server, postgres, tmp_path_factory):
    """Start everything, submit the smoke pipeline, wait for it; services stop even if it fails."""
    tmp = tmp_path_factory.mktemp("cluster")
    bucket = s3_server.new_bucket()
    # Credentials go into the nodes' and the MLflow server's environment (as a Kubernetes Secret
    # would); the submitting shell and the job's runtime env never see them.
    node_env = dict(os.environ, **s3_server.env, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1",
                    PATH=f"{BIN}:{os.environ['PATH']}")
    submit_env = {k: v for k, v in node_env.items() if not k.startswith("AWS_")}
    storage = f"s3://{bucket}/runs"
    workspace = tmp / "ws"
    submission_id = f"understudy-smoke-{int(time.time())}"
    with mlflow_server(str(tmp), f"s3://{bucket}/mlflow", node_env, postgres.database_for(str(tmp)),
                       wait=False) as mlflow, \
            ray_cluster(node_env, head_cpus=1, worker_cpus=2,
                        worker_resources={"understudy_worker": 1}) as cluster:
        mlflow.wait_ready()  # started beside the Ray nodes, to save a few seconds
        nodes = cluster.nodes()
        started = time.perf_counter()
        # The README's command, with this cluster's addresses.
        submit = cluster.ray(
            "job", "submit", "--address", cluster.dashboard_url, "--submission-id", submission_id,
            "--working-dir", ".", "--runtime-env", "runtime_env.yaml", "--",
            "understudy", "--workspace", str(workspace), "--storage", storage,
            "--tracking-uri", mlflow.uri, "pipeline", "tune_configs/pipelines/smoke.yaml",
            cwd=REPO_ROOT, env=submit_env, timeout=JOB_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        from ray.job_submission import JobSubmissionClient

        jobs = JobSubmissionClient(cluster.dashboard_url)
        status = str(jobs.get_job_status(submission_id))
        job_id = jobs.get_job_info(submission_id).job_id
        work = _work_of_job(cluster.dashboard_url, job_id)
        yield {"submit": submit, "status": status, "elapsed": elapsed, "nodes": nodes,
               "work": work, "workspace": workspace, "bucket": bucket, "storage": storage,
               "mlflow": mlflow, "s3": s3_server}


def _work_of_job(dashboard_url: str, job_id: str) -> list[dict]:
    """Tasks and actors of the job, with the node each ran on (Ray's state API)."""
    from ray.util.state import list_actors, list_tasks

    filters = [("job_id", "=", job_id)]
    tasks = list_tasks(address=dashboard_url, filters=filters, detail=True, limit=10_000,
                       raise_on_missing_output=False)
    actors = list_actors(address=dashboard_url, filters=filters, detail=True, limit=10_000,
                         raise_on_missing_output=False)
    return ([{"name": t.name, "node_id": t.node_id} for t in tasks]
            + [{"name": a.class_name, "node_id": a.node_id} for a in actors])


def stage(run, kind, name):
    return json.loads((run["workspace"] / "stages" / f"{kind}-{name}.json").read_text())


def test_job_submitted_with_ray_cli_succeeds_on_two_nodes(cluster_run):
    submit = cluster_run["submit"]
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    assert cluster_run["status"] == "SUCCEEDED"
    assert "Pipeline 'smoke' finished" in submit.stdout
    print(f"\nray job submit: pipeline took {cluster_run['elapsed']:.0f}s on the 2-node cluster")
    nodes = cluster_run["nodes"]
    assert len(nodes) == 2 and {n["is_head_node"] for n in nodes} == {True, False}
    worker = next(n for n in nodes if not n["is_head_node"])
    assert worker["resources_total"].get("understudy_worker") == 1
    # The work spread over both nodes: the worker node ran trials, the head ran some tasks.
    used = {w["node_id"] for w in cluster_run["work"] if w["node_id"]}
    assert {n["node_id"] for n in nodes} <= used, cluster_run["work"]


def test_shards_on_object_storage_are_whole_and_match_their_catalog(cluster_run):
    s3, bucket = cluster_run["s3"], cluster_run["bucket"]
    teach = stage(cluster_run, "teach", "smoke-teachers")
    assert teach["shard_root"] == f"{cluster_run['storage']}/shards"
    assert sorted(r["game"] for r in teach["runs"]) == ["Breakout", "Pong"]
    client = MlflowClient(cluster_run["mlflow"].uri)
    for run in teach["runs"]:
        prefix = f"runs/shards/{run['run_id']}"
        keys = s3.keys(bucket, prefix)
        assert f"{prefix}/run.json" in keys
        catalog = sorted(k for k in keys if "/catalog/" in k and k.endswith(".json"))
        assert catalog, keys
        tables = []
        for key in catalog:
            entry = json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
            data = s3.client().get_object(Bucket=bucket, Key=f"{prefix}/{entry['path']}")["Body"].read()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            table = pa.ipc.open_file(io.BytesIO(data)).read_all()
            assert table.num_rows == entry["rows"]
            tables.append(table)
        table = pa.concat_tables(tables)
        assert set(table["game"].to_pylist()) == {run["game"]}
        assert sum(t.num_rows for t in tables) == run["recorded_steps"]
        # Per-episode reward sums equal what the MLflow server recorded for the teacher.
        episodes, rewards = np.asarray(table["episode_index"]), np.asarray(table["reward"])
        runner = np.asarray(table["env_runner"])
        sums = [rewards[(runner == r) & (episodes == e)].sum()
                for r, e in sorted({(int(r), int(e)) for r, e in zip(runner, episodes)})]
        logged = sorted(client.get_metric_history(run["mlflow_run_id"], "episode_return"),
                        key=lambda m: m.step)
        np.testing.assert_allclose(sums, [m.value for m in logged])


def test_checkpoints_live_on_object_storage(cluster_run):
    s3, bucket = cluster_run["s3"], cluster_run["bucket"]
    teach = stage(cluster_run, "teach", "smoke-teachers")
    distill = stage(cluster_run, "distill", "smoke-bc")
    for checkpoint in [r["checkpoint"] for r in teach["runs"]] + [distill["checkpoint"]]:
        assert checkpoint.startswith(f"s3://{bucket}/runs/ray_results/"), checkpoint
        assert s3.keys(bucket, checkpoint.removeprefix(f"s3://{bucket}/")), checkpoint
    keys = s3.keys(bucket, distill["checkpoint"].removeprefix(f"s3://{bucket}/"))
    assert any(k.endswith("/model.pt") for k in keys) and any(k.endswith("/model.json") for k in keys)
    # Evaluation played the teacher and the imitator from those remote checkpoints.
    evaluate = stage(cluster_run, "evaluate", "smoke-eval")
    assert {r["agent"] for r in evaluate["rows"]} == {"imitator", "teacher", "random"}


def test_mlflow_server_has_the_runs_and_object_storage_has_their_artifacts(cluster_run):
    mlflow, s3, bucket = cluster_run["mlflow"], cluster_run["s3"], cluster_run["bucket"]
    client = MlflowClient(mlflow.uri)
    artifact_keys = s3.keys(bucket, "mlflow/")
    exp = client.get_experiment_by_name("smoke")  # the pipeline's study
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([exp.experiment_id])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    for name, plot in [("teach", "learning_curve.png"), ("distill", "training_curves.png"),
                       ("evaluate", "returns_per_episode.png")]:
        (stage,) = [r for r in runs if r.data.tags.get("understudy.stage") == name]
        ours = [r for r in runs if stage.info.run_id in (r.info.run_id, r.data.tags.get("mlflow.parentRunId"))]
        assert plot in {a.path for r in ours for a in client.list_artifacts(r.info.run_id)}
        # The server proxied the upload to the bucket: the plot is an object there.
        assert any(k.endswith(f"/artifacts/{plot}") and f"/{exp.experiment_id}/" in k
                   for k in artifact_keys), (name, artifact_keys[:20])
    # The job's output leads to the study's parent run (the README's cluster section): its URL
    # is printed, and the stage runs hang under it.
    import re

    url = re.search(r"\[mlflow\] study 'smoke', this run: (\S+)", cluster_run["submit"].stdout)
    assert url and url.group(1).startswith(f"{mlflow.uri}/#/experiments/{exp.experiment_id}/runs/"), \
        cluster_run["submit"].stdout[-3000:]
    parent = client.get_run(url.group(1).rsplit("/", 1)[1])
    assert "mlflow.parentRunId" not in parent.data.tags
    stages = [r for r in runs if r.data.tags.get("understudy.stage")]
    assert stages and all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in stages)
    # The runs are rows in the server's PostgreSQL backend store.
    assert query(mlflow.backend_store_uri, "select count(*) from runs")[0][0] >= 2 + 1 + 7
    # Nothing of MLflow's was written into the job's workspace.
    assert not (cluster_run["workspace"] / "mlflow.db").exists()
    assert not (cluster_run["workspace"] / "mlartifacts").exists()


def _teach_on(cluster, env: dict, options: list[str], cfg, log_path):
    """`understudy teach CFG` driven from this machine on the two-node cluster, in its own
    process group, its output in `log_path`."""
    import subprocess
    import sys

    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "understudy.platform.cli", *options, "teach", str(cfg)],
                                cwd=REPO_ROOT, env={**env, "RAY_ADDRESS": cluster.gcs_address}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_worker_node_killed_mid_teach_the_trial_resumes_on_a_new_node_without_gaps(tmp_path):
    """The node running a teacher dies (its raylet SIGKILLed) after the trial's second
    checkpoint; a replacement node joins, as Kubernetes would start a new pod. Tune restarts the
    trial there from its last checkpoint (teach's max_failures), the history recorded after it
    is rewound, and the run finishes with no episode missing or twice and no policy version
    missing."""
    import glob
    import signal

    from test_teacher_recording import check_history, history

    from understudy.histories import shards

    node_env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", PATH=f"{BIN}:{os.environ['PATH']}")
    ws = tmp_path / "ws"
    cfg = tmp_path / "teach.yaml"
    cfg.write_text("kind: teach\nname: node\nalgorithm: ppo\ngames: [Breakout]\nenv_steps: 3072\n"
                   "env_steps_per_iter: 256\nmax_episode_steps: 40\nnum_envs_per_runner: 2\n"
                   "checkpoint_interval: 2\nshard_rows: 60\nmax_failures: 3\nprotocol: {full_action_space: true}\n"
                   "ppo: {num_minibatches: 4, num_epochs: 1}\n")
    # The head runs no trials: the teacher is on the worker node, then on its replacement.
    with ray_cluster(node_env, head_cpus=0, worker_cpus=2, worker_resources={}) as cluster:
        proc = _teach_on(cluster, node_env, ["--workspace", str(ws)], cfg, tmp_path / "teach.log")
        try:
            deadline = time.time() + 300
            while len(glob.glob(f"{ws}/ray_results/teach-node-*/*/checkpoint_*")) < 2:
                assert proc.poll() is None, (tmp_path / "teach.log").read_text()[-3000:]
                assert time.time() < deadline, "no second checkpoint in time"
                time.sleep(0.5)
            time.sleep(2)  # some history after the checkpoint, to be rewound
            assert proc.poll() is None, "the run ended before its node could be killed"
            assert cluster.kill_raylet("w"), "no raylet of the worker node found"
            cluster.add_worker("w2", cpus=2)
            assert proc.wait(timeout=400) == 0, (tmp_path / "teach.log").read_text()[-4000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    out = (tmp_path / "teach.log").read_text()
    manifest = json.loads((ws / "stages" / "teach-node.json").read_text())
    [run] = manifest["runs"]
    root = str(ws / "shards")
    assert shards.verify_run(root, run["run_id"]) == []
    h = history(root, run["run_id"])
    check_history(h)  # no duplicated step or episode, episode indexes without gaps
    versions = np.unique(h["policy_version"])
    assert (versions == np.arange(versions[0], versions[-1] + 1)).all(), "a policy version is missing"
    assert h["global_step"].max() >= 3072 - 256
    rewound = {e["shard"] for e in shards.read_catalog(root, run["run_id"], include_rewound=True)} - \
        {e["shard"] for e in shards.read_catalog(root, run["run_id"])}
    assert rewound, out[-3000:]  # the history after the checkpoint was taken back, not kept twice


def test_object_storage_away_for_30s_mid_teach_on_two_nodes_loses_no_episode(tmp_path, s3_server, monkeypatch):
    """The S3 server goes away for 30 s while a teacher on the worker node writes its shards
    there, then comes back: connections are refused meanwhile (services.TcpGate in front of the
    real moto server, which keeps its buckets as a restarted S3 service would). The worker's
    shard writes wait and retry, the run finishes, every episode is in the catalog once, and
    one line says storage went away and one that it came back."""
    import signal

    from services import TcpGate, wait_until
    from test_teacher_recording import check_history, history

    from understudy.histories import shards

    bucket = s3_server.new_bucket()
    root = f"s3://{bucket}/runs/shards"
    gate = TcpGate(int(s3_server.endpoint.rsplit(":", 1)[1]))
    # Every node reaches object storage only through the gate.
    node_env = dict(os.environ, **{**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}"},
                    RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", PATH=f"{BIN}:{os.environ['PATH']}")
    cfg = tmp_path / "teach.yaml"
    cfg.write_text("kind: teach\nname: outage\nalgorithm: ppo\ngames: [Breakout]\nenv_steps: 1536\n"
                   "env_steps_per_iter: 256\nmax_episode_steps: 40\nnum_envs_per_runner: 2\n"
                   "shard_rows: 60\nprotocol: {full_action_space: true}\n"
                   "ppo: {num_minibatches: 4, num_epochs: 1}\n")
    # The head runs no trials: the shards are written from the worker node.
    with ray_cluster(node_env, head_cpus=0, worker_cpus=2, worker_resources={}) as cluster:
        log_path = tmp_path / "teach.log"
        proc = _teach_on(cluster, node_env, ["--workspace", str(tmp_path / "ws"), "--storage", f"s3://{bucket}/runs"],
                         cfg, log_path)
        try:
            wait_until(lambda: any(k.endswith(".arrow") for k in s3_server.keys(bucket, "runs/shards/")), 300,
                       "the first shard on object storage", proc, str(log_path))
            gate.close()
            try:
                time.sleep(30)
                assert proc.poll() is None, "the run ended during the outage"
            finally:
                gate.open()
            assert proc.wait(timeout=600) == 0, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    out = log_path.read_text()
    assert out.count("[shards] object storage unreachable") == 1, out[-3000:]
    assert out.count("[shards] object storage is back after") == 1, out[-3000:]
    for key, value in s3_server.env.items():  # this process reads the shards back, past the gate
        monkeypatch.setenv(key, value)
    manifest = json.loads((tmp_path / "ws" / "stages" / "teach-outage.json").read_text())
    [run] = manifest["runs"]
    assert shards.verify_run(root, run["run_id"]) == []
    h = history(root, run["run_id"])
    check_history(h)  # every recorded episode once, indexes without gaps
    assert h["global_step"].max() >= 1536 - 256
    assert run["recorded_episodes"] == len(np.unique(h["episode_index"]))
