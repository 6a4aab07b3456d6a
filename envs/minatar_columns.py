"""MinAtar Space Invaders with hidden paying columns: a MinAtar task family in which good play
depends on something only rewards reveal, across episodes, as Dark Room hides its goal (a
positive control of in-context RL, issue #28).

The game is MinAtar's own Space Invaders (the `minatar` package's Env, subclassed, its code not
copied), under the MinAtar family's protocol (sticky actions 0.1, difficulty ramping). A task is
a set of K = 3 paying screen columns out of 10 (C(10, 3) = 120 tasks). An alien killed by a
friendly bullet in a paying column pays +1; a kill elsewhere still happens (the alien is gone,
the wave clears as before) but pays 0. A friendly bullet only ever moves up its column, and its
column is the cannon's when it was fired, so the agent decides where it scores.

What the imitator sees is exactly MinAtar Space Invaders in the MinAtar family's shared
10x10x10 uint8 layout (envs/minatar.py): the task is in no pixel. Within one learning history
the task is fixed, so only the rewards of earlier episodes say which columns pay.

The teacher may see the task: `reveal_task=True` lights the shared channel REVEAL_CHANNEL
("prize": what scores when hit; Space Invaders leaves it empty) with 255 on every cell of the
paying columns. With it off that channel is zeros. `hide_task` zeroes it, losslessly, and is
the family's `newest_frame`, so a shard recorded from a revealing teacher keeps the blind frame.

Episodes are capped at EPISODE_CAP = 100 steps (the protocol's `episode_cap`, truncation; the
game may end earlier by its own termination). Why 100: Algorithm Distillation learns in-context
across episodes, so a context must hold several of them; Dark Room's 20-step episodes put ~5
episodes in a few-hundred-step context, and with 100 steps an AD context of ~500 steps spans
about 5 episodes here too (MinAtar's own 10,000-step clock would put less than one).

Tasks are split twice, each split frozen: version 1, 100 train and 20 held-out (HELDOUT_TASKS_V1,
splits "train" and "heldout"); version 2, 70 train and 50 held-out (HELDOUT_TASKS_V2, splits
"train_v2" and "heldout_v2"), for designs that need 50 held-out tasks.
Each task's reference returns (a scripted task-aware policy; the same policy aimed at a wrong
task, and at every column; uniform random play) were measured by `python -m understudy.envs.minatar_columns
--reference` into envs/data/minatar_columns_reference.csv; `optimum(task)` is the scripted one.
Pure numpy and gymnasium: no Ray here.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import itertools
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from understudy.envs import minatar

GAME = "MinAtar/SpaceInvaders-columns"
COLUMNS = minatar.GRID  # screen columns
K = 3  # paying columns per task
NUM_TASKS = 120  # C(10, 3)
NUM_ACTIONS = minatar.NUM_ACTIONS
NOOP, LEFT, RIGHT, FIRE = (minatar.ACTION_MEANINGS.index(a) for a in ("NOOP", "LEFT", "RIGHT", "FIRE"))
# See the module docstring: ~5 episodes in an AD context of ~500 steps, as Dark Room has.
EPISODE_CAP = 100
REVEAL_CHANNEL = minatar.CHANNELS.index("prize")
_SELF, _ENEMY, _ENEMY_SHOT = (minatar.CHANNELS.index(c) for c in ("self", "enemy", "enemy_shot"))

# Task split, version 1. The 20 held-out tasks were drawn once as
# sorted(np.random.default_rng(28).permutation(120)[:20]) over TASKS (itertools.combinations
# order) and are frozen here as literals, so the split never moves with a numpy version; every
# column pays in at least two of them. Any change to the split must bump TASK_SPLIT_VERSION.
TASK_SPLIT_VERSION = 1
HELDOUT_TASKS_V1 = ((0, 1, 4), (0, 1, 8), (0, 3, 5), (0, 5, 6), (0, 5, 8), (0, 6, 8), (0, 6, 9),
                    (1, 2, 3), (1, 2, 6), (1, 3, 9), (1, 5, 8), (2, 3, 6), (2, 3, 7), (2, 5, 6),
                    (3, 5, 7), (3, 6, 7), (4, 5, 8), (5, 8, 9), (6, 7, 8), (6, 8, 9))
# Task split, version 2: 50 held-out tasks for designs that need at least 50 (issue #28's Rung 1),
# drawn once as sorted(np.random.default_rng(29).permutation(120)[:50]) over TASKS and frozen as
# literals; every column pays in at least 11 of them. Splits "train_v2" (70) and "heldout_v2" (50).
HELDOUT_TASKS_V2 = ((0, 1, 2), (0, 1, 8), (0, 1, 9), (0, 2, 3), (0, 2, 4), (0, 3, 4), (0, 3, 5), (0, 3, 8),
                    (0, 3, 9), (0, 4, 5), (0, 4, 8), (0, 4, 9), (0, 5, 7), (0, 5, 8), (0, 5, 9), (0, 6, 7),
                    (0, 7, 8), (1, 2, 4), (1, 2, 5), (1, 2, 6), (1, 3, 4), (1, 3, 6), (1, 3, 8), (1, 4, 8),
                    (1, 5, 8), (1, 5, 9), (1, 6, 8), (2, 3, 5), (2, 3, 7), (2, 3, 9), (2, 4, 5), (2, 4, 6),
                    (2, 4, 7), (2, 4, 8), (2, 5, 8), (2, 6, 7), (2, 6, 8), (2, 7, 8), (3, 6, 8), (3, 6, 9),
                    (3, 7, 8), (4, 5, 6), (4, 5, 7), (4, 6, 7), (4, 7, 9), (5, 7, 8), (5, 7, 9), (5, 8, 9),
                    (6, 7, 8), (6, 8, 9))
HELDOUT_BY_SPLIT = {"train": HELDOUT_TASKS_V1, "heldout": HELDOUT_TASKS_V1,
                    "train_v2": HELDOUT_TASKS_V2, "heldout_v2": HELDOUT_TASKS_V2}
TASK_SPLITS = ("train", "heldout", "train_v2", "heldout_v2", "all")
TASKS = tuple(itertools.combinations(range(COLUMNS), K))  # lexicographic: the order of every split

REFERENCE_CSV = Path(__file__).with_name("data") / "minatar_columns_reference.csv"
REFERENCE_SEED = 2028
REFERENCE_EPISODES = 100


@dataclass(frozen=True)
class ColumnsProtocol:
    """The family's environment settings (as logged); the reference CSV holds for these."""
    episode_cap: int = EPISODE_CAP  # steps; the episode is truncated there
    paying_columns: int = K
    sticky_action_prob: float = 0.1
    difficulty_ramping: bool = True
    reward: str = "+1 per alien killed in a paying column; kills elsewhere pay 0"
    observation: str = ("MinAtar Space Invaders in the shared 10x10x10 uint8 channels; task invisible "
                        "(teacher's reveal_task: channel 'prize' = 255 on the paying columns)")
    task_split_version: int = TASK_SPLIT_VERSION

    def as_params(self) -> dict:
        return {f"minatar_columns.{k}": v for k, v in asdict(self).items()} | {
            "minatar_columns.channels": ",".join(minatar.CHANNELS)}


