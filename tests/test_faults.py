"""Faults injected for real: nothing half-written, nothing recorded lost."""
import os
import signal
import time

import numpy as np
import pytest

from understudy.histories import shards

pytestmark = pytest.mark.slow


def test_killed_env_runner_is_restarted_and_loses_no_recorded_episode(ray_session, tmp_path):
    from understudy.algorithms.presets import PPOSettings
    from understudy.algorithms.teachers import recording_algorithm, teacher_config

    root = str(tmp_path)
    config = teacher_config(
        algorithm="ppo", game="Breakout", seed=0, env_steps=10_000, env_steps_per_iter=256,
        protocol={"full_action_space": True}, max_episode_steps=40,
        record={"root": root, "session": "kill", "algorithm": "ppo", "shard_rows": 80},
        cnn="small", num_envs=2, num_env_runners=1, lr=2.5e-4, reward="sign",
        settings=PPOSettings(num_minibatches=4, num_epochs=1), runner="vector")
    algo = recording_algorithm(config.algo_class)(config=config)
    run_id = "ppo-Breakout-s0-kill"
    try:
        algo.train(); algo.train()
        before = shards.read_catalog(root, run_id)
        assert before, "the runner should have written shards before the kill"
        pid = algo.env_runner_group.foreach_env_runner(lambda r: os.getpid(), local_env_runner=False)[0]
        os.kill(pid, signal.SIGKILL)  # mid-run, with episodes open and some buffered
        # Train on until RLlib has a replacement runner and it has recorded on for a while.
        deadline, trained_after_restart, new_pid = time.time() + 180, 0, None
        while trained_after_restart < 3:
            assert time.time() < deadline, "the killed env runner was not replaced in time"
            algo.train()
            pids = algo.env_runner_group.foreach_env_runner(lambda r: os.getpid(), local_env_runner=False)
            if pids and pids[0] != pid:
                new_pid = pids[0]
                trained_after_restart += 1
    finally:
        algo.stop()  # frees the session's CPUs even when the test fails
    assert new_pid != pid  # RLlib replaced the runner and training went on

    after = shards.read_catalog(root, run_id)
    assert {e["shard"] for e in before} < {e["shard"] for e in after}  # earlier shards all kept
    assert shards.verify_run(root, run_id) == []
    table = shards.open_run(root, run_id).to_table()
    episode = np.asarray(table["episode_index"])
    assert (np.unique(episode) == np.arange(episode.max() + 1)).all()  # indexes continue
    for e in np.unique(episode):  # every cataloged episode is whole
        rows = episode == e
        steps = np.asarray(table["step"])[rows]
        assert (np.sort(steps) == np.arange(len(steps))).all()
        ends = np.asarray(table["terminated"])[rows] | np.asarray(table["truncated"])[rows]
        assert ends.sum() == 1
    recorded_after_kill = [x for e in after if e["shard"] not in {b["shard"] for b in before}
                           for x in e["episodes"]]
    assert recorded_after_kill  # the replacement runner recorded on
    assert min(x["first_global_step"] for x in recorded_after_kill) > max(
        x["last_global_step"] for e in before for x in e["episodes"])


DARKROOM_TEACH = ("kind: teach\nname: dr\nalgorithm: qlearning\ngames: [DarkRoom]\nenv_steps: 400\n"
                  "env_steps_per_iter: 20\n")
DARKROOM_DISTILL = """kind: distill
name: {name}
teacher: dr
game: DarkRoom
algorithm: ad
model: {{cnn: grid, stack: 1, context: 60, d_model: 32, layers: 1, heads: 2}}
epochs: {epochs}
max_batches_per_epoch: 40
verify_shards: false
allow_unlearned: true  # 20 episodes per goal: some goals are not learned yet
allow_flat_windows: true
"""


