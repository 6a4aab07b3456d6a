"""The recording hook's core: per env runner, collect the steps of every open episode and hand
each finished episode, whole, to a ShardWriter. Env runners call `step` for every agent step
and `end` when an episode finishes; an episode never ended (the runner stopped or died) is
never written.
"""
from __future__ import annotations

import numpy as np

from understudy.histories.shards import Episode, ShardWriter, write_run_metadata


def run_id_for(session: str, algorithm: str, game: str, seed: int) -> str:
    """A run's folder name: 'ppo-Breakout-s0-<session>', 'ppo-MinAtar_Breakout-s0-<session>'."""
    return f"{algorithm}-{game.replace('/', '_')}-s{seed}-{session}"


def recorder_for(env_runner) -> "EpisodeRecorder | None":
    """The recorder of an RLlib env runner, from its env_config's `record` section; None for
    evaluation runners and runs that do not record."""
    from understudy.envs import family_of

    config = env_runner.config
    record = config.env_config.get("record")
    if not record or config.in_evaluation:
        return None
    game, seed = config.env_config["game"], int(config.seed or 0)
    family = family_of(game)
    return EpisodeRecorder(
        record, run_id=run_id_for(record["session"], record["algorithm"], game, seed),
        game=game, algorithm=record["algorithm"], seed=seed, env_runner=env_runner.worker_index,
        metadata={"protocol": config.env_config.get("protocol", {}),
                  "max_episode_steps": config.env_config.get("max_episode_steps"),
                  "env_runner_class": type(env_runner).__name__, "env_family": family.name,
                  "frame_shape": list(family.frame_shape),
                  **family.metadata(game)})


class EpisodeRecorder:
    def __init__(self, record: dict, *, run_id: str, game: str, algorithm: str, seed: int,
                 env_runner: int, metadata: dict):
        self.writer = ShardWriter(root=record["root"], run_id=run_id, env_runner=env_runner,
                                  static={"game": game, "algorithm": algorithm, "seed": seed},
                                  max_rows=int(record.get("shard_rows", 20_000)))
        if env_runner <= 1:  # the local runner or the first remote one writes run.json
            write_run_metadata(record["root"], run_id, {"game": game, "algorithm": algorithm,
                                                        "seed": seed, **metadata})
        self.env_runner = env_runner
        self.root, self.run_id = record["root"], run_id
        self.episodes_done = 0  # episode_index of the next finished episode
        self.steps_done = 0  # global_step of the next step
        self._open: dict = {}
        self.sync_from_catalog()

    def sync_from_catalog(self) -> None:
        """Continue after the last episode this env runner has in the catalog: a restarted
        runner, or a run resumed from a checkpoint, extends its history without gaps."""
        from understudy.histories.shards import read_catalog

        last = [e for entry in read_catalog(self.root, self.run_id)
                if entry["env_runner"] == self.env_runner for e in entry["episodes"]]
        self.episodes_done = 1 + max((e["episode_index"] for e in last), default=-1)
        self.steps_done = 1 + max((e["last_global_step"] for e in last), default=-1)

    def step(self, key, *, frame: np.ndarray, action: int, reward: float, policy_version: int,
             lives: int, epsilon: float | None = None, policy_outputs=None) -> None:
        ep = self._open.get(key)
        if ep is None:
            ep = self._open[key] = {k: [] for k in ("global_step", "policy_version", "frame", "action",
                                                  "reward", "lives", "epsilon", "policy_outputs")}
        ep["global_step"].append(self.steps_done)
        self.steps_done += 1
        ep["policy_version"].append(policy_version)
        ep["frame"].append(frame)
        ep["action"].append(action)
        ep["reward"].append(reward)
        ep["lives"].append(lives)
        ep["epsilon"].append(epsilon)
        ep["policy_outputs"].append(policy_outputs)

    def end(self, key, *, terminated: bool, truncated: bool, env_return: float) -> None:
        ep = self._open.pop(key, None)
        if not ep:
            return
        n = len(ep["action"])
        done = np.zeros(n, bool)
        columns = {
            "step": np.arange(n, dtype=np.int32),
            "global_step": np.asarray(ep["global_step"], np.int64),
            "policy_version": np.asarray(ep["policy_version"], np.int64),
            "frame": np.stack(ep["frame"]),
            "action": np.asarray(ep["action"], np.int16),
            "reward": np.asarray(ep["reward"], np.float32),
            "terminated": done.copy(), "truncated": done.copy(),
            "lives": np.asarray(ep["lives"], np.int16),
            "epsilon": None if ep["epsilon"][0] is None else np.asarray(ep["epsilon"], np.float32),
            "policy_outputs": (None if ep["policy_outputs"][0] is None
                               else np.asarray(ep["policy_outputs"], np.float32)),
        }
        columns["terminated"][-1], columns["truncated"][-1] = terminated, truncated
        self.writer.add(Episode(self.env_runner, self.episodes_done, columns, float(env_return)))
        self.episodes_done += 1

    def drop_open(self) -> int:
        """Forget unfinished episodes (e.g. after an env reset); returns how many."""
        n = len(self._open)
        self._open.clear()
        return n

    def flush(self) -> None:
        self.writer.flush()

    close = flush