PROTOCOL = ColumnsProtocol()


# ---- names and tasks -------------------------------------------------------------------------------

def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def canonical_game(name: str) -> str:
    """'MinAtar/SpaceInvaders-columns', 'minatar/space_invaders_columns' -> GAME; else ValueError."""
    if _key(name) == _key(GAME):
        return GAME
    raise ValueError(f"{name!r} is not {GAME}; valid: {GAME}")


def task_goals(split: str) -> np.ndarray:
    """(N, 3) int64 paying columns (ascending) of a split's tasks, in TASKS order: "train" (100)
    and "heldout" (20) of version 1, "train_v2" (70) and "heldout_v2" (50) of version 2, or
    "all" (120). The same result on every call."""
    if split == "all":
        chosen = TASKS
    elif split in HELDOUT_BY_SPLIT:
        held = set(HELDOUT_BY_SPLIT[split])
        chosen = [t for t in TASKS if (t in held) == split.startswith("heldout")]
    else:
        raise ValueError(f"split: {split!r} is not a {GAME} task split; valid: {', '.join(TASK_SPLITS)}")
    return np.array(chosen, np.int64).reshape(-1, K)


def check_tasks(tasks) -> np.ndarray:
    """(N, 3) distinct columns in 0..9 each -> int64, each row sorted; else ValueError."""
    tasks = np.asarray(tasks)
    if tasks.ndim != 2 or tasks.shape[1] != K:
        raise ValueError(f"tasks: shape {tasks.shape} is not (N, {K}) paying columns")
    if tasks.size and (tasks.min() < 0 or tasks.max() >= COLUMNS):
        raise ValueError(f"tasks: every column must be in 0..{COLUMNS - 1}, got {tasks.tolist()}")
    tasks = np.sort(tasks.astype(np.int64), axis=1)
    if tasks.size and (np.diff(tasks, axis=1) == 0).any():
        raise ValueError(f"tasks: each task's {K} columns must differ, got {tasks.tolist()}")
    return tasks


