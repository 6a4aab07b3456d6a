"""The test harness's own promise: a service started for a test is stopped with everything it
spawned, even when the test fails (the cluster tests rely on it)."""
import os
import sys
import time

import pytest
from services import process_group


def group_members(pgid: int) -> list[int]:
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == pgid and not _zombie(pid):
                members.append(int(pid))
        except OSError:
            pass
    return members


def _zombie(pid: str) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_process_group_stops_the_whole_tree_when_the_test_fails(tmp_path):
    # A leader whose children ignore SIGTERM: only the SIGKILL fallback stops them.
    script = ("import subprocess\n"
              "for _ in range(2):\n"
              "    subprocess.Popen(['sh', '-c', 'trap \"\" TERM; sleep 300'])\n"
              "subprocess.run(['sleep', '300'])\n")
    with pytest.raises(RuntimeError, match="the test failed"):
        with process_group([sys.executable, "-c", script], dict(os.environ),
                           str(tmp_path / "log"), grace=1.0) as proc:
            deadline = time.monotonic() + 10
            while len(group_members(proc.pid)) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(group_members(proc.pid)) >= 4
            raise RuntimeError("the test failed")
    time.sleep(0.2)
    assert group_members(proc.pid) == []
