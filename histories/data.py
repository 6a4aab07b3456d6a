"""The imitators' data path: from the catalog of shards to training batches, streamed.

1. Index: the catalog alone (no shard is opened) gives every episode of every learning history,
   in training order, with where its rows are, its return and its policy versions.
2. Selection: the episode-level transforms (game filter, teacher cutoff, gap, expert-only) act
   on that index, so they select exactly the episodes they claim before any pixel is read.
3. Streaming: `Loader` reads only the selected episodes, a few blocks of consecutive episodes
   at a time (memory stays bounded whatever the size of the shard set), decompressing only the
   columns it needs from memory-mapped shard files. It rebuilds frame stacks (the stack at step
   t is frames t-k+1..t of the same episode, zero frames before its start, as both Atari env
   factories produce them), applies the step-level transforms (unified 18-action space, reward
   clipping, GLA-style projections) and cuts samples: single steps (BC), windows inside one
   episode (Decision Transformer), or windows across consecutive episodes of one history
   (Algorithm Distillation). A background thread reads the next blocks while the learner
   trains on the current ones.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from understudy.envs import family_of, transform_reward
from understudy.histories import shards

COLUMNS = ("step", "policy_version", "frame", "action", "reward")


# ---- 1. the index ----------------------------------------------------------------------------

@dataclass(frozen=True)
class EpisodeRef:
    """Where one recorded episode lives, and what the catalog says about it."""
    run_id: str
    env_runner: int
    episode_index: int
    shard: str  # path of the shard file, as the run's filesystem names it
    row: int  # first row of the episode inside the shard
    steps: int
    ret: float  # raw return
    first_policy_version: int
    last_policy_version: int


@dataclass(frozen=True)
class HistoryIndex:
    """One teacher run's learning history: its episodes in training order, i.e. the order
    they were completed: by the policy version that chose their last action, then env runner,
    then the runner's episode index (its completion order). Vectorised envs play episodes
    concurrently, so the steps of consecutive episodes overlap in time; policy versions
    never decrease within an episode and from one episode's end to the next one's end."""
    run_id: str
    game: str
    meta: dict = field(compare=False, repr=False)
    episodes: tuple[EpisodeRef, ...] = ()

    @property
    def steps(self) -> int:
        return sum(e.steps for e in self.episodes)

    def with_episodes(self, episodes) -> "HistoryIndex":
        return replace(self, episodes=tuple(episodes))


def index_runs(root: str, run_ids: list[str], exclude: frozenset[str] = frozenset()) -> list[HistoryIndex]:
    """The learning histories of `run_ids` from their catalogs, less shard paths in `exclude`."""
    _, base = shards.filesystem(root)
    histories = []
    for run_id in run_ids:
        meta = shards.read_run_metadata(root, run_id)
        episodes = []
        for entry in shards.read_catalog(root, run_id):
            path = f"{base}/{run_id}/{entry['path']}"
            if path in exclude:
                continue
            row = 0
            for e in entry["episodes"]:
                episodes.append(EpisodeRef(run_id, entry["env_runner"], e["episode_index"], path, row,
                                           e["steps"], float(e["return"]), e["first_policy_version"],
                                           e["last_policy_version"]))
                row += e["steps"]
        episodes.sort(key=lambda e: (e.last_policy_version, e.env_runner, e.episode_index))
        histories.append(HistoryIndex(run_id, meta["game"], meta, tuple(episodes)))
    return histories


# ---- 2. episode selection ----------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """Which episodes of each history an imitator sees, applied in this order:
    games -> cutoff -> return cap -> expert_last or gap. Each is exact and checked by tests."""
    games: tuple[str, ...] | None = None  # keep only these games' histories
    cutoff_env_steps: int | None = None  # episodes that end within the first N recorded steps
    cutoff_policy_version: int | None = None  # episodes whose actions all came from version <= N
    # Data that never exceeds a level: each history up to (not including) its first episode
    # whose return exceeds this fraction of its task's optimum (per-task families: Dark Room).
    # Can a frozen imitator then rise above the best return in its data?
    cap_return_fraction: float | None = None
    gap: int = 1  # every k-th episode (the 1st, (k+1)-th, ...) of what the cutoff left
    expert_last: int | None = None  # only the last N episodes of what the cutoff left (ED)

    def __post_init__(self):
        if self.gap < 1:
            raise ValueError(f"gap: {self.gap} must be >= 1 (1 keeps every episode)")
        if self.expert_last is not None and self.gap != 1:
            raise ValueError("expert_last and gap cannot be combined: expert-only keeps the last "
                             "N episodes as they are")

    def apply(self, histories: list[HistoryIndex]) -> list[HistoryIndex]:
        out = []
        for h in histories:
            if self.games is not None and h.game not in self.games:
                continue
            eps = list(h.episodes)
            if self.cutoff_env_steps is not None:
                ends = np.cumsum([e.steps for e in eps])
                eps = [e for e, end in zip(eps, ends) if end <= self.cutoff_env_steps]
            if self.cutoff_policy_version is not None:
                eps = [e for e in eps if e.last_policy_version <= self.cutoff_policy_version]
            if self.cap_return_fraction is not None:
                cap = self.cap_return_fraction * task_optimum(h)
                over = next((i for i, e in enumerate(eps) if e.ret > cap), len(eps))
                eps = eps[:over]
            if self.expert_last is not None:
                eps = eps[-self.expert_last:]
            eps = eps[::self.gap]
            if eps:
                out.append(h.with_episodes(eps))
        return out


def task_optimum(history: HistoryIndex) -> float:
    """The best return possible on the task a history was recorded on (its run's `goal`), for
    families whose games hold tasks (envs.EnvFamily.optimum); ValueError for any other."""
    family = family_of(history.game)
    if not family.per_goal or history.meta.get("goal") is None:
        raise ValueError(f"run {history.run_id} ({history.game}): a return cap is a fraction of each task's "
                         "optimum, and this game has no tasks with an optimum (valid: per-task families such "
                         "as DarkRoom)")
    return float(family.optimum(np.array(history.meta["goal"])))


def split_heldout(histories: list[HistoryIndex], heldout_episodes: int):
    """(train, heldout): the last `heldout_episodes` of every history are held out for action
    accuracy; their preceding episodes still serve them as context."""
    train, held = [], []
    for h in histories:
        n = max(0, len(h.episodes) - heldout_episodes) if heldout_episodes else len(h.episodes)
        if n == 0 and heldout_episodes:
            n = len(h.episodes) - 1  # keep at least one training episode per history
        train.append(h.with_episodes(h.episodes[:n]))
        if heldout_episodes and n < len(h.episodes):
            held.append(h.with_episodes(h.episodes[n:]))
    return [h for h in train if h.episodes], held


# ---- step-level transforms ----------------------------------------------------------------------

@dataclass(frozen=True)
class StepTransforms:
    unified_actions: bool = False  # map each game's action index to its ALE id (18 actions)
    reward: str = "raw"  # raw | clip (to [-1, 1]) | sign (-1, 0, 1: reward tokens)
    gla: bool = False  # per-history random pixel permutation and action permutation
    seed: int = 0

    def __post_init__(self):
        if self.reward not in ("raw", "clip", "sign"):
            raise ValueError(f"reward: {self.reward!r} is not a reward transform; valid: raw, clip, sign")


def num_actions_of(histories: list[HistoryIndex], transforms: StepTransforms) -> int:
    """The action-space size every history maps into; distinct spaces need unified_actions."""
    if transforms.unified_actions:
        return 18
    sizes = {h.game: _game_actions(h) for h in histories}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"histories have different action spaces {sizes}; set unified_actions: true "
                         "to map them into the 18 ALE actions")
    return next(iter(sizes.values()))


def _game_actions(h: HistoryIndex) -> int:
    if "num_actions" in h.meta:
        return int(h.meta["num_actions"])
    from understudy.envs import family_of
    from understudy.envs.atari import action_set
    from understudy.envs.families import ALE

    if family_of(h.game) is not ALE:
        return family_of(h.game).num_actions(h.game)

    return len(action_set(h.game, bool(h.meta.get("protocol", {}).get("full_action_space", False))))


def _action_map(h: HistoryIndex, transforms: StepTransforms, history_key: int) -> np.ndarray | None:
    """Per-history lookup table applied to recorded actions (None: identity)."""
    table = None
    if transforms.unified_actions:
        from understudy.envs.atari import action_set

        full = bool(h.meta.get("protocol", {}).get("full_action_space", False))
        table = np.asarray(action_set(h.game, full), np.int64)
    if transforms.gla:
        n = 18 if transforms.unified_actions else _game_actions(h)
        perm = np.random.default_rng([transforms.seed, history_key, 1]).permutation(n)
        table = perm if table is None else perm[table]
    return table


def gla_positions(seed: int, key: int, grid: tuple[int, int]) -> np.ndarray:
    """GLA's observation permutation for one history (or one copy at play): a permutation of
    the frame's height x width positions; a position's channels move with it."""
    return np.random.default_rng([seed, key, 0]).permutation(int(grid[0]) * int(grid[1]))


def permute_positions(obs: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) frames or observations with their H x W positions permuted by `perm`."""
    obs = np.asarray(obs)
    flat = obs.reshape(len(obs), obs.shape[1] * obs.shape[2], -1)
    return flat[:, perm].reshape(obs.shape)


# ---- 3. reading blocks of episodes ----------------------------------------------------------------

@dataclass
class History:
    """Rows of consecutive episodes in memory, sorted in training order."""
    frames: np.ndarray  # (N, 84, 84) uint8, the newest frame of each step's observation
    actions: np.ndarray  # (N,) int64, after the action transforms
    rewards: np.ndarray  # (N,) float32, after the reward transform
    episode_start: np.ndarray  # (N,) int64: row index where this row's episode starts
    episode_id: np.ndarray  # (N,) int64: 0..E-1, in training order
    target: np.ndarray | None = None  # (N,) bool: rows whose action is a training target
    history_start: np.ndarray | None = None  # (N,) int64: row where this row's history starts
    policy_version: np.ndarray | None = None  # (N,) int64: learner update behind each action

    def __len__(self):
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        return int(self.episode_id[-1]) + 1 if len(self) else 0

    def stacks(self, rows: np.ndarray, k: int = 4) -> np.ndarray:
        """(..., 84, 84, k) uint8 stacks for rows of any shape, oldest frame first; where a
        frame is a whole observation (MinAtar's (10, 10, 10)), the observations themselves."""
        rows = np.asarray(rows)
        if self.frames.ndim == 4:
            if k != 1:
                raise ValueError(f"stack: {k}; these observations are one frame each, valid: 1")
            return self.frames[rows]
        idx = rows[..., None] - np.arange(k - 1, -1, -1)
        before_start = idx < self.episode_start[rows][..., None]
        stacks = self.frames[np.where(before_start, rows[..., None], idx)]
        stacks[before_start] = 0
        return np.moveaxis(stacks, -3, -1)

    def episode_rows(self, first: int, last: int) -> np.ndarray:
        """Row indices of episodes first..last-1 (episode ids, training order)."""
        return np.flatnonzero((self.episode_id >= first) & (self.episode_id < last))

    def returns_to_go(self) -> np.ndarray:
        """Per row, the (transformed) reward still to come in its episode, this step's included."""
        csum = np.cumsum(self.rewards, dtype=np.float64)
        last_row = np.r_[np.flatnonzero(np.diff(self.episode_id)), len(self) - 1]
        return (csum[last_row[self.episode_id]] - csum + self.rewards).astype(np.float32)


def mapped_concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """`np.concatenate(arrays)` in an anonymous memory map of its own, unmapped when the array is
    freed. A loader's frame blocks (tens to hundreds of MB each, one after another) then never
    enter the malloc heap, where their holes fragmented it and RSS grew with every block
    streamed (bench/imitation.py). Everything else keeps glibc's default allocation: forcing all
    large allocations into maps (an mmap threshold of 1 MB, as before 2026-12-07) made every
    training update fault in its activations afresh, 1.4x slower (docs/benchmarks.md)."""
    import mmap

    shape = (sum(len(a) for a in arrays), *arrays[0].shape[1:])
    dtype = arrays[0].dtype
    count = int(np.prod(shape))
    if count == 0:
        return np.concatenate(arrays)
    out = np.frombuffer(mmap.mmap(-1, count * dtype.itemsize), dtype, count).reshape(shape)
    return np.concatenate(arrays, out=out)


class ShardReader:
    """Reads row ranges of shard files, decompressing only the columns asked for. Local files
    are memory-mapped; remote ones are read through pyarrow.fs."""

    def __init__(self, root: str, columns=COLUMNS):
        self.fs, _ = shards.filesystem(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.columns = list(columns)
        self._batch_rows: dict[str, np.ndarray] = {}  # path -> row offset of each record batch

    def _open(self, path: str):
        source = pa.memory_map(path) if self.local else self.fs.open_input_file(path)
        fields = [shards.SHARD_SCHEMA.get_field_index(c) for c in self.columns]
        return pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=fields))

    def read(self, path: str, ranges: list[tuple[int, int]]) -> pa.Table:
        """The rows [start, stop) of each range, concatenated in the order given."""
        reader = self._open(path)
        if path not in self._batch_rows:
            sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
            self._batch_rows[path] = np.r_[0, np.cumsum(sizes)]
        offsets = self._batch_rows[path]
        wanted = sorted({i for start, stop in ranges
                         for i in range(np.searchsorted(offsets, start, "right") - 1,
                                        np.searchsorted(offsets, stop, "left"))})
        batches = {i: reader.get_batch(i) for i in wanted}
        parts = []
        for start, stop in ranges:
            for i in range(np.searchsorted(offsets, start, "right") - 1, np.searchsorted(offsets, stop, "left")):
                lo, hi = max(start, offsets[i]) - offsets[i], min(stop, offsets[i + 1]) - offsets[i]
                parts.append(batches[i].slice(lo, hi - lo))
        return pa.Table.from_batches(parts)


