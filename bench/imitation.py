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
    from understudy.histories import shards

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
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory-block-steps", type=int, default=1000)
    p.add_argument("--out", default="docs/bench")
    args = p.parse_args()
    torch.set_num_threads(2)
    from understudy.algorithms import imitation
    from understudy.histories import data

    root = tempfile.mkdtemp(prefix="imitation-bench-")
    t0 = time.perf_counter()
    run_ids = record_random_play(root, args.steps)
    histories = data.index_runs(root, run_ids)
    rows = sum(h.steps for h in histories)
    print(f"recorded {rows} steps of Breakout in {time.perf_counter() - t0:.0f}s", flush=True)
    spec = data.SampleSpec("step", 1, 4)
    batch_size, block_steps, blocks = 128, 2000, 2
    mem_block_steps = args.memory_block_steps

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

    # 2. plain loop vs the same training inside a Tune trial, alternated over rounds with Ray
    # up for both (its background processes share the 2 cores either way); medians reported.
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    time.sleep(10)  # let Ray's own start-up work finish: a running cluster is the normal case
    plains, tunes = [], []
    try:
        for _ in range(args.rounds):
            model = imitation.build("bc", 18, cnn="nature")
            opt = torch.optim.Adam(model.parameters(), 1e-4)
            plains.append(imitation.train_epoch(model, opt, loader(), max_batches=args.batches)["samples_per_s"])
            tunes.append(run_in_tune(root, run_ids, args.batches, batch_size, block_steps, blocks)["samples_per_s"])
            print(f"  round: plain {plains[-1]:.0f}, tune {tunes[-1]:.0f} samples/s", flush=True)
    finally:
        ray.shutdown()
    plain_sps, tune_sps = float(np.median(plains)), float(np.median(tunes))
    print(f"plain loop {plain_sps:.0f} samples/s; in a Tune trial {tune_sps:.0f}: "
          f"{tune_sps / plain_sps:.2f}x (medians of {args.rounds} rounds)", flush=True)

    # 3. memory: training one streaming epoch over everything vs loading it all. The loader's
    # allowance: frames of 3 groups of blocks (one being consumed, one queued, one being read).
    allowance_mb = 3 * blocks * mem_block_steps * 84 * 84 / 2**20
    frames_mb = rows * 84 * 84 / 2**20
    model = imitation.build("bc", 18, cnn="nature")
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    stream = data.Loader(root, histories, spec, batch_size, 18, block_steps=mem_block_steps,
                         blocks_in_memory=blocks, cycle=False)
    growth = {}  # peak RSS growth after each third of the epoch: flat if bounded

    def batches():
        n = 0
        for b in stream:
            n += len(b["action"])
            for k in (1, 2):
                if n >= k * rows // 3 and k not in growth:
                    growth[k] = (streaming.peak - streaming.base) / 2**20
            yield b

    with PeakRss() as streaming:
        trained = imitation.train_epoch(model, opt, batches())
    with PeakRss() as in_memory:
        whole = data.load_history(root, run_ids)
        del whole
    print(f"training one streaming epoch on {trained['train_targets']} samples ({frames_mb:.0f} MB of "
          f"frames, {frames_mb / allowance_mb:.1f}x the loader allowance of {allowance_mb:.0f} MB): peak RSS "
          f"+{growth.get(1, 0):.0f} MB after a third, +{growth.get(2, 0):.0f} MB after two thirds, "
          f"+{streaming.growth_mb:.0f} MB at the end; the whole "
          f"set in memory +{in_memory.growth_mb:.0f} MB", flush=True)

    results = {
        "rows": rows, "batch_size": batch_size, "block_steps": block_steps, "blocks_in_memory": blocks,
        "loader_samples_per_s": loader_sps, "learner_samples_per_s": learner_sps,
        "loader_over_learner": loader_sps / learner_sps,
        "plain_samples_per_s": plain_sps, "tune_samples_per_s": tune_sps,
        "tune_over_plain": tune_sps / plain_sps, "plain_rounds": plains, "tune_rounds": tunes,
        "frames_mb": frames_mb, "loader_allowance_mb": allowance_mb, "memory_block_steps": mem_block_steps,
        "data_over_allowance": frames_mb / allowance_mb,
        "streaming_peak_rss_growth_after_thirds_mb": [growth.get(1), growth.get(2)],
        "streaming_peak_rss_growth_mb": streaming.growth_mb,
        "in_memory_peak_rss_growth_mb": in_memory.growth_mb,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "imitation.json"), "w") as f:
        json.dump(results, f, indent=1)


def run_in_tune(root, run_ids, batches, batch_size, block_steps, blocks) -> dict:
    """The platform's trainable, one trial, the same model, data and number of batches."""
    from ray import tune

    from understudy.histories import shards
    from understudy.platform.config import DistillConfig
    from understudy.platform.distill import train_imitator

    cfg = DistillConfig(teacher="bench", game="Breakout", algorithm="bc", model={"cnn": "nature"},
                        data={"heldout_episodes": 0, "unified_actions": False}, epochs=1,
                        batch_size=batch_size, lr=1e-4, max_batches_per_epoch=batches,
                        cpus_per_trial=2, block_steps=block_steps, blocks_in_memory=blocks)
    context = {"shard_root": root, "run_ids": run_ids, "data_version": shards.data_version(root, run_ids),
               "skipped_shards": [], "storage_path": tempfile.mkdtemp()}
    started = time.perf_counter()
    grid = tune.Tuner(tune.with_resources(train_imitator, {"cpu": 2}),
                      param_space={"distill": cfg.model_dump(), "context": context},
                      run_config=tune.RunConfig(storage_path=context["storage_path"], verbose=0)).fit()
    return {"samples_per_s": grid[0].metrics["samples_per_s"], "wall_s": time.perf_counter() - started}


if __name__ == "__main__":
    main()
