"""Frozen AD at play: the key/value cache against recomputing the whole window every step.

The model is the full-scale imitator of `breakout_to_spaceinvaders` (Nature CNN encoder,
context 4,096, d_model 256, 6 layers, 8 heads, untrained weights: speed does not depend on
them), playing real ALE Breakout with the 18-action protocol, as many envs at once as the
full-scale evaluation plays copies (8). Measured in this one run, as env steps per second of
wall time (env stepping included):

  fill       the cached player plays from an empty context until every window is full
  cached     then one whole cycle of the window (context - keep steps, so it includes one
             advance of every window and its re-read of `keep` tokens): the steady state
  recompute  the same player state with the cache off: the model's full forward pass over
             the window every step, timed right after an advance (the shortest windows of a
             cycle, so the cheapest recompute steps) and right before one (the longest); the
             cycle's rate is taken from the mean of the two step times

Peak memory: the cache's own bytes, and the process's peak RSS after each phase (the cached
phases run first, so the recompute figure is the larger of the two), or on a GPU the peak
allocated memory of each phase.

Usage: python bench/eval.py [--context 4096] [--envs 8] [--recompute-steps 2] [--out docs/bench]
"""
from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import resource
import time

import numpy as np
import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="breakout_to_spaceinvaders")
    ap.add_argument("--context", type=int, default=None, help="default: the experiment's full scale")
    ap.add_argument("--envs", type=int, default=None, help="default: the full-scale evaluation's copies")
    ap.add_argument("--game", default="Breakout")
    ap.add_argument("--recompute-steps", type=int, default=2, help="timed steps at each end of the cycle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/bench")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from understudy.algorithms import imitation
    from understudy.envs import AtariProtocol, make_atari_vector_env
    from understudy.platform import experiment

    cfg = experiment.load(args.experiment, "full")
    spec = {k: v for k, v in cfg.distill.model.model_dump().items() if v is not None}
    if args.context:
        spec["context"] = args.context
    envs = args.envs or cfg.evaluate.copies
    device = imitation.inference_device()
    env = make_atari_vector_env(args.game, AtariProtocol(**cfg.teach.protocol.model_dump()), num_envs=envs,
                                same_step_reset=True)
    num_actions = int(env.single_action_space.n)
    torch.manual_seed(0)
    model = imitation.build("ad", num_actions, **spec).to(device).eval()
    player = imitation.policy(model, envs, greedy=False, seed=0, cache=True)
    context, keep = player.context, player.keep
    print(f"[bench] AD {spec} on {args.game} x {envs} envs, {num_actions} actions, device {device}; "
          f"window advances at {context} tokens, keeping {keep}; cache {player.cache.nbytes / 2**20:.0f} MB",
          flush=True)

    obs, _ = env.reset(seed=0)
    prev_action, prev_reward, new_episode = np.full(envs, num_actions), np.zeros(envs, np.float32), np.ones(envs, bool)

    def step(p):
        nonlocal obs, prev_action, prev_reward, new_episode
        actions = p.act(obs[..., -spec.get("stack", 1):], prev_action, prev_reward, new_episode)
        obs, rewards, terminated, truncated, _ = env.step(actions)
        prev_action, prev_reward, new_episode = actions, rewards.astype(np.float32), terminated | truncated

    def timed(p, steps, label):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started, last = time.perf_counter(), time.perf_counter()
        for i in range(steps):
            step(p)
            if time.perf_counter() - last > 30:
                last = time.perf_counter()
                print(f"[bench] {label}: {i + 1}/{steps} steps, {(i + 1) / (last - started):.1f} steps/s", flush=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        memory = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb())
        return seconds, memory

    fill_s, _ = timed(player, context, "fill")
    assert int(player.length.min()) == context, "every window should be full"
    cycle = context - keep
    cached_s, cached_mb = timed(player, cycle, "cached")
    assert int(player.length.min()) == context, "one whole cycle: full again"
    cached_sps = envs * cycle / cached_s
    print(f"[bench] cached: {cycle} steps x {envs} envs in {cached_s:.1f}s = {cached_sps:.1f} env steps/s "
          f"(fill: {envs * context / fill_s:.1f})", flush=True)

    # The same windows with the cache off. First the longest windows (full: next step advances,
    # and the recompute player pays only the advance's copy), then right after the advance.
    recompute = imitation.policy(model, envs, greedy=False, seed=0, cache=False)
    recompute.window.copy_(player.window)
    recompute.length.copy_(player.length)
    recompute.starts.copy_(player.starts)
    step(recompute)  # untimed: it advances the windows to `keep` + 1
    short_s, _ = timed(recompute, args.recompute_steps, "recompute (short windows)")
    recompute.length.fill_(context - args.recompute_steps)  # the longest windows of the cycle
    long_s, recompute_mb = timed(recompute, args.recompute_steps, "recompute (long windows)")
    per_step = (short_s + long_s) / (2 * args.recompute_steps)
    recompute_sps = envs / per_step
    env.close()

    out = {"cached_steps_per_s": cached_sps, "recompute_steps_per_s": recompute_sps,
           "ratio": cached_sps / recompute_sps, "context": context, "keep": keep,
           "d_model": spec["d_model"], "layers": spec["layers"], "heads": spec["heads"], "cnn": spec["cnn"],
           "num_actions": num_actions, "envs": envs, "game": args.game, "device": str(device),
           "threads": args.threads, "fill_steps_per_s": envs * context / fill_s,
           "cached_cycle_steps": cycle, "cached_seconds": cached_s,
           "recompute_short_window_s_per_step": short_s / args.recompute_steps,
           "recompute_long_window_s_per_step": long_s / args.recompute_steps,
           "kv_cache_mb": player.cache.nbytes / 2**20,
           "peak_memory_mb": {"cached": cached_mb, "recompute": recompute_mb,
                              "kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS"},
           "machine": f"{os.cpu_count()} CPUs, {_platform.machine()}", "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(out, indent=2))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "eval.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"[bench] cached {cached_sps:.1f} vs recomputed {recompute_sps:.2f} env steps/s: "
          f"{out['ratio']:.0f}x; written {path}", flush=True)


if __name__ == "__main__":
    main()