def frames_of(table: pa.Table) -> np.ndarray:
    """The frame column as (N, *frame shape) uint8, in the shape its schema names."""
    shape = shards.frame_shape_of(table.schema)
    column = table["frame"]
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    size = int(np.prod(shape))
    data = np.frombuffer(arr.buffers()[1], np.uint8)
    return data[arr.offset * size:(arr.offset + len(arr)) * size].reshape(len(arr), *shape)


def read_episodes(reader: ShardReader, history: HistoryIndex, episodes: list[EpisodeRef]) -> pa.Table:
    """The rows of `episodes` of one history, in the order given, every column: one read per
    shard; checked against the catalog (each episode's steps count from 0)."""
    by_shard: dict[str, list[int]] = {}
    for i, e in enumerate(episodes):
        by_shard.setdefault(e.shard, []).append(i)
    pieces: list = [None] * len(episodes)
    for path, members in by_shard.items():
        table = reader.read(path, [(episodes[i].row, episodes[i].row + episodes[i].steps) for i in members])
        at = 0
        for i in members:
            pieces[i] = table.slice(at, episodes[i].steps)
            at += episodes[i].steps
    table = pa.concat_tables(pieces)
    expected = np.concatenate([np.arange(e.steps) for e in episodes])
    if len(table) != len(expected) or not (table["step"].to_numpy() == expected).all():
        raise shards.ShardError(f"run {history.run_id}: catalog and shard rows disagree; "
                                "run `understudy shards verify`")
    return table


