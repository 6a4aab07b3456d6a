"""Random play on the five MinAtar games under the authors' protocol (sticky actions 0.1,
difficulty ramping), uniformly random over the 6 shared actions: the `random` reference of
envs/families.py MINATAR_SCORES.

Usage: python bench/minatar_reference.py [--episodes 1000] [--out docs/bench]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def random_returns(game: str, episodes: int, seed: int = 0, num_envs: int = 16) -> list[float]:
    from understudy.envs.families import random_returns as play
    from understudy.envs.minatar import MinAtarVectorEnv

    return play(MinAtarVectorEnv(game, num_envs, same_step_reset=True), episodes, seed)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", default="docs/bench")
    args = parser.parse_args(argv)
    from understudy.envs.minatar import GAMES

    result = {"episodes": args.episodes, "protocol": {"sticky_action_prob": 0.1, "difficulty_ramping": True},
              "games": {}}
    for game in GAMES:
        started = time.perf_counter()
        returns = np.array(random_returns("MinAtar/" + game, args.episodes))
        result["games"][game] = {"mean": float(returns.mean()),
                                 "sem": float(returns.std(ddof=1) / np.sqrt(len(returns))),
                                 "seconds": time.perf_counter() - started}
        print(game, result["games"][game], flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "minatar_reference.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
