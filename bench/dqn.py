"""DQN with learning, on Breakout: the RLlib DQN teacher (AtariVectorEnvRunner, recording on)
against a plain single-process PyTorch DQN loop with the same network (Nature CNN, valid
padding, one 256-unit hidden layer), the same env and the same replay ratio (one batch of 32
every 4 env steps, i.e. 8 trained samples per env step). Both measured in this one run, after
the same warm-up, as env steps per second of wall time.

Usage: python bench/dqn.py [--steps 2000] [--learning-starts 500] [--out docs/bench]
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


def plain_dqn(steps: int, learning_starts: int, epsilon_steps: int, seed: int = 0, tuned: bool = False) -> dict:
    """The baseline: act, store, and every 4th step train on 32 replayed transitions, as
    CleanRL's DQN does (channels-first frames, torch's default Adam). `tuned`: the same loop
    with the two CPU speed-ups the teacher uses (fused Adam; channels-last input, which
    torch's CPU convolutions run faster), to show what is left of framework overhead."""
    from understudy.envs import AtariProtocol, make_atari_vector_env

    env = make_atari_vector_env("Breakout", AtariProtocol(full_action_space=True), num_envs=1,
                                num_threads=1)
    q, target = q_network(18), q_network(18)
    target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam(q.parameters(), lr=2.5e-4, fused=tuned)
    layout = (lambda o: o) if tuned else (lambda o: np.moveaxis(o, -1, 1))  # frames as stored

    def net_input(frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames)
        return (x.permute(0, 3, 1, 2) if tuned else x).float() / 255.0
    capacity = learning_starts + steps + 1
    obs_buf = np.zeros((capacity, 84, 84, 4) if tuned else (capacity, 4, 84, 84), np.uint8)
    next_buf = np.zeros_like(obs_buf)
    act_buf = np.zeros(capacity, np.int64)
    rew_buf = np.zeros(capacity, np.float32)
    done_buf = np.zeros(capacity, np.float32)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    obs = layout(obs)
    n = updates = 0
    started = None
    while n < learning_starts + steps:
        if n == learning_starts:
            started = time.perf_counter()
        epsilon = max(0.05, 1.0 - 0.95 * n / epsilon_steps)
        if rng.random() < epsilon:
            action = int(rng.integers(18))
        else:
            with torch.inference_mode():
                action = int(q(net_input(obs)).argmax(-1))
        next_obs, reward, term, trunc, _ = env.step(np.array([action]))
        next_obs = layout(next_obs)
        obs_buf[n], next_buf[n], act_buf[n] = obs[0], next_obs[0], action
        rew_buf[n], done_buf[n] = reward[0], float(term[0])
        obs = next_obs
        if term[0] or trunc[0]:  # NEXT_STEP autoreset: one more step returns the new episode
            obs, *_ = env.step(np.array([0]))
            obs = layout(obs)
        n += 1
        if n > learning_starts and n % 4 == 0:
            idx = rng.integers(n, size=32)
            o, o2 = net_input(obs_buf[idx]), net_input(next_buf[idx])
            with torch.no_grad():
                best = q(o2).argmax(-1, keepdim=True)  # double Q
                target_q = torch.from_numpy(rew_buf[idx]) + 0.99 * (1 - torch.from_numpy(done_buf[idx])) \
                    * target(o2).gather(1, best).squeeze(1)
            loss = F.smooth_l1_loss(q(o).gather(1, torch.from_numpy(act_buf[idx])[:, None]).squeeze(1), target_q)
            opt.zero_grad()
            loss.backward()
            opt.step()
            updates += 1
            if updates % 500 == 0:
                target.load_state_dict(q.state_dict())
    elapsed = time.perf_counter() - started
    env.close()
    return {"steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed,
            "trained_samples_per_env_step": updates * 32 / steps}


def rllib_dqn(steps: int, learning_starts: int, epsilon_steps: int, root: str) -> dict:
    from ray.rllib.utils.metrics import LEARNER_RESULTS, NUM_MODULE_STEPS_TRAINED_LIFETIME

    from understudy.algorithms.teachers import recording_algorithm, teacher_config

    config = teacher_config(
        algorithm="dqn", game="Breakout", seed=0, env_steps_per_iter=250,
        protocol={"full_action_space": True}, max_episode_steps=None,
        record={"root": root, "session": "bench", "algorithm": "dqn"}, cnn="nature", num_envs=1,
        runner="vector", env_threads=1,
        hparams={"batch_size": 32, "learning_starts": learning_starts, "target_update": 2000,
                 "epsilon_steps": epsilon_steps,
                 "buffer_size": learning_starts + steps + 1000, "double_q": True})
    algo = recording_algorithm(config.algo_class)(config=config)  # what `understudy teach` runs

    def counts(result):
        env = result["env_runners"]["num_env_steps_sampled_lifetime"]
        trained = result.get(LEARNER_RESULTS, {}).get("default_policy", {}).get(
            NUM_MODULE_STEPS_TRAINED_LIFETIME, 0)
        return env, trained

    result = algo.train()
    while counts(result)[0] < learning_starts:
        result = algo.train()
    env0, trained0 = counts(result)
    started = time.perf_counter()
    while counts(result)[0] < env0 + steps:
        result = algo.train()
    elapsed = time.perf_counter() - started
    env1, trained1 = counts(result)
    algo.stop()
    return {"steps": env1 - env0, "seconds": elapsed, "steps_per_s": (env1 - env0) / elapsed,
            "trained_samples_per_env_step": (trained1 - trained0) / max(1, env1 - env0)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--learning-starts", type=int, default=500)
    p.add_argument("--epsilon-steps", type=int, default=None,
                   help="epsilon 1.0 -> 0.05 over this many steps (default: learning starts, so the "
                        "measured window is at the final epsilon, as most of a real run is)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.epsilon_steps = args.epsilon_steps or args.learning_starts
    import ray

    torch.set_num_threads(2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rounds = []
    try:
        # Alternate the two over rounds and report medians: this machine's speed drifts by
        # tens of percent from minute to minute, and a burst hits both alike.
        for r in range(args.rounds):
            tmp = tempfile.mkdtemp(prefix="bench-dqn-")
            plain = plain_dqn(args.steps, args.learning_starts, args.epsilon_steps)
            print(f"round {r + 1} plain PyTorch DQN loop: {plain}", flush=True)
            tuned = plain_dqn(args.steps, args.learning_starts, args.epsilon_steps, tuned=True)
            print(f"round {r + 1} plain loop, tuned: {tuned}", flush=True)
            rllib = rllib_dqn(args.steps, args.learning_starts, args.epsilon_steps, tmp)
            print(f"round {r + 1} RLlib DQN teacher (+recording): {rllib}", flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
            rounds.append({"plain": plain, "plain_tuned": tuned, "rllib_teacher": rllib,
                           "ratio": rllib["steps_per_s"] / plain["steps_per_s"],
                           "ratio_vs_tuned": rllib["steps_per_s"] / tuned["steps_per_s"]})
        med = lambda k: float(np.median([x[k]["steps_per_s"] for x in rounds]))  # noqa: E731
        results = {"args": vars(args), "rounds": rounds,
                   "plain_steps_per_s": med("plain"), "plain_tuned_steps_per_s": med("plain_tuned"),
                   "rllib_steps_per_s": med("rllib_teacher"),
                   "ratio_teacher_vs_plain": med("rllib_teacher") / med("plain"),
                   "ratio_per_round": [x["ratio"] for x in rounds],
                   "ratio_teacher_vs_tuned_plain": med("rllib_teacher") / med("plain_tuned"),
                   "ratio_vs_tuned_per_round": [x["ratio_vs_tuned"] for x in rounds]}
        print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=2))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "dqn.json"), "w") as f:
                json.dump(results, f, indent=2)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