def paying_mask(tasks) -> np.ndarray:
    """(N, 3) tasks -> (N, 10) bool, True on the paying columns."""
    tasks = check_tasks(tasks)
    mask = np.zeros((len(tasks), COLUMNS), bool)
    np.put_along_axis(mask, tasks, True, axis=1)
    return mask


def hide_task(obs) -> np.ndarray:
    """A copy of observations (any leading shape, channels last) with the reveal channel zeroed:
    what an imitator may see (the family's `newest_frame`). Lossless: the game never lights it."""
    out = np.array(obs, copy=True)
    out[..., REVEAL_CHANNEL] = 0
    return out


# ---- the game ---------------------------------------------------------------------------------------

def _roll(a, shift, axis=None):
    """np.roll, for a 2-D array along axis 0 or 1 by slicing (5x faster on a 10x10 grid); any
    other call is np.roll's own."""
    if axis not in (0, 1) or np.ndim(a) != 2:
        return np.roll(a, shift, axis)
    s = int(shift) % a.shape[axis]
    if s == 0:
        return a.copy()
    if axis == 0:
        return np.concatenate((a[-s:], a[:-s]), axis=0)
    return np.concatenate((a[:, -s:], a[:, :-s]), axis=1)


@functools.cache
def _game_class():
    """PayingColumnsInvaders, defined on first use (importing minatar costs seconds)."""
    import types

    from minatar.environments import space_invaders

    # The game's own act(), its very code object, run with a numpy whose roll is _roll: np.roll
    # was 40% of a step. Same results (tests/test_minatar_columns.py plays it against MinAtar's
    # Space Invaders frame by frame); minatar's module, and so the MinAtar family's game, is
    # untouched.
    fast_numpy = types.ModuleType("numpy_with_fast_roll")
    fast_numpy.__dict__.update(np.__dict__)
    fast_numpy.roll = _roll
    game_act = space_invaders.Env.act
    game_act = types.FunctionType(game_act.__code__, {**vars(space_invaders), "np": fast_numpy},
                                  game_act.__name__, game_act.__defaults__, game_act.__closure__)

    class PayingColumnsInvaders(space_invaders.Env):
        """MinAtar's Space Invaders whose act() returns the kills in the paying columns only.

        The game's own act() is run unchanged (but for a faster np.roll). The kills' columns
        are read off its friendly bullets: act() fires into the bullet map in place, then replaces it with a rolled copy
        (np.roll) in which a bullet that hits an alien is erased. So the map held before act(),
        rows 1..9 (row 0 leaves the screen; row 9 is empty but for this step's shot), are the
        bullets that stay on screen this step, column by column, and those missing from the new
        map, per column, are the kills. Checked against the game's own count on every kill
        (RuntimeError on a mismatch: a changed minatar)."""

        def __init__(self, paying=(), ramping: bool = True):
            self.paying = np.asarray(paying, np.int64)
            self.kills = 0  # all kills of the last step, paid or not
            super().__init__(ramping=ramping)

        def act(self, a):
            bullets = self.f_bullet_map
            kills, terminal = game_act(self, a)
            self.kills = int(kills)
            if not kills:
                return 0, terminal
            by_column = bullets[1:].sum(axis=0) - self.f_bullet_map.sum(axis=0)
            if by_column.sum() != kills or by_column.min() < 0:
                raise RuntimeError(f"{GAME}: kills by column {by_column.tolist()} differ from the game's "
                                   f"{kills} (a changed minatar version?)")
            return int(by_column[self.paying].sum()), terminal

    return PayingColumnsInvaders


