"""From cataloged shards to training arrays: whole episodes in training order, frame stacks
rebuilt on read exactly as the policy saw them (the stack at step t is frames t-3..t of the
same episode, zero frames before its start, as both Atari env factories produce them)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from understudy.envs import FRAME_SHAPE
from understudy.platform import shards


@dataclass
class History:
    """Rows of one or more learning histories, sorted by (run, env runner, episode, step)."""
    frames: np.ndarray  # (N, 84, 84) uint8, the newest frame of each step's observation
    actions: np.ndarray  # (N,) int64
    rewards: np.ndarray  # (N,) float32
    episode_start: np.ndarray  # (N,) int64: row index where this row's episode starts
    episode_id: np.ndarray  # (N,) int64: 0..E-1, in training order

    def __len__(self):
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        return int(self.episode_id[-1]) + 1 if len(self) else 0

    def stacks(self, rows: np.ndarray, k: int = 4) -> np.ndarray:
        """(B, 84, 84, k) uint8 stacks for the given rows, oldest frame first."""
        rows = np.asarray(rows)
        offsets = np.arange(k - 1, -1, -1)
        idx = rows[:, None] - offsets[None, :]
        before_start = idx < self.episode_start[rows][:, None]
        stacks = self.frames[np.where(before_start, rows[:, None], idx)]
        stacks[before_start] = 0
        return np.moveaxis(stacks, 1, -1)

    def episode_rows(self, first: int, last: int) -> np.ndarray:
        """Row indices of episodes first..last-1 (episode ids, training order)."""
        return np.flatnonzero((self.episode_id >= first) & (self.episode_id < last))


def frames_of(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    size = FRAME_SHAPE[0] * FRAME_SHAPE[1]
    data = np.frombuffer(arr.buffers()[1], np.uint8)
    return data[arr.offset * size:(arr.offset + len(arr)) * size].reshape(len(arr), *FRAME_SHAPE)


def load_history(root: str, run_ids: list[str], last_episodes: int | None = None,
                 exclude: frozenset[str] = frozenset()) -> History:
    """Load runs into memory (the skeleton's loader: fine for demo-scale histories), less the
    shard paths in `exclude`."""
    tables = []
    for run_id in run_ids:
        t = shards.open_run(root, run_id, exclude).to_table(
            columns=["run_id", "env_runner", "episode_index", "step", "frame", "action", "reward"])
        tables.append(t)
    table = pa.concat_tables(tables).sort_by(
        [("run_id", "ascending"), ("env_runner", "ascending"),
         ("episode_index", "ascending"), ("step", "ascending")])
    step = table["step"].to_numpy()
    new_episode = step == 0
    episode_id = np.cumsum(new_episode) - 1
    starts = np.flatnonzero(new_episode)
    if last_episodes is not None:
        keep_from = starts[max(0, len(starts) - last_episodes)]
        table = table.slice(keep_from)
        step, episode_id = step[keep_from:], episode_id[keep_from:] - episode_id[keep_from]
        starts = np.flatnonzero(step == 0)
    episode_start = starts[episode_id]
    return History(frames=frames_of(table["frame"]),
                   actions=table["action"].to_numpy().astype(np.int64),
                   rewards=table["reward"].to_numpy(),
                   episode_start=episode_start.astype(np.int64),
                   episode_id=episode_id.astype(np.int64))
