"""What a learner sees of the game score. Every reported return stays the raw score; only the
learning signal is transformed (DQN, Dopamine and CleanRL all train on the sign of the reward)."""
from __future__ import annotations

import numpy as np

REWARD_TRANSFORMS = ("sign", "clip", "raw")


def transform_reward(rewards, how: str):
    """`sign`: -1/0/1; `clip`: clipped to [-1, 1]; `raw`: unchanged. Scalars or arrays."""
    if how == "sign":
        return np.sign(rewards)
    if how == "clip":
        return np.clip(rewards, -1.0, 1.0)
    if how == "raw":
        return rewards
    raise ValueError(f"reward transform {how!r} is unknown; valid: {', '.join(REWARD_TRANSFORMS)}")