def paying_columns_invaders(paying=(), ramping: bool = True):
    """One game (minatar's space_invaders.Env subclassed) paying only in columns `paying`."""
    return _game_class()(paying, ramping=ramping)


def _unify_matrix() -> np.ndarray:
    """(Space Invaders' channels, shared channels) float32: its intensity where a channel maps."""
    index, value = minatar._unifier("SpaceInvaders")
    matrix = np.zeros((len(index), len(minatar.CHANNELS)), np.float32)
    matrix[np.arange(len(index)), index] = value
    return matrix


class PayingColumnsVectorEnv(minatar.MinAtarVectorEnv):
    """One copy per task of `tasks` ((N, 3) paying columns), stepped together by MinAtar's vector
    env (its reset, step and autoreset): `reset(seed)` -> (obs, info), `step(actions)` -> (obs,
    rewards, terminated, truncated, info); obs (N, 10, 10, 10) uint8 in MinAtar's shared
    channels, rewards the raw paid kills. Copy i is seeded seed + i, as MinAtar's are. Episodes
    are truncated at `episode_cap` (or an earlier `max_episode_steps`). An ended episode restarts
    in the same step (`same_step_reset`, the default, as Dark Room's: the step returns the new
    first observation), or on the next step (NEXT_STEP, as the ALE and MinAtar runners expect:
    that step's action is ignored). info: env_id, lives (zeros), kills (every kill of the step,
    paid or not)."""

    def __init__(self, tasks, *, reveal_task: bool = False, same_step_reset: bool = True,
                 max_episode_steps: int | None = None, episode_cap: int = EPISODE_CAP,
                 sticky_action_prob: float = 0.1, difficulty_ramping: bool = True):
        from minatar import Environment

        self.tasks = check_tasks(tasks)
        self.num_envs = self.batch_size = len(self.tasks)
        self.envs = []
        for task in self.tasks:
            env = Environment("space_invaders", sticky_action_prob=sticky_action_prob,
                              difficulty_ramping=difficulty_ramping)
            env.env = paying_columns_invaders(task, ramping=difficulty_ramping)
            env.env.random = env.random  # as Environment.__init__ -> seed() leaves them shared
            self.envs.append(env)
        self.games = [env.env for env in self.envs]
        self.game = GAME
        self.max_episode_steps = min(max_episode_steps or episode_cap, episode_cap)
        self.same_step_reset = same_step_reset
        self.reveal_task = reveal_task
        # (N, 10 rows, 10 columns): 255 down the whole of each paying column.
        self._reveal = np.repeat(np.where(paying_mask(self.tasks), 255, 0).astype(np.uint8)[:, None, :],
                                 minatar.GRID, axis=1)
        self._matrix = _unify_matrix()
        self.single_observation_space = gym.spaces.Box(0, 255, minatar.OBS_SHAPE, np.uint8)
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._steps = np.zeros(self.num_envs, np.int64)
        self._ended = np.zeros(self.num_envs, bool)
        self._env_ids = np.arange(self.num_envs)

    def _obs(self) -> np.ndarray:
        # The game's own state() (bool, 6 channels) into the shared layout as one float32 matmul:
        # equal to minatar.unify (no two Space Invaders channels that can be lit together share
        # a shared channel: alien_left and alien_right never are), at a fraction of its cost.
        states = np.stack([game.state() for game in self.games]).astype(np.float32)
        obs = (states @ self._matrix).astype(np.uint8)
        if self.reveal_task:
            obs[..., REVEAL_CHANNEL] = self._reveal
        return obs

    def _info(self) -> dict:
        kills = np.array([game.kills for game in self.games], np.int64)
        return {"env_id": self._env_ids, "lives": np.zeros(self.num_envs, np.int64), "kills": kills}

    def _clear_kills(self) -> None:
        """A game's `kills` is set by its act(): a copy that does not act this step (reset, or its
        NEXT_STEP restart) killed nothing."""
        for game in self.games:
            game.kills = 0

    def reset(self, *, seed=None, options=None):
        self._clear_kills()
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        actions = np.asarray(actions, np.int64)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions: shape {actions.shape} is not ({self.num_envs},)")
        self._clear_kills()
        return super().step(actions)