def read_block(reader: ShardReader, history: HistoryIndex, episodes: list[EpisodeRef],
               transforms: StepTransforms, history_key: int, targets: int) -> History:
    """Consecutive episodes of one history in memory; the last `targets` episodes are training
    targets, the ones before them context only."""
    table = read_episodes(reader, history, episodes)
    steps = np.array([e.steps for e in episodes])
    frames = frames_of(table)
    actions = table["action"].to_numpy().astype(np.int64)
    table_map = _action_map(history, transforms, history_key)
    if table_map is not None:
        actions = table_map[actions]
    if transforms.gla:
        frames = permute_positions(frames, gla_positions(transforms.seed, history_key, frames.shape[1:3]))
    episode_id = np.repeat(np.arange(len(episodes)), steps)
    starts = np.r_[0, np.cumsum(steps)[:-1]]
    target = episode_id >= len(episodes) - targets
    return History(frames=frames, actions=actions,
                   rewards=transform_reward(table["reward"].to_numpy(), transforms.reward).astype(np.float32),
                   episode_start=starts[episode_id].astype(np.int64), episode_id=episode_id,
                   target=target, history_start=np.zeros(len(actions), np.int64),
                   policy_version=table["policy_version"].to_numpy())


def concat(blocks: list[History]) -> History:
    """Several blocks as one History; rows keep their own episode and history starts."""
    offsets = np.r_[0, np.cumsum([len(b) for b in blocks])[:-1]]
    ep_offsets = np.r_[0, np.cumsum([b.num_episodes for b in blocks])[:-1]]
    return History(
        frames=mapped_concatenate([b.frames for b in blocks]),
        actions=np.concatenate([b.actions for b in blocks]),
        rewards=np.concatenate([b.rewards for b in blocks]),
        episode_start=np.concatenate([b.episode_start + o for b, o in zip(blocks, offsets)]),
        episode_id=np.concatenate([b.episode_id + o for b, o in zip(blocks, ep_offsets)]),
        target=np.concatenate([b.target for b in blocks]),
        history_start=np.concatenate([b.history_start + o for b, o in zip(blocks, offsets)]),
        policy_version=np.concatenate([b.policy_version for b in blocks]))


