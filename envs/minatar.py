"""MinAtar (Young & Tian 2019, the `minatar` package): five miniature Atari games on 10x10
grids, with sticky actions (0.1) and difficulty ramping as the authors' protocol has them.

One observation space for all five games, so one model can play a game it never saw. Each
game's own channels (4 to 10, with different meanings) are mapped by the role they play into
`CHANNELS`, the same ten for every game; a channel a game does not have stays empty. Where a
game encodes a quantity in several boolean channels (Freeway's five car speeds, Space
Invaders' alien direction) the shared channel carries it as an intensity, so nothing the
game shows is lost. Observations are uint8 (0..255), channels last, (10, 10, 10).
docs/minatar.md says why this unification and not another.

All five games share the 6 actions (no-op, left, up, right, down, fire), so actions need no
unification. Pure numpy and gymnasium: no Ray here.
"""
from __future__ import annotations

import difflib
import re

import gymnasium as gym
import numpy as np

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
PREFIX = "MinAtar/"
_MODULES = {"Asterix": "asterix", "Breakout": "breakout", "Freeway": "freeway",
            "Seaquest": "seaquest", "SpaceInvaders": "space_invaders"}
NUM_ACTIONS = 6
# The platform's clock on every MinAtar episode (steps). The games have none but Freeway's
# 2,500: a Seaquest submarine that never dives lives forever, so a greedy or no-op player
# would never finish an episode. Like ALE's 108,000-frame cap, an episode ended by it is part of
# the protocol (the game), not cut short by an evaluation's own max_episode_steps.
EPISODE_CLOCK = 10_000
ACTION_MEANINGS = ("NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE")
GRID = 10

# The shared channels: what each cell holds, by role.
CHANNELS = (
    "self",              # the agent's avatar: paddle, cannon, chicken, player, submarine
    "self_heading",      # where the avatar faces (Seaquest's sub back)
    "own_shot",          # what the agent fired or keeps in play (bullets; Breakout's ball)
    "enemy",             # what ends a life or costs: aliens, cars, enemies, fish, enemy subs
    "enemy_shot",        # enemy bullets
    "prize",             # what scores when reached or hit: bricks, gold, divers
    "trail",             # where a moving object was a step before (its direction)
    "motion",            # an enemy's speed or direction, as intensity
    "gauge",             # resource bars: Seaquest's oxygen
    "gauge_2",           # Seaquest's rescued-divers bar
)
# game -> {its channel name: (shared channel, intensity 1..255)}
CHANNEL_MAP: dict[str, dict[str, tuple[str, int]]] = {
    "Asterix": {"player": ("self", 255), "enemy": ("enemy", 255), "trail": ("trail", 255),
                "gold": ("prize", 255)},
    "Breakout": {"paddle": ("self", 255), "ball": ("own_shot", 255), "trail": ("trail", 255),
                 "brick": ("prize", 255)},
    "Freeway": {"chicken": ("self", 255), "car": ("enemy", 255),
                **{f"speed{k}": ("motion", 51 * k) for k in range(1, 6)}},
    "Seaquest": {"sub_front": ("self", 255), "sub_back": ("self_heading", 255),
                 "friendly_bullet": ("own_shot", 255), "trail": ("trail", 255),
                 "enemy_bullet": ("enemy_shot", 255), "enemy_fish": ("enemy", 255),
                 "enemy_sub": ("enemy", 255), "oxygen_guage": ("gauge", 255),
                 "diver_guage": ("gauge_2", 255), "diver": ("prize", 255)},
    "SpaceInvaders": {"cannon": ("self", 255), "alien": ("enemy", 255),
                      "alien_left": ("motion", 85), "alien_right": ("motion", 170),
                      "friendly_bullet": ("own_shot", 255), "enemy_bullet": ("enemy_shot", 255)},
}
OBS_SHAPE = (GRID, GRID, len(CHANNELS))


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().removeprefix("minatar/"))


def is_minatar(name: str) -> bool:
    return str(name).lower().startswith(PREFIX.lower())


def canonical_game(name: str) -> str:
    """'MinAtar/breakout', 'minatar/space_invaders' -> 'MinAtar/Breakout', 'MinAtar/SpaceInvaders';
    unknown -> ValueError naming the valid games."""
    by_key = {_key(g): g for g in GAMES}
    if _key(name) in by_key:
        return PREFIX + by_key[_key(name)]
    close = difflib.get_close_matches(_key(name), list(by_key), n=2, cutoff=0.5)
    hint = f"closest: {', '.join(PREFIX + by_key[c] for c in close)}; " if close else ""
    raise ValueError(f"unknown MinAtar game {name!r}; {hint}valid: {', '.join(PREFIX + g for g in GAMES)}")


