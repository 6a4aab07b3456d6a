"""Dark Room (Laskin et al. 2022, "In-context Reinforcement Learning with Algorithm
Distillation"): a 9x9 grid with an invisible goal. Pure Python and numpy (plus a gymnasium
wrapper for users): no Ray, no torch.

The agent starts in the centre cell (4, 4) and has 5 actions: 0 stay, 1 up, 2 down, 3 left,
4 right (moves into a wall leave it where it is). An episode is exactly EPISODE_STEPS steps and
only ever ends by truncation. Each step on which the agent is on the goal after moving earns
reward 1. The observation is the agent's position (x, y) alone: x is the column, y the row,
"up" decreases y. The goal is fixed per learning history, so an agent has to find it by
exploring, and an imitator has to infer it from the history in its context.

So that Dark Room histories fit the Atari shard schema unchanged (one 84x84 uint8 frame per
step), `frame_of` draws the position as a 9x9-pixel block on an 84x84 frame; `position_of` and
`cell_index_of` read it back.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

GRID = 9
EPISODE_STEPS = 20
NUM_ACTIONS = 5
START = (4, 4)
ACTION_NAMES = ("stay", "up", "down", "left", "right")
# (dx, dy) per action; "up" is towards row 0.
ACTION_DELTAS = np.array([(0, 0), (0, -1), (0, 1), (-1, 0), (1, 0)], np.int64)

FRAME_SIZE = 84
CELL_PIXELS = 9  # 9 cells x 9 pixels = 81 of the 84 rows/cols; the last 3 stay dark

# Goal splits, version 1. The 16 held-out cells were drawn once as
# np.random.default_rng(2022).permutation(81)[:16] (cell index = y * 9 + x) and are frozen here
# as literals, so the split never moves with a numpy version. Their distances from the start
# span 1..8. Any change to the split must bump GOAL_SPLIT_VERSION.
GOAL_SPLIT_VERSION = 1
HELDOUT_GOALS_V1 = ((0, 0), (6, 0), (7, 0), (2, 1), (5, 1), (3, 2), (7, 2), (4, 3),
                    (3, 4), (6, 4), (7, 4), (7, 5), (2, 6), (7, 6), (5, 7), (4, 8))
GOAL_SPLITS = ("train", "heldout", "all")


def darkroom_goals(split: str) -> np.ndarray:
    """(N, 2) int64 goal cells (x, y) of a split, in row-major cell order: "train" (65 cells),
    "heldout" (16) or "all" (81). The same result on every call."""
    cells = [(x, y) for y in range(GRID) for x in range(GRID)]  # row-major: index y * 9 + x
    held = set(HELDOUT_GOALS_V1)
    if split == "all":
        chosen = cells
    elif split == "train":
        chosen = [c for c in cells if c not in held]
    elif split == "heldout":
        chosen = [c for c in cells if c in held]
    else:
        raise ValueError(f"split: {split!r} is not a Dark Room goal split; valid: {', '.join(GOAL_SPLITS)}")
    return np.array(chosen, np.int64).reshape(-1, 2)


def optimal_return(goal) -> float:
    """The best return any policy can get for `goal`: one cell per step, rewarded on every step
    that ends on the goal, so a goal d >= 1 moves away is first reached on step d and earns on
    steps d..EPISODE_STEPS (EPISODE_STEPS - d + 1); the start cell itself earns on every step."""
    x, y = (int(v) for v in goal)
    distance = abs(x - START[0]) + abs(y - START[1])
    if distance == 0:
        return float(EPISODE_STEPS)
    return float(max(0, EPISODE_STEPS - distance + 1))


def check_goals(goals) -> np.ndarray:
    goals = np.asarray(goals)
    if goals.ndim != 2 or goals.shape[1] != 2:
        raise ValueError(f"goals: shape {goals.shape} is not (N, 2) cells (x, y)")
    if goals.size and (goals.min() < 0 or goals.max() >= GRID):
        raise ValueError(f"goals: every coordinate must be in 0..{GRID - 1}, got {goals.tolist()}")
    return goals.astype(np.int64)


class DarkRoomVectorEnv:
    """N independent rooms stepped at once, one goal each. Every episode has the same length,
    so the rooms stay in lock step: reset() all, then exactly EPISODE_STEPS step() calls."""

    def __init__(self, goals: np.ndarray):
        self.goals = check_goals(goals)
        self.num_envs = len(self.goals)
        self.positions = np.tile(np.array(START, np.int64), (self.num_envs, 1))
        self.t = None  # steps taken in the current episode; None until reset()

    def reset(self) -> np.ndarray:
        self.positions = np.tile(np.array(START, np.int64), (self.num_envs, 1))
        self.t = 0
        return self.positions.copy()

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(positions (N, 2), rewards (N,) float32, terminated (N,), truncated (N,))."""
        if self.t is None or self.t >= EPISODE_STEPS:
            raise RuntimeError("step() called without an open episode: call reset() first "
                               f"(episodes are {EPISODE_STEPS} steps)")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions: shape {actions.shape} is not ({self.num_envs},)")
        if actions.min(initial=0) < 0 or actions.max(initial=0) >= NUM_ACTIONS:
            raise ValueError(f"actions: values must be in 0..{NUM_ACTIONS - 1}, got {actions.tolist()}")
        self.positions = np.clip(self.positions + ACTION_DELTAS[actions], 0, GRID - 1)
        self.t += 1
        rewards = np.all(self.positions == self.goals, axis=1).astype(np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.full(self.num_envs, self.t == EPISODE_STEPS)
        return self.positions.copy(), rewards, terminated, truncated


class DarkRoomEnv(gym.Env):
    """One room as a gymnasium env, for users; learners here use DarkRoomVectorEnv.
    The goal can be changed per episode with reset(options={"goal": (x, y)})."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, goal=(0, 0), render_mode: str | None = None):
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gym.spaces.MultiDiscrete([GRID, GRID])
        self.render_mode = render_mode
        self._room = DarkRoomVectorEnv(np.asarray([goal]))

    @property
    def goal(self) -> tuple[int, int]:
        return tuple(int(v) for v in self._room.goals[0])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)  # the dynamics are deterministic; seeds the spaces' samplers
        if options and "goal" in options:
            self._room = DarkRoomVectorEnv(np.asarray([options["goal"]]))
        return self._room.reset()[0], {"goal": self.goal}

    def step(self, action):
        pos, reward, terminated, truncated = self._room.step(np.asarray([int(action)]))
        return pos[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self):
        frame = frame_of(self._room.positions)[0]
        return np.repeat(frame[:, :, None], 3, axis=2)


# ---- positions as 84x84 frames ------------------------------------------------------------------

def _cell_frames() -> np.ndarray:
    frames = np.zeros((GRID * GRID, FRAME_SIZE, FRAME_SIZE), np.uint8)
    for y in range(GRID):
        for x in range(GRID):
            frames[y * GRID + x, CELL_PIXELS * y:CELL_PIXELS * (y + 1),
                   CELL_PIXELS * x:CELL_PIXELS * (x + 1)] = 255
    return frames


CELL_FRAMES = _cell_frames()  # (81, 84, 84): the frame of each cell index, built once
CELL_FRAMES.flags.writeable = False


def cell_index(positions) -> np.ndarray:
    """(N, 2) positions (x, y) -> (N,) row-major cell indices y * 9 + x."""
    positions = np.asarray(positions, np.int64)
    return positions[..., 1] * GRID + positions[..., 0]


def frame_of(positions) -> np.ndarray:
    """(N, 2) positions -> (N, 84, 84) uint8: cell (x, y) lights rows 9y..9y+8, cols 9x..9x+8
    with 255; everything else is 0."""
    return CELL_FRAMES[cell_index(positions)]


def cell_index_of(frames) -> np.ndarray:
    """(N, 84, 84) frames from frame_of -> (N,) cell indices, read off the 81 block centres."""
    frames = np.asarray(frames)
    centres = frames[:, CELL_PIXELS // 2:CELL_PIXELS * GRID:CELL_PIXELS,
                     CELL_PIXELS // 2:CELL_PIXELS * GRID:CELL_PIXELS].reshape(len(frames), -1)
    lit = centres > 127
    if not np.all(lit.sum(axis=1) == 1):
        bad = np.flatnonzero(lit.sum(axis=1) != 1)[:5].tolist()
        raise ValueError(f"frames: rows {bad} do not show exactly one lit Dark Room cell")
    return lit.argmax(axis=1)


def position_of(frames) -> np.ndarray:
    """(N, 84, 84) frames from frame_of -> (N, 2) positions (x, y)."""
    index = cell_index_of(frames)
    return np.stack([index % GRID, index // GRID], axis=1)


def protocol() -> dict:
    """What a Dark Room history's run.json records about the env, so a result can be traced."""
    return {"env": "DarkRoom", "grid": GRID, "start": list(START), "episode_steps": EPISODE_STEPS,
            "num_actions": NUM_ACTIONS, "actions": list(ACTION_NAMES),
            "reward": "1 on each step that ends on the goal cell",
            "termination": f"none; truncated after {EPISODE_STEPS} steps",
            "observation": "agent position (x, y) only; goal invisible",
            "frame": "84x84 uint8, cell (x, y) lit 255 at rows 9y..9y+8, cols 9x..9x+8",
            "goal_split_version": GOAL_SPLIT_VERSION}


class DarkRoomFrames:
    """DarkRoomVectorEnv as the players in platform.players see an Atari vector env: frames
    (N, 84, 84, 1) as observations, and the next episode starting in the same step the last
    one ends (rooms run in lock step, so all of them at once)."""

    def __init__(self, goals):
        self.env = DarkRoomVectorEnv(goals)
        self.num_envs = self.env.num_envs

    def reset(self, seed=None):
        return frame_of(self.env.reset())[..., None], {}

    def step(self, actions):
        positions, rewards, terminated, truncated = self.env.step(actions)
        if (terminated | truncated).all():
            positions = self.env.reset()
        return frame_of(positions)[..., None], rewards, terminated, truncated, {}

    def close(self):
        pass
