"""A chaos run (#33): a tiny MinAtar experiment (a PPO teacher on MinAtar Breakout, AD on the
first part of its history, five agents evaluated) on object storage (a real moto S3 server
behind a TCP gate) and an `mlflow server` on PostgreSQL, hit at random moments by every fault
the platform promises to survive: object storage away while the teacher records, the MLflow
server killed while an imitator trains and started again, the whole `understudy` process group
SIGKILLed three times in a row, each followed by `--resume`, and a Ray worker SIGKILLed while it
works. At the end every history verifies, no MLflow run is left RUNNING or finished twice, and
the results rows and imitator weights are bitwise those of an unbroken run with the same seeds.

The schedule is drawn from one seed, printed; UNDERSTUDY_CHAOS_SEED=<seed> replays it. The
driver is killed only once the teacher has finished: a teacher killed mid-training resumes
without gaps or duplicates (fault 2) but not bitwise (docs/reliability.md), so an unbroken run
is no reference for it.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from understudy.histories import shards

pytestmark = pytest.mark.slow

EXPERIMENT = "minatar_chaos"


def chaos_experiment(path) -> str:
    """minatar_teacher_cutoff at its tiny scale, with shards of 256 steps (the first on object
    storage early, while the teacher trains), four epochs of training (four checkpoints a kill
    can fall between) and 30 episodes evaluated, under its own name."""
    from conftest import REPO_ROOT

    config = yaml.safe_load(open(os.path.join(REPO_ROOT, "tune_configs/experiments/minatar_teacher_cutoff.yaml")))
    config["name"] = EXPERIMENT
    config["scales"]["tiny"]["teach"]["shard_rows"] = 256
    config["scales"]["tiny"]["distill"].update(epochs=4, max_batches_per_epoch=4)
    config["scales"]["tiny"]["evaluate"]["episodes"] = 30
    path.write_text(yaml.safe_dump(config))
    return str(path)


# Moments after the teacher has finished, each of which every invocation not killed before
# reaches, and the longest a kill waits after one (the evaluation's tasks finish within seconds
# of each other).
MOMENTS = {"after teach": (r"=== (distill|evaluate):", 8.0), "evaluation begun": (r"=== evaluate:", 8.0),
           "a task evaluated": (r"\[evaluate\] \d+/\d+ done", 1.0)}


def draw_schedule(seed: int) -> dict:
    rng = random.Random(seed)
    return {
        "seed": seed,
        # after the teacher's first shard is on S3, for this long
        "s3_away_s": round(rng.uniform(10, 20), 1),
        # after the first trained epoch is reported, for this long
        "mlflow_away_s": round(rng.uniform(8, 15), 1),
        # the driver's process group, each time this long after a moment of the invocation: the start
        # of its first stage after teach, of its evaluation, or its evaluation's first finished task
        "driver_kills": [(m, round(rng.uniform(0, MOMENTS[m][1]), 1)) for m in rng.choices(list(MOMENTS), k=3)],
        # in the last invocation, a Ray worker this long after it was first seen working
        "worker_kill_s": round(rng.uniform(0, 2), 1),
    }


def _session_left(session: int, wait_s: float = 10.0) -> list[int]:
    """The processes of a killed driver's session still alive after `wait_s` (Ray workers run in
    process groups of their own and exit when their raylet is gone), killed so that none of them
    writes beside the invocation that resumes."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getsid(int(pid)) == session:
                    left.append(int(pid))
            except OSError:
                continue
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def _workers(driver: int) -> list[tuple[int, str]]:
    """(pid, title) of the Ray workers started under the driver process that are doing work now
    (a distill trial, an evaluation task)."""
    parent, title = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title[int(pid)] = f.read().split(b"\0")[0].decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue

    def under_driver(pid: int) -> bool:
        for _ in range(20):
            pid = parent.get(pid, 0)
            if pid == driver:
                return True
            if pid <= 1:
                return False
        return False

    return [(pid, t) for pid, t in title.items()
            if t.startswith(("ray::ImplicitFunc", "ray::play", "ray::learn_from_scratch")) and under_driver(pid)]