def load_history(root: str, run_ids: list[str], last_episodes: int | None = None,
                 exclude: frozenset[str] = frozenset()) -> History:
    """Whole histories in memory (small ones: tests, notebooks), in training order."""
    histories = Selection(expert_last=last_episodes).apply(index_runs(root, run_ids, exclude))
    reader = ShardReader(root)
    return concat([read_block(reader, h, list(h.episodes), StepTransforms(), k, len(h.episodes))
                   for k, h in enumerate(histories)])


# ---- samples and the streaming loader -----------------------------------------------------------

@dataclass(frozen=True)
class SampleSpec:
    """What one training sample is.
    kind: "step" (one frame stack and its action: BC), "episode" (a window of `length` steps
    inside one episode: DT) or "history" (a window of `length` steps across consecutive
    episodes of one learning history: AD)."""
    kind: str = "step"
    length: int = 1
    stack: int = 4
    max_timestep: int = 4096  # timestep ids are clipped to this (DT's timestep embedding)

    def __post_init__(self):
        if self.kind not in ("step", "episode", "history"):
            raise ValueError(f"sample kind {self.kind!r}; valid: step, episode, history")
        if self.length < 1 or (self.kind == "step" and self.length != 1):
            raise ValueError(f"length: {self.length} (step samples have length 1, windows >= 1)")


