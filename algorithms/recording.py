"""The recording hook's core: per env runner, collect the steps of every open episode and hand
each finished episode, whole, to a ShardWriter. Env runners call `extend` with runs of steps
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

    def take_steps(self, n: int) -> np.ndarray:
        """The global_step numbers of the next `n` steps this env runner takes, in the order
        they are taken (a vector runner reserves them a batch at a time)."""
        steps = np.arange(self.steps_done, self.steps_done + n, dtype=np.int64)
        self.steps_done += n
        return steps

    def extend(self, key, *, frames: np.ndarray, actions, rewards, policy_versions, lives,
               epsilon=None, policy_outputs=None, global_steps=None) -> None:
        """Append a run of consecutive steps (arrays, one row per step) to episode `key`.
        `global_steps` as reserved by `take_steps`; numbered now when not given. The frames are
        copied: what the Learner was handed is not kept alive until the shard is written."""
        n = len(actions)
        if n == 0:
            return
        chunk = {"global_step": self.take_steps(n) if global_steps is None else np.asarray(global_steps, np.int64),
                 "policy_version": np.asarray(policy_versions, np.int64),
                 "frame": np.array(frames), "action": np.asarray(actions, np.int16),
                 "reward": np.asarray(rewards, np.float32), "lives": np.asarray(lives, np.int16),
                 "epsilon": None if epsilon is None else np.broadcast_to(np.asarray(epsilon, np.float32), (n,)),
                 "policy_outputs": None if policy_outputs is None else np.asarray(policy_outputs, np.float32)}
        self._open.setdefault(key, []).append(chunk)

    def end(self, key, *, terminated: bool, truncated: bool, env_return: float) -> None:
        chunks = self._open.pop(key, None)
        if not chunks:
            return

        def cat(name):
            parts = [c[name] for c in chunks]
            return parts[0] if len(parts) == 1 or parts[0] is None else np.concatenate(parts)

        n = sum(len(c["action"]) for c in chunks)
        done = np.zeros(n, bool)
        columns = {"step": np.arange(n, dtype=np.int32),
                   **{k: cat(k) for k in ("global_step", "policy_version", "frame", "action", "reward",
                                          "lives", "epsilon", "policy_outputs")},
                   "terminated": done.copy(), "truncated": done.copy()}
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
