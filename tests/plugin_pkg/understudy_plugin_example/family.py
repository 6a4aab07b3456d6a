"""Catch, a Gymnasium game defined outside understudy, as an env family of its own.

`CATCH` is what understudy finds by this package's entry point (group `understudy.env_families`)
or by its place in the environment (UNDERSTUDY_ENV_FAMILIES=understudy_plugin_example.family:CATCH);
configs then name its game, `Catch`, like any other.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from understudy.envs.gymnasium_family import gymnasium_family

SIZE = 10  # a 10x10 grid: observations of MinAtar's shape, which the `minatar` encoder reads
PADDLE, BALL = 0, 1  # the channels that show them (the other 8 stay dark)


class Catch(gym.Env):
    """A ball falls one row a step from a random column of the top row; the paddle on the bottom
    row moves left, stays or moves right. +1 when the ball reaches the bottom row above the
    paddle, -1 when it does not: every episode is SIZE - 1 steps."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 10), np.uint8)
        self.action_space = gym.spaces.Discrete(3)

    def _obs(self) -> np.ndarray:
        obs = np.zeros((SIZE, SIZE, 10), np.uint8)
        obs[SIZE - 1, self.paddle, PADDLE] = 255
        obs[self.row, self.column, BALL] = 255
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.row, self.column = 0, int(self.np_random.integers(SIZE))
        self.paddle = SIZE // 2
        return self._obs(), {}

    def step(self, action):
        self.paddle = min(SIZE - 1, max(0, self.paddle + int(action) - 1))
        self.row += 1
        done = self.row == SIZE - 1
        reward = (1.0 if self.column == self.paddle else -1.0) if done else 0.0
        return self._obs(), reward, done, False, {}


# Uniformly random play (measured: 100,000 episodes) and a perfect catcher.
RANDOM, BEST = -0.8, 1.0

CATCH = gymnasium_family(
    "catch", lambda game: Catch(), ["Catch"], encoder="minatar", longest_episode=SIZE - 1,
    reference=lambda game: (RANDOM, BEST), reference_source="random play measured; a perfect catcher scores 1",
    protocol={"catch.size": SIZE})