def make_batch(h: History, rows: np.ndarray, spec: SampleSpec, num_actions: int,
               rtg: np.ndarray | None = None) -> dict:
    """Numpy batch for window start rows (kind episode/history) or target rows (kind step).
    Windows never cross the boundary of their episode (episode) or history (history); steps
    past it are padding with mask False. The loss counts only where mask is True."""
    if spec.kind == "step":
        return {"obs": h.stacks(rows, spec.stack), "action": h.actions[rows], "row": rows}
    region_of = h.episode_start if spec.kind == "episode" else h.history_start
    idx = rows[:, None] + np.arange(spec.length)
    same = np.minimum(idx, len(h) - 1)
    valid = (idx < len(h)) & (region_of[same] == region_of[rows][:, None])
    idx = np.where(valid, same, rows[:, None])
    prev = idx - 1
    has_prev = valid & (prev >= region_of[idx])
    prev = np.maximum(prev, 0)
    step_in_episode = idx - h.episode_start[idx]
    batch = {
        "obs": h.stacks(idx, spec.stack),  # (B, L, 84, 84, k)
        "action": h.actions[idx],
        "prev_action": np.where(has_prev, h.actions[prev], num_actions),  # num_actions: none yet
        "prev_reward": np.where(has_prev, h.rewards[prev], 0.0).astype(np.float32),
        "new_episode": step_in_episode == 0,
        "timestep": np.minimum(step_in_episode, spec.max_timestep - 1),
        "mask": valid & h.target[idx],
        "row": idx,  # rows of the group the window came from (tests, debugging)
    }
    if rtg is not None:
        batch["rtg"] = rtg[idx]
    return batch


