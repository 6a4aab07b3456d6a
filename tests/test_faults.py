"""Faults injected for real: nothing half-written, nothing recorded lost."""
import os
import signal
import time

import numpy as np
import pytest

from understudy.platform import shards

pytestmark = pytest.mark.slow


def test_killed_env_runner_is_restarted_and_loses_no_recorded_episode(ray_session, tmp_path):
    from understudy.algorithms.teachers import recording_algorithm, teacher_config

    root = str(tmp_path)
    config = teacher_config(
        algorithm="ppo", game="Breakout", seed=0, env_steps_per_iter=256,
        protocol={"full_action_space": True}, max_episode_steps=40,
        record={"root": root, "session": "kill", "algorithm": "ppo", "shard_rows": 80},
        num_envs=2, num_env_runners=1, runner="vector")
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