def test_run_start_retried_after_its_params_failed_still_logs_them(tmp_path, monkeypatch):
    """The outage falls between create_run and logging the params: the queued retry finds the
    run by its tags and must still log its params, into that one run (a real sqlite store; the
    outage is a refused connection, raised once by the params call)."""
    from types import SimpleNamespace

    import requests

    from understudy.platform import tracking
    from understudy.platform.workspace import Study, Workspace

    ws = Workspace.resolve(str(tmp_path / "ws"))
    ws.root.mkdir(parents=True)
    exp = tracking.experiment_id(tracking.client_for(ws), ws, "understudy-teach")
    stage = Study("understudy-teach", exp, run_id="", session="s", source="test")  # no parent run
    callback = tracking.TuneToMlflow(ws, "teach", stage, lambda config: {"game": config["game"], "lr": 0.001},
                                     metrics={}, step_key="steps", experiment="exp")
    callback.setup()
    log_params, calls = tracking.log_params, []

    def refused_once(client, run_id, params):
        calls.append(params)
        if len(calls) == 1:
            raise requests.exceptions.ConnectionError("connection refused")
        log_params(client, run_id, params)

    monkeypatch.setattr(tracking, "log_params", refused_once)
    trial = SimpleNamespace(trial_id="t0", config={"game": "Breakout"})
    callback.on_trial_start(0, [trial], trial)
    assert callback.pending and "t0" not in callback.runs  # the run exists, its params do not
    assert callback._drain()
    (run,) = callback.client.search_runs([callback.exp_id])
    assert callback.runs["t0"] == run.info.run_id
    assert run.data.params == {"game": "Breakout", "lr": "0.001"}


def test_stage_reports_what_the_callback_copy_tune_drove_could_not_log(tmp_path, monkeypatch):
    """After `--resume` Tune drives the callback it pickled with the experiment, not the stage's
    own instance: what that copy could not log must still reach the stage manifest."""
    import json

    import requests
    from ray import cloudpickle

    from understudy.platform import tracking
    from understudy.platform.workspace import Study, Workspace

    monkeypatch.setenv("UNDERSTUDY_MLFLOW_WAIT_S", "0")
    ws = Workspace.resolve(str(tmp_path / "ws"))
    ws.root.mkdir(parents=True)
    stage = Study("understudy-distill", "0", run_id="", session="s", source="test")
    own = tracking.TuneToMlflow(ws, "distill", stage, lambda config: {}, metrics={}, step_key="steps",
                                experiment="distill-x-20261123")
    driven = cloudpickle.loads(cloudpickle.dumps(own))  # what Tune restores and calls

    def unreachable():
        raise requests.exceptions.ConnectionError("connection refused")

    driven.pending.append(({"trial": "t0", "step": 7, "metrics": {"loss": 0.5}}, unreachable))
    driven.on_experiment_end([])
    manifest = {}
    own.report_missing(manifest, "distill", "the models are in their checkpoints")
    calls_file = manifest["mlflow_missing"]["calls_file"]
    assert calls_file == driven.missing_file and own.missing_file is None
    with open(calls_file) as f:
        assert [json.loads(line) for line in f] == [{"trial": "t0", "step": 7, "metrics": {"loss": 0.5}}]