def test_chaos_run_ends_with_the_rows_and_weights_of_an_unbroken_one(ray_session, postgres, tmp_path, monkeypatch,
                                                                     capsys):
    from conftest import REPO_ROOT
    from services import TcpGate, free_port, mlflow_server, moto_server
    from test_reproducibility import assert_runs_settled, assert_same_outcome

    from understudy.platform import cli

    seed = int(os.environ.get("UNDERSTUDY_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    schedule = draw_schedule(seed)
    events: list[str] = []
    started = time.monotonic()

    def shown(line: str) -> None:  # on the terminal, past pytest's capture (capsys reads the CLI's output)
        with capsys.disabled():
            print(f"\n[chaos] {line}", flush=True)

    def event(what: str) -> None:
        events.append(f"{time.monotonic() - started:6.1f}s {what}")
        shown(events[-1])

    shown(f"schedule (replay: UNDERSTUDY_CHAOS_SEED={seed}): {json.dumps(schedule)}")

    config = chaos_experiment(tmp_path / f"{EXPERIMENT}.yaml")
    # The unbroken run: the same config and seeds, local storage and tracking, in this process.
    reference = tmp_path / "reference"
    assert cli.main(["--workspace", str(reference), "experiment", config, "--scale", "tiny"]) == 0
    event("the unbroken reference run finished")

    with moto_server(str(tmp_path)) as s3:
        bucket = s3.new_bucket()
        gate = TcpGate(int(s3.endpoint.rsplit(":", 1)[1]))  # the experiment reaches S3 only through it
        port, server_dir = free_port(), tmp_path / "mlflow"
        server_dir.mkdir()
        database, artifacts = postgres.database_for(str(server_dir)), str(tmp_path / "mlartifacts")
        server = {"ctx": None}

        def start_mlflow():
            server["ctx"] = mlflow_server(str(server_dir), artifacts, dict(os.environ), database, port=port)
            server["proc"] = server["ctx"].__enter__().proc

        def stop_mlflow():
            os.killpg(server["proc"].pid, signal.SIGKILL)  # gone, no goodbye
            server["proc"].wait()
            server["ctx"].__exit__(None, None, None)
            server["ctx"] = None

        start_mlflow()
        uri = f"http://127.0.0.1:{port}"
        ws = tmp_path / "ws"
        env = {**os.environ, **s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}",
               "UNDERSTUDY_NUM_CPUS": "2"}
        cmd = [sys.executable, "-m", "understudy.platform.cli", "--workspace", str(ws), "--storage",
               f"s3://{bucket}/chaos", "--tracking-uri", uri, "experiment", config, "--scale", "tiny"]
        s3_done = mlflow_done = False
        try:
            for invocation in range(4):  # three killed in a row, then one that runs to its end
                last = invocation == 3
                log_path = tmp_path / f"invocation-{invocation}.log"
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(cmd + (["--resume"] if invocation else []), cwd=REPO_ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                event(f"invocation {invocation} started{' with --resume' if invocation else ''}")
                moment = s3_away = mlflow_away = worker_seen = None
                looked = 0.0
                worker_killed = False
                deadline = time.monotonic() + 600
                while proc.poll() is None:
                    assert time.monotonic() < deadline, f"invocation {invocation} hangs\n" + "\n".join(events)
                    out, now = log_path.read_text(errors="replace"), time.monotonic()
                    if not s3_done and s3_away is None and now - looked >= 1:  # the bucket: a look a second
                        looked = now
                        if any(k.endswith(".arrow") for k in s3.keys(bucket, "chaos/shards/")):
                            gate.close()
                            s3_away = now
                            event(f"object storage away (the teacher's first shard is on it) for "
                                  f"{schedule['s3_away_s']}s")
                    if s3_away is not None and now - s3_away >= schedule["s3_away_s"]:
                        gate.open()
                        s3_away, s3_done = None, True
                        event("object storage back")
                    if not mlflow_done and mlflow_away is None and re.search(r"\[distill\] \S+: steps \d+/", out):
                        stop_mlflow()
                        mlflow_away = now
                        event(f"MLflow server killed (an imitator's first epoch reported) for "
                              f"{schedule['mlflow_away_s']}s")
                    if mlflow_away is not None and now - mlflow_away >= schedule["mlflow_away_s"]:
                        start_mlflow()
                        mlflow_away, mlflow_done = None, True
                        event("MLflow server started again, on the same database")
                    kill = None if last else schedule["driver_kills"][invocation]  # (moment, seconds after it)
                    if kill and moment is None and re.search(MOMENTS[kill[0]][0], out):
                        moment = now
                    if moment is not None and now >= moment + kill[1]:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        stage = re.findall(r"=== (\w+):", out)[-1]
                        event(f"invocation {invocation}: its whole process group SIGKILLed during {stage}")
                        left = _session_left(proc.pid)
                        if left:
                            event(f"  {len(left)} Ray worker(s) of its session, in their own process groups, "
                                  "still alive 10s later: SIGKILLed too")
                        break
                    if last and not worker_killed:
                        working = _workers(proc.pid)
                        if working and worker_seen is None:
                            worker_seen = now
                        if worker_seen is not None and now - worker_seen >= schedule["worker_kill_s"] and working:
                            pid, title = working[0]
                            os.kill(pid, signal.SIGKILL)
                            worker_killed = True
                            event(f"Ray worker {pid} ({title}) SIGKILLed")
                    time.sleep(0.1)
                out = log_path.read_text(errors="replace")
                if last:
                    assert proc.returncode == 0, out[-4000:] + "\n".join(events)
                    assert worker_killed, "the last invocation finished before a Ray worker could be killed\n" + \
                        "\n".join(events)
                else:
                    assert proc.returncode == -signal.SIGKILL, (
                        f"invocation {invocation} ended by itself before its kill ({proc.returncode})\n"
                        + out[-4000:] + "\n".join(events))
                # an outage ends before the next invocation starts (its preflight needs both)
                if s3_away is not None:
                    gate.open()
                    s3_away, s3_done = None, True
                    event("object storage back")
                if mlflow_away is not None:
                    start_mlflow()
                    mlflow_away, mlflow_done = None, True
                    event("MLflow server started again, on the same database")
            assert s3_done and mlflow_done, "\n".join(events)
            shown(f"seed {seed}, faults as they happened:\n  " + "\n  ".join(events))

            # Every history verifies, read through the S3 server (the gate open).
            for key, value in {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}"}.items():
                monkeypatch.setenv(key, value)
            teach = json.loads((ws / "stages" / f"teach-{EXPERIMENT}-teach.json").read_text())
            capsys.readouterr()
            assert cli.main(["shards", "verify", "--root", teach["shard_root"]]) == 0, capsys.readouterr().out
            runs = shards.list_runs(teach["shard_root"])
            assert runs and all(shards.verify_run(teach["shard_root"], r) == [] for r in runs)
            assert_same_outcome(reference, ws, EXPERIMENT)
            assert_runs_settled(ws, EXPERIMENT, killed=3, tracking_uri=uri)
        finally:
            if server["ctx"] is not None:
                server["ctx"].__exit__(None, None, None)
