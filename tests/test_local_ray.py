"""The local Ray the CLI starts runs its workers at the driver's priority (platform/cli.init_ray),
unless the user's environment sets RAY_worker_niceness."""
import os
import subprocess
import sys

PROBE = ("import os; from understudy.platform.cli import init_ray; init_ray(); import ray; "
         "print('niceness', os.nice(0), ray.get(ray.remote(lambda: os.nice(0)).remote()))")


def _driver_and_worker_niceness(**env) -> tuple[int, int]:
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")},
           "UNDERSTUDY_NUM_CPUS": "1", **env}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    [line] = [ln for ln in out.stdout.splitlines() if ln.startswith("niceness")]
    driver, worker = map(int, line.split()[1:])
    return driver, worker


def test_trial_workers_run_at_the_driver_s_priority():
    driver, worker = _driver_and_worker_niceness()
    assert worker == driver  # Ray's own default would be min(driver + 15, 19)


def test_the_user_s_own_niceness_is_kept():
    driver, worker = _driver_and_worker_niceness(RAY_worker_niceness="5")
    assert worker == min(driver + 5, 19)
