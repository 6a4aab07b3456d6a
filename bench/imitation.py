"""Imitator training: is the loader ever the bottleneck, what does Tune cost, is memory bounded?

All on real Breakout frames (random play through ale-py's vector env, recorded with the
platform's ShardWriter), in one run, on this machine:
  1. loader   samples/s the streaming loader produces (BC frame stacks, nothing trains)
     learner  samples/s BC (Nature CNN) trains on one batch already in memory: what it consumes
  2. tune     samples/s of the same training inside a Tune trial (train_imitator)
     plain    samples/s of the same model on the same loader in a plain PyTorch loop
  3. memory   peak RSS growth of one streaming epoch over a shard set ~3x larger than the
              loader's memory allowance, against loading the whole set in memory

Usage: python bench/imitation.py [--steps 45000] [--out docs/bench]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import numpy as np
import psutil
import torch


def record_random_play(root: str, steps: int, max_episode_steps: int = 400) -> list[str]:
    from understudy.envs import AtariProtocol, make_atari_vector_env, newest_frame
    from understudy.platform import shards

    static = {"game": "Breakout", "algorithm": "random", "seed": 0}
    shards.write_run_metadata(root, "random-Breakout", {**static, "protocol": {"full_action_space": True}})
    writer = shards.ShardWriter(root, "random-Breakout", static, env_runner=0, max_rows=5000)
    n = 8
    env = make_atari_vector_env("Breakout", AtariProtocol(full_action_space=True), num_envs=n,
                                max_episode_steps=max_episode_steps, same_step_reset=True)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    open_eps = [[] for _ in range(n)]
    done_steps, episode, global_step = 0, 0, 0
    while done_steps < steps:
        actions = rng.integers(18, size=n)
        next_obs, rewards, terminated, truncated, info = env.step(actions)
        for i in range(n):
            open_eps[i].append((newest_frame(obs[i]), actions[i], rewards[i], terminated[i], truncated[i]))
            if terminated[i] or truncated[i]:
                rows = open_eps[i]
                t = len(rows)
                cols = {"step": np.arange(t), "global_step": np.arange(global_step, global_step + t),
                        "policy_version": np.zeros(t, np.int64), "frame": np.stack([r[0] for r in rows]),
                        "action": np.array([r[1] for r in rows]), "reward": np.array([r[2] for r in rows]),
                        "terminated": np.array([r[3] for r in rows]), "truncated": np.array([r[4] for r in rows]),
                        "lives": np.zeros(t), "epsilon": None, "policy_outputs": None}
                writer.add(shards.Episode(0, episode, cols, float(sum(r[2] for r in rows))))
                episode, global_step, done_steps = episode + 1, global_step + t, done_steps + t
                open_eps[i] = []
        obs = next_obs
    writer.flush()
    env.close()
    return ["random-Breakout"]


class PeakRss:
    """Samples this process's RSS every 10 ms (ru_maxrss cannot be reset between phases)."""

    def __enter__(self):
        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.base = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.growth_mb = (self.peak - self.base) / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=45_000)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--out", default="docs/bench")
    args = p.parse_args()
    torch.set_num_threads(2)
    from understudy.algorithms import imitation
    from understudy.platform import data

    root = tempfile.mkdtemp(prefix="imitation-bench-")
    t0 = time.perf_counter()
    run_ids = record_random_play(root, args.steps)
    histories = data.index_runs(root, run_ids)
    rows = sum(h.steps for h in histories)
    print(f"recorded {rows} steps of Breakout in {time.perf_counter() - t0:.0f}s", flush=True)
    spec = data.SampleSpec("step", 1, 4)
    batch_size, block_steps, blocks = 128, 2000, 2

    def loader(cycle=True):
        return data.Loader(root, histories, spec, batch_size, 18, block_steps=block_steps,
                           blocks_in_memory=blocks, cycle=cycle)

    # 1. loader alone vs what the learner consumes
    it = iter(loader())
    next(it)
    started = time.perf_counter()
    for _ in range(args.batches * 3):
        next(it)
    loader_sps = args.batches * 3 * batch_size / (time.perf_counter() - started)
    model = imitation.build("bc", 18, cnn="nature")
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    fixed = next(it)
    learner = imitation.train_epoch(model, opt, [fixed] * args.batches)
    learner_sps = learner["samples_per_s"]
    print(f"loader {loader_sps:.0f} samples/s, learner consumes {learner_sps:.0f}: "
          f"{loader_sps / learner_sps:.1f}x", flush=True)

    # 2. plain loop vs the same training inside a Tune trial
    model = imitation.build("bc", 18, cnn="nature")
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    started = time.perf_counter()
    plain = imitation.train_epoch(model, opt, loader(), max_batches=args.batches)
    plain_wall = time.perf_counter() - started
    tune_result = run_in_tune(root, run_ids, args.batches, batch_size, block_steps, blocks)
    print(f"plain loop {plain['samples_per_s']:.0f} samples/s; in a Tune trial "
          f"{tune_result['samples_per_s']:.0f}: {tune_result['samples_per_s'] / plain['samples_per_s']:.2f}x "
          f"(Tune wall {tune_result['wall_s']:.1f}s vs plain {plain_wall:.1f}s)", flush=True)

    # 3. memory: streaming one pass over everything vs loading it all
    allowance_mb = 3 * blocks * block_steps * 84 * 84 * 5 / 2**20  # 3 groups: consumed, queued, read
    frames_mb = rows * 84 * 84 / 2**20
    with PeakRss() as streaming:
        n = sum(len(b["action"]) for b in loader(cycle=False))
    with PeakRss() as in_memory:
        whole = data.load_history(root, run_ids)
        del whole
    print(f"one streaming pass over {n} samples ({frames_mb:.0f} MB of frames, loader allowance "
          f"{allowance_mb:.0f} MB): peak RSS +{streaming.growth_mb:.0f} MB; whole set in memory "
          f"+{in_memory.growth_mb:.0f} MB", flush=True)

    results = {
        "rows": rows, "batch_size": batch_size, "block_steps": block_steps, "blocks_in_memory": blocks,
        "loader_samples_per_s": loader_sps, "learner_samples_per_s": learner_sps,
        "loader_over_learner": loader_sps / learner_sps,
        "plain_samples_per_s": plain["samples_per_s"], "plain_data_wait_s": plain["data_wait_s"],
        "tune_samples_per_s": tune_result["samples_per_s"],
        "tune_over_plain": tune_result["samples_per_s"] / plain["samples_per_s"],
        "tune_wall_s": tune_result["wall_s"], "plain_wall_s": plain_wall,
        "frames_mb": frames_mb, "loader_allowance_mb": allowance_mb,
        "streaming_peak_rss_growth_mb": streaming.growth_mb,
        "in_memory_peak_rss_growth_mb": in_memory.growth_mb,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "imitation.json"), "w") as f:
        json.dump(results, f, indent=1)


def run_in_tune(root, run_ids, batches, batch_size, block_steps, blocks) -> dict:
    """The platform's trainable, one trial, the same model, data and number of batches."""
    import ray
    from ray import tune

    from understudy.platform import shards
    from understudy.platform.config import DistillConfig
    from understudy.platform.distill import train_imitator

    cfg = DistillConfig(teacher="bench", game="Breakout", algorithm="bc", model={"cnn": "nature"},
                        data={"heldout_episodes": 0, "unified_actions": False}, epochs=1,
                        batch_size=batch_size, lr=1e-4, max_batches_per_epoch=batches,
                        cpus_per_trial=2, block_steps=block_steps, blocks_in_memory=blocks)
    context = {"shard_root": root, "run_ids": run_ids, "data_version": shards.data_version(root, run_ids),
               "skipped_shards": [], "storage_path": tempfile.mkdtemp()}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        grid = tune.Tuner(tune.with_resources(train_imitator, {"cpu": 2}),
                          param_space={"distill": cfg.model_dump(), "context": context},
                          run_config=tune.RunConfig(storage_path=context["storage_path"], verbose=0)).fit()
        wall = time.perf_counter() - started
        return {"samples_per_s": grid[0].metrics["samples_per_s"], "wall_s": wall}
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