def game_of(name: str) -> str:
    """'MinAtar/Breakout' -> 'Breakout' (the package's game, without the family prefix)."""
    return canonical_game(name)[len(PREFIX):]


def _unifier(game: str) -> tuple[np.ndarray, np.ndarray]:
    """(shared channel index, intensity) for each of the game's own channels, in its order."""
    from importlib import import_module

    own = import_module(f"minatar.environments.{_MODULES[game]}").Env(ramping=False).channels
    if set(own) != set(CHANNEL_MAP[game]):
        raise RuntimeError(f"MinAtar {game}: its channels {sorted(own)} differ from the map "
                           f"{sorted(CHANNEL_MAP[game])} (a changed minatar version?)")
    order = sorted(own, key=own.get)
    index = np.array([CHANNELS.index(CHANNEL_MAP[game][c][0]) for c in order])
    value = np.array([CHANNEL_MAP[game][c][1] for c in order], np.uint8)
    return index, value


def unify(state: np.ndarray, game: str, unifier=None) -> np.ndarray:
    """A game's boolean (..., 10, 10, C) state -> the shared uint8 (..., 10, 10, 10)."""
    index, value = unifier or _unifier(game_of(game) if is_minatar(game) else game)
    out = np.zeros((*state.shape[:-1], len(CHANNELS)), np.uint8)
    for c in range(state.shape[-1]):
        # Several of a game's channels may share one (Seaquest's fish and subs are both
        # enemies): the larger intensity wins.
        np.maximum(out[..., index[c]], np.where(state[..., c], value[c], 0).astype(np.uint8),
                   out=out[..., index[c]])
    return out


class MinAtarVectorEnv(gym.vector.VectorEnv):
    """`num_envs` copies of one MinAtar game stepped together, with the interface of the ALE
    vector env here: `reset(seed)` -> (obs, info), `step(actions)` -> (obs, rewards,
    terminated, truncated, info); obs (num_envs, 10, 10, 10) uint8 in the shared channels,
    rewards the raw game score. An env that ends an episode is reset on its next step
    (NEXT_STEP autoreset: that step's action is ignored and it returns the new first
    observation), or at once with `same_step_reset`. `max_episode_steps` truncates."""

    def __init__(self, game: str, num_envs: int = 1, *, sticky_action_prob: float = 0.1,
                 difficulty_ramping: bool = True, max_episode_steps: int | None = None,
                 same_step_reset: bool = False):
        from minatar import Environment

        self.game = canonical_game(game)
        name = _MODULES[game_of(game)]
        self.envs = [Environment(name, sticky_action_prob=sticky_action_prob,
                                 difficulty_ramping=difficulty_ramping) for _ in range(num_envs)]
        self.num_envs = self.batch_size = num_envs
        self.max_episode_steps = min(max_episode_steps or EPISODE_CLOCK, EPISODE_CLOCK)
        self.same_step_reset = same_step_reset
        self._unifier = _unifier(game_of(game))
        self.single_observation_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._steps = np.zeros(num_envs, np.int64)
        self._ended = np.zeros(num_envs, bool)
        self._env_ids = np.arange(num_envs)

    def _obs(self) -> np.ndarray:
        return unify(np.stack([e.state() for e in self.envs]), self.game, self._unifier)

    def _info(self) -> dict:
        return {"env_id": self._env_ids, "lives": np.zeros(self.num_envs, np.int64)}

    def reset(self, *, seed=None, options=None):
        for i, env in enumerate(self.envs):
            if seed is not None:
                env.seed(int(seed) + i)
            env.reset()
        self._steps[:] = 0
        self._ended[:] = False
        return self._obs(), self._info()

    def step(self, actions):
        actions = np.asarray(actions, np.int64)
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for i, env in enumerate(self.envs):
            if self._ended[i]:  # NEXT_STEP autoreset: this step starts the new episode
                env.reset()
                self._steps[i], self._ended[i] = 0, False
                continue
            reward, done = env.act(int(actions[i]))
            self._steps[i] += 1
            rewards[i], terminated[i] = reward, done
            truncated[i] = not done and self.max_episode_steps is not None and \
                self._steps[i] >= self.max_episode_steps
            if terminated[i] or truncated[i]:
                if self.same_step_reset:
                    env.reset()
                    self._steps[i] = 0
                else:
                    self._ended[i] = True
        # An ending step shows the state the episode ended in (same-step: the next first one).
        return self._obs(), rewards, terminated, truncated, self._info()

    def send(self, actions) -> None:
        self._pending = self.step(actions)

    def recv(self):
        return self._pending

    def close(self) -> None:
        pass


def make_minatar_vector_env(game: str, num_envs: int = 1, **kwargs) -> MinAtarVectorEnv:
    return MinAtarVectorEnv(game, num_envs, **kwargs)