def make_vector_env(game: str = GAME, num_envs: int | None = None, *, goals=None, same_step_reset: bool = True,
                    max_episode_steps: int | None = None, reveal_task: bool = False,
                    **options) -> PayingColumnsVectorEnv:
    """The family's factory: `goals` (N, 3) tasks, one copy each (default: `num_envs` copies of
    the training tasks in turn). `reveal_task` shows the teacher the paying columns."""
    canonical_game(game)
    if goals is None:
        if num_envs is None:
            raise ValueError("give num_envs or goals")
        train = task_goals("train")
        goals = train[np.arange(num_envs) % len(train)]
    elif num_envs is not None and num_envs != len(goals):
        raise ValueError(f"num_envs {num_envs} differs from the {len(goals)} goals given")
    return PayingColumnsVectorEnv(goals, reveal_task=reveal_task, same_step_reset=same_step_reset,
                                  max_episode_steps=max_episode_steps, **options)


# ---- the scripted task-aware policy -----------------------------------------------------------------

def scripted_actions(obs, paying) -> np.ndarray:
    """The reference policy, vectorised: obs (N, 10, 10, 10) in the shared layout (the reveal
    channel is not read), `paying` (N, 10) bool, the columns it believes pay. Per copy:
    1. target: the nearest paying column with an alien above the cannon row (ties: the left
       one); with none, the nearest paying column (the aliens sweep across the screen);
    2. fire when the cannon is under a paying column with an alien in it, else move towards the
       target (left/right), or stay;
    3. dodge: never end the step in a column whose enemy bullet is on row 8 (it reaches the
       cannon's row 9 next step), and prefer one with none on rows 7-8 (sticky actions may repeat
       the last move): if the intended move is unsafe take the first safe of stay, left, right.
    """
    obs = np.asarray(obs)
    paying = np.asarray(paying, bool)
    n = len(obs)
    rows = np.arange(n)
    cols = np.arange(COLUMNS)
    pos = obs[:, 9, :, _SELF].argmax(axis=1)
    aliens = obs[:, :9, :, _ENEMY].any(axis=1)
    targets = aliens & paying
    aim = np.where(targets.any(axis=1)[:, None], targets, paying)
    distance = np.where(aim, np.abs(cols[None, :] - pos[:, None]), 2 * COLUMNS)
    target = distance.argmin(axis=1)
    action = np.where(target < pos, LEFT, np.where(target > pos, RIGHT, NOOP))
    action[targets[rows, pos]] = FIRE
    # Dodging: where each candidate move would end, and how dangerous that column is.
    shots = obs[:, 7:9, :, _ENEMY_SHOT] > 0
    deadly, threat = shots[:, 1], shots.any(axis=1)  # (N, 10): a bullet on row 8; on rows 7-8
    moves = np.array([NOOP, LEFT, RIGHT])
    lands = np.clip(pos[:, None] + np.array([0, -1, 1])[None, :], 0, COLUMNS - 1)  # (N, 3)
    intended = np.clip(pos + (action == RIGHT) - (action == LEFT), 0, COLUMNS - 1)
    safe = ~threat[rows[:, None], lands]
    alive = ~deadly[rows[:, None], lands]
    fallback = np.where(safe.any(axis=1), moves[safe.argmax(axis=1)],
                        np.where(alive.any(axis=1), moves[alive.argmax(axis=1)], action))
    keep = ~threat[rows, intended] | (~safe.any(axis=1) & ~deadly[rows, intended])
    return np.where(keep, action, fallback).astype(np.int64)


# ---- reference returns --------------------------------------------------------------------------------