@dataclass
class Loader:
    """Streams batches from shards. Per epoch the selected episodes are cut into blocks of
    about `block_steps` rows of consecutive episodes; blocks are visited in random order,
    `blocks_in_memory` at a time, and every target row appears in exactly one sample per epoch
    (for windows: in about one window). History windows get the `length - 1` rows before a
    block as context-only rows, so a context never starts cold in the middle of a history."""
    root: str
    histories: list[HistoryIndex]
    spec: SampleSpec
    batch_size: int
    num_actions: int
    transforms: StepTransforms = StepTransforms()
    block_steps: int = 20_000
    blocks_in_memory: int = 2
    seed: int = 0
    drop_last: bool = False
    rank: int = 0  # data-parallel workers: each reads every `world`-th block of an epoch
    world: int = 1
    cycle: bool = False  # iterate epochs without end (callers cap the batches)
    prefetch: int = 1  # groups of blocks read ahead by the background thread
    epoch: int = 0
    _key_of: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.reader = ShardReader(self.root)
        for k, h in enumerate(self.histories):
            self._key_of[h.run_id] = k

    @property
    def target_rows(self) -> int:
        return sum(h.steps for h in self.histories)

    def blocks(self) -> list[tuple[int, list[EpisodeRef], int]]:
        """(history number, episodes to read, how many of them are targets) per block."""
        out = []
        context_rows = self.spec.length - 1 if self.spec.kind == "history" else 0
        for k, h in enumerate(self.histories):
            eps = list(h.episodes)
            i = 0
            while i < len(eps):
                j, rows = i, 0
                while j < len(eps) and (rows == 0 or rows + eps[j].steps <= self.block_steps):
                    rows += eps[j].steps
                    j += 1
                before, ctx = i, 0
                while before > 0 and ctx < context_rows:
                    before -= 1
                    ctx += eps[before].steps
                out.append((k, eps[before:j], j - i))
                i = j
        return out

    def _window_starts(self, h: History, rng) -> np.ndarray:
        region = h.episode_start if self.spec.kind == "episode" else h.history_start
        starts = []
        L = self.spec.length
        for r0 in np.unique(region):
            r1 = r0 + np.count_nonzero(region == r0)
            phase = int(rng.integers(L))
            s = np.arange(r0 - phase, r1, L)
            s = np.unique(np.clip(s, r0, max(r0, r1 - L)))
            starts.append(s)
        starts = np.concatenate(starts)
        has_target = np.array([h.target[s:s + L].any() for s in starts]) if len(starts) else starts
        return starts[has_target.astype(bool)]

    def _groups(self, rng):
        plan = self.blocks()
        order = rng.permutation(len(plan))
        # Fewer blocks than workers: they share blocks rather than some getting none.
        order = order[self.rank::self.world] if len(order) >= self.world else order[[self.rank % len(order)]]
        for g in range(0, len(order), self.blocks_in_memory):
            parts = [plan[i] for i in order[g:g + self.blocks_in_memory]]
            group = concat([read_block(self.reader, self.histories[k], eps, self.transforms,
                                       self._key_of[self.histories[k].run_id], targets)
                            for k, eps, targets in parts])
            if group.actions.max(initial=0) >= self.num_actions:
                runs = sorted({self.histories[k].run_id for k, _, _ in parts})
                raise shards.ShardError(
                    f"runs {runs} recorded action id {group.actions.max()} but the model has "
                    f"{self.num_actions} actions; does each run.json's protocol (full_action_space) "
                    "match how it was recorded?")
            yield group

    def _batches_of(self, h: History, rng):
        rtg = h.returns_to_go() if self.spec.kind == "episode" else None
        if self.spec.kind == "step":
            rows = rng.permutation(np.flatnonzero(h.target))
        else:
            rows = rng.permutation(self._window_starts(h, rng))
        for i in range(0, len(rows), self.batch_size):
            chosen = rows[i:i + self.batch_size]
            if self.drop_last and len(chosen) < self.batch_size:
                break
            yield make_batch(h, chosen, self.spec, self.num_actions, rtg)

    def __iter__(self):
        if not self.histories:
            raise ValueError("the loader has no episodes to read")
        if not self.cycle:
            yield from self._epoch()
            return
        while True:
            yield from self._epoch()

    def _epoch(self):
        """One epoch of numpy batches; the next blocks are read in a background thread."""
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        groups: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for group in self._groups(rng):
                    while not stop.is_set():
                        try:
                            groups.put(group, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                groups.put(None)
            except BaseException as err:  # surfaced in the consumer
                groups.put(err)

        thread = threading.Thread(target=produce, daemon=True, name="understudy-loader")
        thread.start()
        batch_rng = np.random.default_rng([self.seed, self.epoch, 7])
        try:
            while (group := groups.get()) is not None:
                if isinstance(group, BaseException):
                    raise group
                yield from self._batches_of(group, batch_rng)
        finally:
            stop.set()
            thread.join(timeout=5)