def test_mlflow_server_away_loses_no_training_and_no_metric(ray_session, postgres, tmp_path, capsys, monkeypatch):
    """Fault 6: the tracking server is killed while an imitator trains. Training goes on; the
    metrics logged meanwhile are retried when the server is back (all epochs end up in MLflow).
    When it does not come back, the stage still finishes and writes what is missing to a file."""
    import json
    import threading

    from mlflow.tracking import MlflowClient
    from services import free_port, mlflow_server, wait_until

    from understudy.platform import cli

    port, ws = free_port(), tmp_path / "ws"
    (tmp_path / "teach.yaml").write_text(DARKROOM_TEACH)
    for name, epochs in (("back", 8), ("gone", 5)):
        (tmp_path / f"{name}.yaml").write_text(DARKROOM_DISTILL.format(name=name, epochs=epochs))
    server_dir = tmp_path / "mlflow"
    server_dir.mkdir()
    artifacts = str(tmp_path / "artifacts")
    database = postgres.database_for(str(server_dir))  # the same runs when the server comes back

    def understudy(*argv):
        return cli.main(["--workspace", str(ws), "--tracking-uri", f"http://127.0.0.1:{port}", *argv])

    def distill_while(name: str, fault) -> int:
        codes = []
        thread = threading.Thread(target=lambda: codes.append(understudy("distill", str(tmp_path / f"{name}.yaml"))))
        thread.start()
        fault()
        thread.join(timeout=300)
        assert not thread.is_alive()
        return codes[0]

    seen = []

    def output_has(text: str) -> bool:
        seen.append(capsys.readouterr().out)
        return text in "".join(seen)

    with mlflow_server(str(server_dir), artifacts, dict(os.environ), database, port=port) as server:
        assert understudy("teach", str(tmp_path / "teach.yaml")) == 0
        capsys.readouterr()

        def kill_then_restart():
            nonlocal server
            wait_until(lambda: output_has("[distill] back-ad-DarkRoom"), 120, "a first logged result")
            os.killpg(server.proc.pid, signal.SIGKILL)  # gone, no goodbye
            server.proc.wait()
            wait_until(lambda: output_has("MLflow call(s) queued"), 120, "a result queued while MLflow is away")
            ctx = mlflow_server(str(server_dir), artifacts, dict(os.environ), database, port=port)
            server = ctx.__enter__()
            kill_then_restart.ctx = ctx

        assert distill_while("back", kill_then_restart) == 0
    kill_then_restart.ctx.__exit__(None, None, None)
    out = "".join(seen) + capsys.readouterr().out
    assert "is unreachable" in out and "MLflow is back" in out

    with mlflow_server(str(server_dir), artifacts, dict(os.environ), database, port=port) as server:
        client = MlflowClient(server.uri)
        manifest = json.loads((ws / "stages" / "distill-back.json").read_text())
        assert "mlflow_missing" not in manifest
        run = manifest["mlflow_run_id"]
        steps = sorted(m.step for m in client.get_metric_history(run, "train_loss"))
        assert len(steps) == 8 and len(set(steps)) == 8  # every epoch, none lost, none twice
        assert client.get_run(run).info.status == "FINISHED"
        assert "checkpoint" in {a.path for a in client.list_artifacts(run)}

        # The server goes away for good: the stage finishes, the model is in its checkpoint, and
        # what MLflow did not get is written down and announced.
        monkeypatch.setenv("UNDERSTUDY_MLFLOW_WAIT_S", "3")
        seen.clear()

        def kill_for_good():
            wait_until(lambda: output_has("[distill] gone-ad-DarkRoom"), 120, "a first logged result")
            os.killpg(server.proc.pid, signal.SIGKILL)  # gone, no goodbye
            server.proc.wait()

        assert distill_while("gone", kill_for_good) == 0
    out = "".join(seen) + capsys.readouterr().out
    assert "MISSING FROM MLFLOW" in out
    manifest = json.loads((ws / "stages" / "distill-gone.json").read_text())
    assert os.path.isdir(manifest["checkpoint"])
    missing = manifest["mlflow_missing"]
    lines = [json.loads(x) for x in open(missing["calls_file"])]
    assert sorted(x["step"] for x in lines if "metrics" in x) == sorted(
        {x["step"] for x in lines if "metrics" in x})
    assert len([x for x in lines if "metrics" in x]) >= 2  # the epochs after the kill, written down
    assert missing["artifacts"]


