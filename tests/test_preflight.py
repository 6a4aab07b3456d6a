"""Bad cluster settings fail within seconds, before Ray starts, with one line that says which
setting is wrong and how to fix it: an unreachable Ray address, an unreachable MLflow server,
missing object-storage credentials (and refused credentials, a missing bucket, an
unreachable endpoint)."""
import os
import socket
import subprocess
import time

import pytest
from conftest import REPO_ROOT
from services import BIN, free_port, moto_server

SMOKE = "tune_configs/pipelines/smoke.yaml"
FAST_S = 10  # the CLI's own start-up is under a second; the probes time out after 3 s


def clean_env(**extra) -> dict:
    """The environment without any cluster setting, plus `extra`."""
    drop = ("AWS_", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "UNDERSTUDY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


def understudy(args: list[str], env: dict, tmp_path) -> tuple[int, str, float]:
    started = time.perf_counter()
    proc = subprocess.run([os.path.join(BIN, "understudy"), "--workspace", str(tmp_path / "ws"),
                           *args, "pipeline", SMOKE], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert not (tmp_path / "ws").exists(), "nothing should be written before the checks pass"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    return proc.returncode, lines[0], elapsed


def test_unreachable_ray_address(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    code, message, elapsed = understudy([], clean_env(RAY_ADDRESS=address), tmp_path)
    assert code == 1 and elapsed < FAST_S
    assert f"Ray cluster at RAY_ADDRESS={address} is unreachable" in message
    assert "ray start --head" in message and "unset RAY_ADDRESS" in message


def test_dashboard_url_given_as_ray_address(tmp_path):
    code, message, _ = understudy([], clean_env(RAY_ADDRESS="http://127.0.0.1:8265"), tmp_path)
    assert code == 2
    assert "is a Ray dashboard URL" in message and "ray job submit --address" in message


def test_unreachable_mlflow_server(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    code, message, elapsed = understudy(["--tracking-uri", uri], clean_env(), tmp_path)
    assert code == 1 and elapsed < FAST_S
    assert f"MLflow tracking server at {uri} is unreachable" in message
    assert "mlflow server" in message and "--tracking-uri / MLFLOW_TRACKING_URI" in message


def test_mlflow_server_that_never_answers_times_out_within_seconds(tmp_path):
    # A socket that accepts connections (the kernel does) but never sends a byte back.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, message, elapsed = understudy([], clean_env(MLFLOW_TRACKING_URI=uri), tmp_path)
    assert code == 1 and elapsed < FAST_S
    assert "is unreachable (no answer within 3s)" in message


def test_missing_storage_credentials(tmp_path):
    code, message, elapsed = understudy(["--storage", "s3://understudy-data/runs"], clean_env(),
                                        tmp_path)
    assert code == 2 and elapsed < FAST_S
    assert "no object-storage credentials in the environment for s3://understudy-data/runs" in message
    assert "--storage / UNDERSTUDY_STORAGE" in message
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message


def test_missing_credentials_named_for_the_shard_root_too(tmp_path):
    env = clean_env(UNDERSTUDY_SHARD_ROOT="s3://understudy-data/shards")
    code, message, _ = understudy([], env, tmp_path)
    assert code == 2 and "--shard-root / UNDERSTUDY_SHARD_ROOT" in message


def test_bucket_that_does_not_exist(s3_server, tmp_path):
    code, message, elapsed = understudy(["--storage", "s3://no-such-bucket-here/runs"],
                                        clean_env(**s3_server.env), tmp_path)
    assert code == 2 and elapsed < FAST_S
    assert "bucket 'no-such-bucket-here'" in message and "does not exist" in message
    assert s3_server.endpoint in message


def test_credentials_the_object_storage_refuses(tmp_path):
    with moto_server(str(tmp_path), check_credentials=True) as s3:
        env = clean_env(**dict(s3.env, AWS_ACCESS_KEY_ID="not-a-key", AWS_SECRET_ACCESS_KEY="nope"))
        code, message, elapsed = understudy(["--storage", "s3://understudy-data/runs"], env, tmp_path)
    assert code == 2 and elapsed < FAST_S
    assert f"object storage at {s3.endpoint} refused the credentials" in message
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message


def test_unreachable_object_storage_endpoint(s3_server, tmp_path):
    env = clean_env(**dict(s3_server.env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"))
    code, message, elapsed = understudy(["--storage", "s3://understudy-data/runs"], env, tmp_path)
    assert code == 1 and elapsed < FAST_S
    assert "object storage at http://127.0.0.1:" in message and "is unreachable" in message
    assert "AWS_ENDPOINT_URL" in message


def test_reachable_settings_pass(s3_server, tmp_path):
    """The same checks let a good set of settings through (they are not always failing)."""
    from understudy.platform import preflight
    from understudy.platform.workspace import Workspace

    bucket = s3_server.new_bucket()
    with socket.socket() as head:  # something listening where the Ray head would be
        head.bind(("127.0.0.1", 0))
        head.listen(1)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in s3_server.env.items():
                mp.setenv(key, value)
            ws = Workspace.resolve(str(tmp_path), storage=f"s3://{bucket}/runs")
            preflight.check_all(ws, f"127.0.0.1:{head.getsockname()[1]}")
