"""Play with a network in the loop on MinAtar, against a plain loop, all in one run
(docs/bench/training_limits.json, `play_minatar`).

The game is the hidden-columns task family (MinAtar/SpaceInvaders-columns), 16 copies, one
per held-out task, one thread, as an evaluation task and the history source run:

  raw       the family's vector env, uniform random actions: the ceiling of any player
  generate  algorithms.annealed_source.annealed_histories: the scripted expert with annealed
            noise, every step recorded to shards
  plain_gen the same env, expert and noise with no recording (the baseline of `generate`)
  eval      the platform's evaluation loop (players.play_episodes) with the frozen AD player as
            evaluation builds it (players.make_player: its checkpoint's transforms, the
            key/value-cached ContextPolicy), no Ray
  eval_ray  the same as a Ray task (players.play), its own wall-clock
  plain_ev  the same env and the same cached AD network, stepped by a bare loop: no wrappers,
            no episode bookkeeping, no Ray (the baseline of `eval` and `eval_ray`)

The AD model is the MinAtar experiments' (context 512, d_model 64, 3 layers), untrained: its
speed does not depend on its weights. Each variant runs in turn over `--rounds` rounds; medians.
Collection by the RLlib teacher runner is measured by bench/collection.py (its
`teacher_vs_ceiling`), not here.

Usage: python bench/play.py [--steps 20000] [--rounds 2] [--out docs/bench]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch

GAME = "MinAtar/SpaceInvaders-columns"
COPIES = 16
MODEL = {"cnn": "minatar", "stack": 1, "context": 512, "d_model": 64, "layers": 3, "heads": 4}


def tasks():
    from understudy.envs.families import family_of

    return np.asarray(family_of(GAME).goals("heldout"))[:COPIES]


def raw(steps: int) -> float:
    from understudy.envs.families import family_of

    env = family_of(GAME).make_vector_env(GAME, COPIES, goals=tasks())
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    started, done = time.perf_counter(), 0
    while done < steps:
        env.step(rng.integers(6, size=COPIES))
        done += COPIES
    return done / (time.perf_counter() - started)


def generate(steps: int, record: bool) -> float:
    """The annealed source (record) or the same play unrecorded: env steps per second."""
    from understudy.algorithms import annealed_source
    from understudy.envs.families import family_of

    episodes = max(2, steps // (COPIES * 60))  # MinAtar columns episodes: about 60 steps under noise
    config = annealed_source.AnnealConfig(episodes=episodes, anneal_episodes=max(1, episodes // 2))
    if record:
        started = time.perf_counter()
        out = annealed_source.annealed_histories(GAME, tasks(), config, seed=0, root=tempfile.mkdtemp(),
                                                 progress=None)
        return sum(sum(r["steps"]) for r in out) / (time.perf_counter() - started)
    family = family_of(GAME)
    env = family.make_vector_env(GAME, COPIES, goals=tasks())
    expert = annealed_source.EXPERTS[family.name]
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    played = np.zeros(COPIES, int)
    started, done = time.perf_counter(), 0
    while played.min() < episodes:
        eps = np.array([config.epsilon(min(e, episodes - 1)) for e in played])
        actions = np.where(rng.random(COPIES) < eps, rng.integers(6, size=COPIES), expert(obs, env, tasks()))
        obs, _, terminated, truncated, _ = env.step(actions)
        played += terminated | truncated
        done += COPIES
    return done / (time.perf_counter() - started)


def _checkpoint() -> str:
    from understudy.algorithms import imitation
    from understudy.histories.data import StepTransforms

    torch.manual_seed(0)
    model = imitation.build("ad", 6, **MODEL)
    path = tempfile.mkdtemp()
    imitation.save(model, path, {"transforms": asdict(StepTransforms())})
    return path


def _stepped(lengths) -> int:
    """Env steps a lockstep loop took to play `lengths` (per copy, its episodes' lengths): every
    copy steps until the last one has played its episodes, so n x the longest copy."""
    return len(lengths) * max(sum(copy) for copy in lengths)


def evaluate(episodes: int, checkpoint: str) -> float:
    from understudy.envs.families import make_play_env
    from understudy.platform import players

    env = make_play_env(GAME, 1, goal_split="heldout")  # one copy per held-out task: 20 copies
    player, stack, _ = players.make_player(players.Agent("imitator", checkpoint), env.num_envs, 6, False, 0, GAME,
                                           {}, device="cpu")
    started = time.perf_counter()
    played = players.play_episodes(env, player, players.model_stack(GAME, stack), 6, episodes, 0)
    seconds = time.perf_counter() - started
    return _stepped([[e["length"] for e in p] for p in played]) / seconds


def evaluate_ray(episodes: int, checkpoint: str) -> float:
    """As an evaluation task: its own wall-clock (env and model set-up included)."""
    import ray

    from understudy.platform import players

    result = ray.get(players.play.remote(players.Agent("imitator", checkpoint), GAME, {}, episodes, 1, None, False,
                                         0, "heldout", None, (), 30.0, 0, None))
    return _stepped(result["lengths"]) / (result["ended"] - result["started"])


def plain_evaluate(steps: int, checkpoint: str) -> float:
    """The same env and cached network in a bare loop: the model reads raw steps as its
    training data showed them (nothing to transform here: raw rewards, the game's own actions)."""
    from understudy.algorithms import imitation
    from understudy.envs.families import make_play_env

    env = make_play_env(GAME, 1, goal_split="heldout")
    model, _ = imitation.load(checkpoint)
    policy = imitation.policy(model, env.num_envs, greedy=False, seed=0)
    obs, _ = env.reset(seed=0)
    n = env.num_envs
    prev_action, prev_reward, new = np.full(n, 6), np.zeros(n, np.float32), np.ones(n, bool)
    started, done = time.perf_counter(), 0
    while done < steps:
        actions = policy.act(obs, prev_action, prev_reward, new)
        obs, rewards, terminated, truncated, _ = env.step(actions)
        prev_action, prev_reward, new = actions, rewards.astype(np.float32), terminated | truncated
        done += n
    return done / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="docs/bench")
    args = p.parse_args()
    torch.set_num_threads(1)
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    checkpoint = _checkpoint()
    runs: dict = {k: [] for k in ("raw", "generate", "plain_gen", "eval", "eval_ray", "plain_ev")}
    try:
        for r in range(args.rounds):
            runs["raw"].append(raw(args.steps * 4))
            runs["generate"].append(generate(args.steps, record=True))
            runs["plain_gen"].append(generate(args.steps, record=False))
            episodes = max(2, args.steps // (20 * 50))  # untrained AD: episodes of about 50 steps
            runs["eval"].append(evaluate(episodes, checkpoint))
            runs["eval_ray"].append(evaluate_ray(episodes, checkpoint))
            runs["plain_ev"].append(plain_evaluate(args.steps, checkpoint))
            print(f"[play] round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in runs.items())
                  + " env steps/s", flush=True)
    finally:
        ray.shutdown()
    med = {k: float(np.median(v)) for k, v in runs.items()}
    play = {"generate_ratio_to_plain": med["generate"] / med["plain_gen"],
            "eval_ratio_to_plain": med["eval"] / med["plain_ev"],
            "eval_ray_ratio_to_plain": med["eval_ray"] / med["plain_ev"],
            "raw_step_ratio": {"generate": med["generate"] / med["raw"], "eval": med["eval"] / med["raw"],
                               "plain_eval": med["plain_ev"] / med["raw"]},
            "env_steps_per_s": med, "rounds": runs, "game": GAME, "copies": COPIES, "model": MODEL,
            "date": time.strftime("%Y-%m-%d %H:%M"), "threads": 1}
    print(json.dumps({k: v for k, v in play.items() if k != "rounds"}, indent=1))
    path = os.path.join(args.out, "training_limits.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    results["play_minatar"] = play  # its own run: the other sections keep theirs, each with its date
    from understudy.platform.workspace import write_json_atomic

    write_json_atomic(path, results, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