def test_killed_teach_process_resumes_without_gaps_or_duplicates(tmp_path):
    """Fault 2: SIGKILL the whole `understudy teach` process (driver, Ray, trial) mid-run, then
    `understudy teach --resume`. By the documented rule (docs/teachers.md) shards written after
    the last checkpoint are rewound (dropped as a whole) and the teacher plays on from the
    checkpoint: the catalog's history has no policy version twice and none missing."""
    import glob
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from test_teacher_recording import check_history, history

    ws = tmp_path / "ws"
    cfg = tmp_path / "teach.yaml"
    cfg.write_text("kind: teach\nname: killed\nalgorithm: ppo\ngames: [Breakout]\nenv_steps: 3072\n"
                   "env_steps_per_iter: 256\nmax_episode_steps: 40\nnum_envs_per_runner: 2\n"
                   "checkpoint_interval: 2\nshard_rows: 60\nprotocol: {full_action_space: true}\n"
                   "ppo: {num_minibatches: 4, num_epochs: 1}\n")
    cmd = [sys.executable, "-m", "understudy.platform.cli", "--workspace", str(ws), "teach", str(cfg)]
    env = {**os.environ, "UNDERSTUDY_NUM_CPUS": "2"}
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while len(glob.glob(f"{ws}/ray_results/teach-killed-*/*/checkpoint_*")) < 2:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no second checkpoint in time"
            time.sleep(0.5)
        time.sleep(3)  # a little history after the checkpoint, to be rewound
        assert proc.poll() is None, "the run ended before it could be killed: raise env_steps"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (ws / "stages" / "teach-killed.json").exists()
    root = str(ws / "shards")
    [run_id] = shards.list_runs(root)
    before_resume = {e["shard"] for e in shards.read_catalog(root, run_id)}

    resumed = subprocess.run(cmd[:-2] + ["teach", "--resume", str(cfg)], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    manifest = json.loads((ws / "stages" / "teach-killed.json").read_text())
    assert manifest["runs"][0]["run_id"] == run_id
    # The resumed trial's results went to its MLflow run (found by its tags: Tune drives the
    # callbacks it pickled with the experiment after a restore).
    assert manifest["runs"][0]["mlflow_run_id"] and "mlflow_missing" not in manifest
    h = history(root, run_id)
    check_history(h)  # no duplicated step or episode, episode indexes without gaps
    versions = np.unique(h["policy_version"])
    assert (versions == np.arange(versions[0], versions[-1] + 1)).all()  # no policy version missing
    assert shards.verify_run(root, run_id) == []
    after = {e["shard"] for e in shards.read_catalog(root, run_id)}
    rewound = {e["shard"] for e in shards.read_catalog(root, run_id, include_rewound=True)} - after
    assert "MISSING FROM MLFLOW" not in resumed.stdout
    # What was dropped was rewound; a restore during the resumed run (Tune retrying the trial
    # from its checkpoint) may rewind shards that run wrote, too, by the same rule.
    assert before_resume - after <= rewound
    assert not after & rewound
    assert h["global_step"].max() >= 3072 - 256


FULL_DISK_SCRIPT = r'''
import json, resource, signal, sys
import numpy as np
from understudy.histories import shards

root, limit = sys.argv[1], int(sys.argv[2])

def episode(index, steps, seed):
    rng = np.random.default_rng(seed)  # noise frames: incompressible, so bytes on disk are real
    cols = {"step": np.arange(steps), "global_step": np.arange(index * 1000, index * 1000 + steps),
            "policy_version": np.zeros(steps, np.int64),
            "frame": rng.integers(0, 256, (steps, 84, 84), dtype=np.uint8),
            "action": np.zeros(steps, np.int64), "reward": np.zeros(steps),
            "terminated": np.r_[np.zeros(steps - 1, bool), True], "truncated": np.zeros(steps, bool),
            "lives": np.zeros(steps), "epsilon": None, "policy_outputs": None}
    return shards.Episode(0, index, cols, 0.0)

static = {"game": "Breakout", "algorithm": "random", "seed": 0}
shards.write_run_metadata(root, "run-full", static)
w = shards.ShardWriter(root, "run-full", static, env_runner=0)
w.add(episode(0, 2, 0))
first = w.flush()
# From here the OS refuses to let this process write any file past `limit` bytes (EFBIG),
# as a disk that fills up refuses the rest of a write.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
w.add(episode(1, 20, 1))
try:
    w.flush()
    print(json.dumps({"error": None}))
except shards.ShardError as err:
    print(json.dumps({"error": str(err), "first": first["shard"]}))
'''


def test_storage_full_mid_write_fails_clearly_and_keeps_earlier_shards(tmp_path):
    """Fault 5: the storage refuses the rest of a shard mid-write (an OS file-size limit gives
    the real EFBIG a full disk gives). A clear error names the shard; nothing partial is in the
    catalog or left behind; the earlier shard still verifies."""
    import json
    import subprocess
    import sys

    root = str(tmp_path / "store")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, root, str(64 * 1024)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] and "cannot write shard" in result["error"] and "r000-000001" in result["error"]
    assert "too large" in result["error"].lower() or "27" in result["error"]  # EFBIG
    assert [e["shard"] for e in shards.read_catalog(root, "run-full")] == [result["first"]]
    assert shards.verify_run(root, "run-full") == []
    leftovers = os.listdir(os.path.join(root, "run-full", "shards"))
    assert leftovers == [f"{result['first']}.arrow"], leftovers  # no temporary file remains