def play_returns(tasks, episodes: int, seed: int, policy: str, aim=None) -> dict:
    """Per task, the first `episodes` episodes of one same-step-reset copy playing it under the
    protocol: {"returns", "kills", "lengths"}, each (N, episodes). `policy`: "scripted" (aimed at
    the columns `aim`, (N, 10) bool, default the task's own) or "random" (uniform over the 6
    actions, seeded)."""
    tasks = check_tasks(tasks)
    env = PayingColumnsVectorEnv(tasks)
    n = len(tasks)
    aim_mask = paying_mask(tasks) if aim is None else np.asarray(aim, bool)
    rng = np.random.default_rng([seed, 1])
    obs, _ = env.reset(seed=seed)
    returns, kills, lengths = (np.zeros((n, episodes)) for _ in range(3))
    ret, kil, length = np.zeros(n), np.zeros(n), np.zeros(n, np.int64)
    done_count = np.zeros(n, np.int64)
    while done_count.min() < episodes:
        if policy == "scripted":
            actions = scripted_actions(obs, aim_mask)
        elif policy == "random":
            actions = rng.integers(NUM_ACTIONS, size=n)
        else:
            raise ValueError(f"policy: {policy!r}; valid: scripted, random")
        obs, reward, terminated, truncated, info = env.step(actions)
        ret += reward
        kil += info["kills"]
        length += 1
        for i in np.flatnonzero(terminated | truncated):
            if done_count[i] < episodes:
                returns[i, done_count[i]], kills[i, done_count[i]], lengths[i, done_count[i]] = (
                    ret[i], kil[i], length[i])
            done_count[i] += 1
            ret[i] = kil[i] = length[i] = 0
    return {"returns": returns, "kills": kills, "lengths": lengths}


def wrong_tasks(tasks, seed: int) -> np.ndarray:
    """For each task, another task drawn uniformly from the other 119 (seeded): a task-blind
    player's guess."""
    tasks = check_tasks(tasks)
    rng = np.random.default_rng([seed, 2])
    index = {t: i for i, t in enumerate(TASKS)}
    out = []
    for task in tasks:
        j = int(rng.integers(NUM_TASKS - 1))
        j += j >= index[tuple(int(c) for c in task)]
        out.append(TASKS[j])
    return np.array(out, np.int64)


FIELDS = ("task", "c0", "c1", "c2", "split", "episodes", "scripted_return", "scripted_return_std",
          "scripted_kills", "scripted_length", "wrong_task_return", "wrong_task_return_std",
          "wrong_task_kills", "every_column_return", "every_column_kills",
          "random_return", "random_return_std", "random_kills", "random_length",
          "episode_cap", "sticky_action_prob", "seed")


def task_name(task) -> str:
    return "-".join(str(int(c)) for c in task)


def measure_reference(episodes: int = REFERENCE_EPISODES, seed: int = REFERENCE_SEED, tasks=None) -> list[dict]:
    """Every task's mean returns over `episodes` seeded episodes (one copy per task, same-step
    reset, env seed `seed` + task index) of: the scripted policy aimed at the task ("scripted": the
    optimum), at a wrong task (wrong_tasks: what a player blind to the task gets when it commits
    to a guess), at every column ("every_column": a task-blind player that shoots every alien it
    can), and uniform random play. The CSV's rows."""
    tasks = task_goals("all") if tasks is None else check_tasks(tasks)
    held = set(HELDOUT_TASKS_V1)
    right = play_returns(tasks, episodes, seed, "scripted")
    wrong = play_returns(tasks, episodes, seed, "scripted", aim=paying_mask(wrong_tasks(tasks, seed)))
    blind = play_returns(tasks, episodes, seed, "scripted", aim=np.ones((len(tasks), COLUMNS), bool))
    rand = play_returns(tasks, episodes, seed, "random")
    rows = []
    for i, task in enumerate(tasks):
        rows.append({
            "task": task_name(task), "c0": int(task[0]), "c1": int(task[1]), "c2": int(task[2]),
            "split": "heldout" if tuple(int(c) for c in task) in held else "train", "episodes": episodes,
            "scripted_return": right["returns"][i].mean(), "scripted_return_std": right["returns"][i].std(),
            "scripted_kills": right["kills"][i].mean(), "scripted_length": right["lengths"][i].mean(),
            "wrong_task_return": wrong["returns"][i].mean(), "wrong_task_return_std": wrong["returns"][i].std(),
            "wrong_task_kills": wrong["kills"][i].mean(),
            "every_column_return": blind["returns"][i].mean(), "every_column_kills": blind["kills"][i].mean(),
            "random_return": rand["returns"][i].mean(), "random_return_std": rand["returns"][i].std(),
            "random_kills": rand["kills"][i].mean(), "random_length": rand["lengths"][i].mean(),
            "episode_cap": PROTOCOL.episode_cap, "sticky_action_prob": PROTOCOL.sticky_action_prob, "seed": seed})
    return rows


