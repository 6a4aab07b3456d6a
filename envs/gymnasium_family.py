"""A user's own Gymnasium games as an env family (docs/extending.md): `gymnasium_family` turns a
function that makes a `gymnasium.Env` into an `EnvFamily` that teachers record, imitators read
and evaluation plays like the built-in ones, and `GymnasiumVectorEnv` runs copies of such an env
with the interface every family's vector env has here.

The env must show one whole observation as uint8 (height, width, channels), as MinAtar does
(a family of stacked frames is not built from a Gymnasium env here), and have discrete actions;
its rewards are the raw score. An encoder of algorithms/encoders.py must read its observations
(today: 10x10x10 with `minatar`).
Pure Python: no Ray here.
"""
from __future__ import annotations

import difflib
import functools
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np

from understudy.envs.families import EnvFamily


class GymnasiumVectorEnv(gym.vector.SyncVectorEnv):
    """`num_envs` copies of one Gymnasium env stepped together, as the ALE and MinAtar vector
    envs here: `reset(seed)` (copy i seeded seed + i) -> (obs, info), `step(actions)` -> (obs,
    rewards, terminated, truncated, info) with `env_id` and `lives` in info, and `send`/`recv`
    for the teachers' env runner. An env that ends an episode is reset on its next step (that
    step's action is ignored and it returns the new first observation), or at once with
    `same_step_reset`. `max_episode_steps` truncates."""

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int, *, same_step_reset: bool = False,
                 max_episode_steps: int | None = None):
        def one():
            env = make_env()
            return gym.wrappers.TimeLimit(env, max_episode_steps) if max_episode_steps else env

        mode = gym.vector.AutoresetMode.SAME_STEP if same_step_reset else gym.vector.AutoresetMode.NEXT_STEP
        super().__init__([one] * num_envs, autoreset_mode=mode)
        self._ids = np.arange(num_envs)

    def _with_ids(self, info: dict) -> dict:
        return {**info, "env_id": self._ids, "lives": np.zeros(self.num_envs, np.int64)}

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return obs, self._with_ids(info)

    def step(self, actions):
        obs, rewards, terminated, truncated, info = super().step(np.asarray(actions))
        return obs, rewards.astype(np.float32), terminated, truncated, self._with_ids(info)

    def send(self, actions) -> None:
        self._pending = self.step(actions)

    def recv(self):
        return self._pending


def _key(name: str) -> str:
    return str(name).lower().replace("_", "").replace("-", "").replace(" ", "")


def gymnasium_family(name: str, make_env: Callable[[str], gym.Env], games: Sequence[str], *, encoder: str,
                     longest_episode: int, reference: Callable[[str], tuple[float, float] | None] = lambda game: None,
                     reference_source: str = "", protocol: dict | None = None,
                     teacher: tuple[str, str | None] = ("ppo", None)) -> EnvFamily:
    """An env family of the Gymnasium games `games`, each made by `make_env(game)`.

    encoder: the algorithms/encoders.py encoder its models read with when a config names none;
    longest_episode: the most steps an episode lasts (budgets that must cover whole episodes are
    sized by it); reference: a game's (random score, reference score), for learning verdicts and
    normalised results (None: unknown); protocol: the settings its envs follow, as logged with
    every run; teacher: its default (algorithm, preset)."""
    games = list(games)
    first = make_env(games[0])
    space = first.observation_space
    first.close()
    if not (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3):
        raise ValueError(f"env family {name!r}: observations must be uint8 (height, width, channels), got {space}")

    @functools.lru_cache(maxsize=None)
    def num_actions(game: str) -> int:
        env = make_env(canonical(game))
        try:
            if not isinstance(env.action_space, gym.spaces.Discrete):
                raise ValueError(f"env family {name!r}: {game} has actions {env.action_space}; valid: Discrete")
            return int(env.action_space.n)
        finally:
            env.close()

    def canonical(game: str) -> str:
        by_key = {_key(g): g for g in games}
        if _key(game) in by_key:
            return by_key[_key(game)]
        close = difflib.get_close_matches(_key(game), list(by_key), n=3, cutoff=0.6)
        valid = [by_key[c] for c in close] or games
        raise ValueError(f"{game!r} is not a {name} game; valid: {', '.join(valid)}")

    def make_vector_env(game: str, num_envs: int, *, same_step_reset: bool = False,
                        max_episode_steps: int | None = None):
        game = canonical(game)
        return GymnasiumVectorEnv(lambda: make_env(game), num_envs, same_step_reset=same_step_reset,
                                  max_episode_steps=max_episode_steps)

    protocol = dict(protocol or {})
    return EnvFamily(
        name=name, make_vector_env=make_vector_env, games=lambda: list(games), canonical=canonical,
        frame_shape=tuple(space.shape), num_actions=num_actions,
        shared_actions=max(num_actions(g) for g in games), reference=reference, protocol=protocol,
        teacher=teacher, encoder=encoder, reference_source=reference_source,
        newest_frame=lambda obs: obs,  # one whole observation: no stacks to take a frame from
        metadata=lambda game: {"family": name, **protocol}, longest_episode=longest_episode)
