"""No credentials in configs, manifests, logs, MLflow or storage: a whole experiment runs with
object-storage credentials of distinctive (canary) values, then every place it wrote is
searched for them. Checkpoints load without executing code (see also test_imitation)."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

ACCESS_KEY = "AKIACANARY7Q2UNDERSTUDY"
SECRET_KEY = "canary-secret-4f1d9a7e2b-understudy"


def test_no_credential_reaches_configs_manifests_logs_mlflow_or_storage(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's own logs; short for its sockets
    env = {**os.environ, **s3_server.env, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "RAY_TMPDIR": ray_tmp, "UNDERSTUDY_NUM_CPUS": "2"}
    ws = tmp_path / "ws"
    # darkroom_ad at its tiny scale with what repeats a stage's writes left out (a second AD
    # seed, ED, the agents that write nothing else): every kind of write (shards, checkpoints,
    # MLflow runs, artifacts, manifests, results) is still made, to S3 and locally.
    experiment = yaml.safe_load((Path(REPO_ROOT) / "tune_configs/experiments/darkroom_ad.yaml").read_text())
    experiment.pop("ed")
    experiment["evaluate"]["agents"] = ["imitator", "random", "finetune"]
    experiment["scales"]["tiny"]["distill"]["seeds"] = [0]
    experiment["scales"]["tiny"].pop("ed", None)
    config = tmp_path / "darkroom_ad.yaml"
    config.write_text(yaml.safe_dump(experiment))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "understudy.platform.cli", "--workspace", str(ws),
             "--storage", f"s3://{bucket}/runs", "experiment", str(config), "--scale", "tiny"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Experiment 'darkroom_ad' (tiny) finished" in proc.stdout

        places = {"stdout": proc.stdout, "stderr": proc.stderr}
        for root in (str(ws), ray_tmp, os.path.join(REPO_ROOT, "tune_configs"), str(tmp_path)):
            for path in glob.glob(f"{root}/**/*", recursive=True):
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        places[path] = f.read().decode("latin-1")
        client = s3_server.client()
        keys = s3_server.keys(bucket)
        assert any("/shards/" in k for k in keys) and any("checkpoint" in k for k in keys)
        for key in keys:
            places[f"s3://{bucket}/{key}"] = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("latin-1")
        assert len(places) > 50 and any(p.endswith("mlflow.db") for p in places)
        assert any("session_" in p and p.endswith(".log") for p in places)  # Ray's logs were read
        leaks = [p for p, text in places.items() if ACCESS_KEY in text or SECRET_KEY in text]
        assert not leaks, f"credentials found in {leaks}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_teacher_checkpoint_plays_without_unpickling_anything(ray_session, tmp_path):
    """The platform plays a teacher from the weights-only export next to RLlib's checkpoint; a
    checkpoint whose weights file is a crafted pickle is refused before its code can run."""
    import pickle

    import numpy as np
    import torch
    from ray.rllib.core.columns import Columns

    from understudy.algorithms.presets import PPOSettings
    from understudy.algorithms.teachers import POLICY_WEIGHTS, load_teacher_module, recording_algorithm, teacher_config

    config = teacher_config(algorithm="ppo", game="Breakout", seed=0, env_steps=10_000, env_steps_per_iter=64,
                            protocol={"full_action_space": True}, max_episode_steps=30, record=None,
                            cnn="small", num_envs=1, lr=2.5e-4, reward="sign",
                            settings=PPOSettings(num_minibatches=1, num_epochs=1))
    algo = recording_algorithm(config.algo_class)(config=config)
    try:
        algo.train()
        algo.save_checkpoint(str(tmp_path))
        learner_module = next(iter(algo.learner_group.foreach_learner(
            lambda learner: learner.module["default_policy"]))).get()
    finally:
        algo.stop()
    obs = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (6, 84, 84, 4), np.uint8))
    with torch.no_grad():
        expected = learner_module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        got = load_teacher_module(str(tmp_path)).forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    torch.testing.assert_close(got, expected)

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / POLICY_WEIGHTS, "wb") as f:
        pickle.dump({"encoder": Payload()}, f)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_teacher_module(str(tmp_path))
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a teacher checkpoint"):
        load_teacher_module(str(tmp_path / "missing"))