def write_reference(rows: list[dict], path: Path = REFERENCE_CSV) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


@functools.cache
def _reference_table(path: str = str(REFERENCE_CSV)) -> dict[str, dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no reference returns; make them with "
                                "`python -m understudy.envs.minatar_columns --reference`")
    with open(path, newline="") as f:
        rows = {row["task"]: row for row in csv.DictReader(f)}
    for row in rows.values():
        if int(row["episode_cap"]) != PROTOCOL.episode_cap or \
                float(row["sticky_action_prob"]) != PROTOCOL.sticky_action_prob:
            raise RuntimeError(f"{path}: measured under another protocol (episode_cap {row['episode_cap']}, "
                               f"sticky {row['sticky_action_prob']}); measure it again with --reference")
    return rows


def reference_returns(task) -> tuple[float, float]:
    """(uniform random, scripted task-aware) mean return of one task, as measured in the CSV."""
    row = _reference_table()[task_name(check_tasks([task])[0])]
    return float(row["random_return"]), float(row["scripted_return"])


def optimum(task) -> float:
    """The task's reference for normalising returns: the scripted task-aware policy's measured
    mean return (scripted_actions; a real measurement, not a bound: a learner may exceed it)."""
    return reference_returns(task)[1]


def reference_digest() -> str:
    return hashlib.sha256(REFERENCE_CSV.read_bytes()).hexdigest()[:16]


def protocol() -> dict:
    return PROTOCOL.as_params()


# ---- CLI ----------------------------------------------------------------------------------------------

def _summary(rows: list[dict]) -> str:
    def col(name, split=None):
        return np.array([float(r[name]) for r in rows if split is None or r["split"] == split])

    lines = []
    for split in (None, "train", "heldout"):
        s, w, r = col("scripted_return", split), col("wrong_task_return", split), col("random_return", split)
        b = col("every_column_return", split)
        lines.append(f"{split or 'all':8s} tasks {len(s):3d}: scripted {s.mean():.2f} "
                     f"(tasks {s.min():.2f}..{s.max():.2f}, "
                     f"sd {s.std():.2f}), wrong task {w.mean():.2f} (sd {w.std():.2f}), every column {b.mean():.2f} "
                     f"(sd {b.std():.2f}), random {r.mean():.2f} (sd {r.std():.2f}); scripted/random "
                     f"{s.mean() / max(r.mean(), 1e-9):.1f}x, right-wrong {s.mean() - w.mean():.2f}")
    k, rk = col("scripted_kills"), col("random_kills")
    lines.append(f"kills per episode (paid or not): scripted {k.mean():.2f}, every column "
                 f"{col('every_column_kills').mean():.2f}, random {rk.mean():.2f}; "
                 f"paid fraction scripted {col('scripted_return').sum() / k.sum():.2f}, "
                 f"random {col('random_return').sum() / rk.sum():.2f}; episode length scripted "
                 f"{col('scripted_length').mean():.1f}, random {col('random_length').mean():.1f} (cap {EPISODE_CAP})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m understudy.envs.minatar_columns",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--reference", action="store_true", help="measure every task's reference returns into the CSV")
    parser.add_argument("--episodes", type=int, default=REFERENCE_EPISODES)
    parser.add_argument("--seed", type=int, default=REFERENCE_SEED)
    parser.add_argument("--out", type=Path, default=REFERENCE_CSV)
    args = parser.parse_args(argv)
    if not args.reference:
        parser.print_help()
        return 2
    start = time.perf_counter()
    rows = measure_reference(args.episodes, args.seed)
    write_reference(rows, args.out)
    print(_summary(rows))
    print(f"{len(rows)} tasks x {args.episodes} episodes x 4 players in {time.perf_counter() - start:.0f}s "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    # `python -m` runs this file a second time as __main__ (the package imported it already:
    # runpy's warning); run the package's copy so there is one module state.
    from understudy.envs.minatar_columns import main as _main

    sys.exit(_main())
