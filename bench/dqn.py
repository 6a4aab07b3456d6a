"""DQN with learning, on Breakout: the RLlib DQN teacher (AtariVectorEnvRunner, recording on)
against a plain single-process PyTorch DQN loop with the same network (Nature CNN, valid
padding, one 256-unit hidden layer), the same env and the same replay ratio (one batch of 32
every 4 env steps, i.e. 8 trained samples per env step). All measured in this one run, after
the same warm-up, as env steps per second of wall time.

The variants take turns in chunks of `--chunk` env steps (250 by default, about 2 s each), so
that this machine's drift in speed (tens of percent from minute to minute) hits all of them
alike. The chunks are then grouped into `--blocks` consecutive blocks, and the ratio per block
shows the spread.

Usage: python bench/dqn.py [--steps 6000] [--chunk 250] [--learning-starts 300] [--out docs/bench]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def q_network(num_actions: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(3136, 256), nn.ReLU(), nn.Linear(256, num_actions))


class PlainDQN:
    """The baseline: act, store, and every 4th step train on 32 replayed transitions, as
    CleanRL's DQN does (channels-first frames, torch's default Adam). `tuned`: the same loop
    with the two CPU speed-ups the teacher uses (fused Adam; channels-last input, which
    torch's CPU convolutions run faster), to show what is left of framework overhead."""

    def __init__(self, capacity: int, epsilon_steps: int, seed: int = 0, tuned: bool = False):
        from understudy.envs import AtariProtocol, make_atari_vector_env

        self.env = make_atari_vector_env("Breakout", AtariProtocol(full_action_space=True), num_envs=1,
                                         num_threads=1)
        self.q, self.target = q_network(18), q_network(18)
        self.target.load_state_dict(self.q.state_dict())
        self.opt = torch.optim.Adam(self.q.parameters(), lr=2.5e-4, fused=tuned)
        self.tuned, self.epsilon_steps = tuned, epsilon_steps
        shape = (capacity, 84, 84, 4) if tuned else (capacity, 4, 84, 84)  # frames as stored
        self.obs_buf, self.next_buf = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        self.act_buf = np.zeros(capacity, np.int64)
        self.rew_buf = np.zeros(capacity, np.float32)
        self.done_buf = np.zeros(capacity, np.float32)
        self.rng = np.random.default_rng(seed)
        obs, _ = self.env.reset(seed=seed)
        self.obs = self._layout(obs)
        self.steps = self.updates = 0

    def _layout(self, obs: np.ndarray) -> np.ndarray:
        return obs if self.tuned else np.moveaxis(obs, -1, 1)

    def _net_input(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames)
        return (x.permute(0, 3, 1, 2) if self.tuned else x).float() / 255.0

    def advance(self, env_steps: int, learn: bool = True) -> None:
        q, target, rng = self.q, self.target, self.rng
        for _ in range(env_steps):
            n = self.steps
            epsilon = max(0.05, 1.0 - 0.95 * n / self.epsilon_steps)
            if rng.random() < epsilon:
                action = int(rng.integers(18))
            else:
                with torch.inference_mode():
                    action = int(q(self._net_input(self.obs)).argmax(-1))
            next_obs, reward, term, trunc, _ = self.env.step(np.array([action]))
            next_obs = self._layout(next_obs)
            self.obs_buf[n], self.next_buf[n], self.act_buf[n] = self.obs[0], next_obs[0], action
            self.rew_buf[n], self.done_buf[n] = reward[0], float(term[0])
            self.obs = next_obs
            if term[0] or trunc[0]:  # NEXT_STEP autoreset: one more step returns the new episode
                self.obs = self._layout(self.env.step(np.array([0]))[0])
            self.steps = n = n + 1
            if learn and n % 4 == 0:
                idx = rng.integers(n, size=32)
                o, o2 = self._net_input(self.obs_buf[idx]), self._net_input(self.next_buf[idx])
                with torch.no_grad():
                    best = q(o2).argmax(-1, keepdim=True)  # double Q
                    target_q = torch.from_numpy(self.rew_buf[idx]) + 0.99 * (1 - torch.from_numpy(self.done_buf[idx])) \
                        * target(o2).gather(1, best).squeeze(1)
                loss = F.smooth_l1_loss(q(o).gather(1, torch.from_numpy(self.act_buf[idx])[:, None]).squeeze(1),
                                        target_q)
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                self.updates += 1
                if self.updates % 500 == 0:
                    target.load_state_dict(q.state_dict())

    def counts(self) -> tuple[int, int]:
        """(env steps, trained samples) so far."""
        return self.steps, self.updates * 32

    def close(self) -> None:
        self.env.close()


class RLlibTeacher:
    """The DQN teacher as `understudy teach` builds it, one training iteration per chunk."""

    def __init__(self, chunk: int, learning_starts: int, epsilon_steps: int, buffer_size: int, root: str,
                 num_envs: int = 1):
        from understudy.algorithms.presets import DQNSettings
        from understudy.algorithms.teachers import recording_algorithm, teacher_config

        # The plain loop's settings: double Q, torch's Adam epsilon, raw rewards.
        settings = DQNSettings(learning_starts=learning_starts, target_update=2000, epsilon_steps=epsilon_steps,
                               final_epsilon=0.05, buffer_size=buffer_size, double_q=True, adam_epsilon=1e-8)
        config = teacher_config(
            algorithm="dqn", game="Breakout", seed=0, env_steps=10**9, env_steps_per_iter=chunk,
            protocol={"full_action_space": True}, max_episode_steps=None,
            # Shards of 2,000 rows: shard writes fall inside the measured window.
            record={"root": root, "session": "bench", "algorithm": "dqn", "shard_rows": 2000}, cnn="nature",
            num_envs=num_envs, lr=2.5e-4, reward="raw", settings=settings, runner="vector", env_threads=1)
        self.algo = recording_algorithm(config.algo_class)(config=config)
        self.result = {}

    def advance(self, env_steps: int, learn: bool = True) -> None:
        # One iteration samples at least `chunk` env steps; during the warm-up RLlib does not
        # train before `learning_starts`, as the plain loop's warm-up does not either.
        target = self.counts()[0] + env_steps
        while self.counts()[0] < target:
            self.result = self.algo.train()

    def counts(self) -> tuple[int, int]:
        from ray.rllib.utils.metrics import LEARNER_RESULTS, NUM_MODULE_STEPS_TRAINED_LIFETIME

        env = self.result.get("env_runners", {}).get("num_env_steps_sampled_lifetime", 0)
        trained = self.result.get(LEARNER_RESULTS, {}).get("default_policy", {}).get(
            NUM_MODULE_STEPS_TRAINED_LIFETIME, 0)
        return int(env), int(trained)

    def close(self) -> None:
        self.algo.stop()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6000, help="measured env steps per variant")
    p.add_argument("--chunk", type=int, default=250, help="env steps per turn")
    p.add_argument("--blocks", type=int, default=6, help="groups of consecutive chunks for the spread")
    p.add_argument("--learning-starts", type=int, default=300)
    p.add_argument("--epsilon-steps", type=int, default=None,
                   help="epsilon 1.0 -> 0.05 over this many steps (default: learning starts, so the "
                        "measured window is at the final epsilon, as most of a real run is)")
    p.add_argument("--teacher-envs", type=int, nargs="+", default=[1, 4],
                   help="a teacher variant per value: envs of its vector env (same replay ratio)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.epsilon_steps = args.epsilon_steps or args.learning_starts
    import ray

    torch.set_num_threads(2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    capacity = args.learning_starts + args.steps + 2 * args.chunk
    tmp = tempfile.mkdtemp(prefix="bench-dqn-")
    variants = {"plain": PlainDQN(capacity, args.epsilon_steps),
                "plain_tuned": PlainDQN(capacity, args.epsilon_steps, tuned=True)}
    for n in args.teacher_envs:
        variants[f"teacher_{n}env"] = RLlibTeacher(args.chunk, args.learning_starts, args.epsilon_steps,
                                                   capacity + 1000, os.path.join(tmp, f"{n}env"), num_envs=n)
    try:
        for v in variants.values():  # warm-up: replay filled, epsilon at its final value
            v.advance(args.learning_starts, learn=False)
            v.advance(args.chunk)  # and one chunk of learning, not timed
        chunks = []  # per chunk: variant -> (seconds, env steps, trained samples)
        for c in range(max(1, args.steps // args.chunk)):
            order = list(variants) if c % 2 == 0 else list(reversed(variants))
            chunk = {}
            for name in order:
                v = variants[name]
                env0, trained0 = v.counts()
                started = time.perf_counter()
                v.advance(args.chunk)
                seconds = time.perf_counter() - started
                env1, trained1 = v.counts()
                chunk[name] = (seconds, env1 - env0, trained1 - trained0)
            chunks.append(chunk)
            print(f"chunk {c + 1}: " + ", ".join(f"{k} {s[1] / s[0]:.1f}" for k, s in chunk.items())
                  + " env steps/s", flush=True)
    finally:
        for v in variants.values():
            v.close()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def rate(part, name):
        return sum(c[name][1] for c in part) / sum(c[name][0] for c in part)

    n = len(chunks)
    blocks = [b for b in (chunks[i * n // args.blocks:(i + 1) * n // args.blocks] for i in range(args.blocks)) if b]
    results = {"args": vars(args), "chunks": chunks, "variants": {}}
    for name in variants:
        steps = sum(c[name][1] for c in chunks)
        results["variants"][name] = {
            "env_steps": steps, "seconds": sum(c[name][0] for c in chunks),
            "steps_per_s": rate(chunks, name),
            "trained_samples_per_env_step": sum(c[name][2] for c in chunks) / steps,
            "ratio_vs_plain": rate(chunks, name) / rate(chunks, "plain"),
            "ratio_vs_plain_per_block": [rate(b, name) / rate(b, "plain") for b in blocks],
            "ratio_vs_tuned": rate(chunks, name) / rate(chunks, "plain_tuned"),
            "ratio_vs_tuned_per_block": [rate(b, name) / rate(b, "plain_tuned") for b in blocks]}
    for name, v in results["variants"].items():
        blocks_text = ", ".join(f"{r:.2f}" for r in v["ratio_vs_plain_per_block"])
        print(f"{name}: {v['steps_per_s']:.1f} env steps/s, {v['trained_samples_per_env_step']:.3f} trained "
              f"samples per env step; {v['ratio_vs_plain']:.3f}x plain (blocks {blocks_text}), "
              f"{v['ratio_vs_tuned']:.3f}x plain tuned", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "dqn.json"), "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