def test_killed_distill_process_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL the whole `understudy distill` process (driver, Ray, trial) after its third
    epoch, then `understudy distill --resume`: the trial goes on from its last
    checkpoint (no epoch trained twice from scratch) and the stage finishes with every epoch."""
    import glob
    import json
    import re
    import subprocess
    import sys

    from conftest import REPO_ROOT

    ws = tmp_path / "ws"
    teach = tmp_path / "teach.yaml"
    teach.write_text("kind: teach\nname: rooms\nalgorithm: qlearning\ngames: [DarkRoom]\nenv_steps: 200\n"
                     "env_steps_per_iter: 20\n")
    distill = tmp_path / "distill.yaml"
    distill.write_text("kind: distill\nname: killed\nteacher: rooms\ngame: DarkRoom\nalgorithm: ad\n"
                       "model: {cnn: grid, stack: 1, context: 40, d_model: 16, layers: 1, heads: 2}\n"
                       "data: {heldout_episodes: 1}\nepochs: 10\nmax_batches_per_epoch: 40\ncycle_data: true\n"
                       "batch_size: 8\ncpus_per_trial: 1\nallow_unlearned: true\nallow_flat_windows: true\n"
                       "allow_short_context: true\n")
    base = [sys.executable, "-m", "understudy.platform.cli", "--workspace", str(ws)]
    env = {**os.environ, "UNDERSTUDY_NUM_CPUS": "2"}
    from understudy.platform.config import load_config
    from understudy.platform.teach import run_teach
    from understudy.platform.workspace import Workspace

    rooms = Workspace.resolve(str(ws), None, None, None)
    rooms.ensure()
    run_teach(load_config(teach), rooms)  # Dark Room's source runs here, without Ray
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen(base + ["distill", str(distill)], cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    try:
        # Three epochs reported: Tune has recorded the checkpoints of the first ones.
        while "steps 120/" not in (tmp_path / "first.log").read_text():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no third epoch in time"
            time.sleep(0.2)
        assert glob.glob(f"{ws}/ray_results/distill-killed-*/*/checkpoint_*")
        assert proc.poll() is None, "distill ended before it could be killed: raise epochs"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (ws / "stages" / "distill-killed.json").exists()
    assert (ws / "stages" / "distill-killed.running.json").exists()

    resumed = subprocess.run(base + ["distill", "--resume", str(distill)], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "[distill] resuming distill-killed-" in out
    restored = [int(e) for e in re.findall(r"\[distill\] restored from epoch (\d+) checkpoint", out)]
    # From a checkpoint Tune had recorded (the newest one may have been cut by the kill).
    assert restored and restored[0] >= 1, out[-5000:]
    steps = [int(s) for s in re.findall(r"\[distill\] killed-ad-DarkRoom-\S+: steps (\d+)/~400", out)]
    assert steps and steps[0] > 40 and steps[-1] == 400, steps  # the first resumed epoch is a later one
    manifest = json.loads((ws / "stages" / "distill-killed.json").read_text())
    assert manifest["trials"][0]["epochs"] == 10
    assert not (ws / "stages" / "distill-killed.running.json").exists()
