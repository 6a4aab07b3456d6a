"""Collection speed, memory and bytes on disk, on one game (default ALE Breakout; or a MinAtar
game, `--game MinAtar/Breakout`), all measured in this one run.

Variants (interleaved over several rounds; medians reported, so a burst of load elsewhere on
the machine hits all of them alike):
  raw        the family's vector env (ale-py AtariVectorEnv; MinAtarVectorEnv), random actions,
             no policy, no recording: the baseline
  teacher    AtariVectorEnvRunner.sample(): PPO policy (Nature CNN) acting + recording
  no-record  the same runner with recording off
  policy     the runner's batched acting alone (forward pass and sampling) on a fixed batch of
             observations, no env: with `raw` it bounds a collector that steps and acts in turn
             (ceiling = 1 / (1/raw + 1/policy))
  rllib      RLlib's own SingleAgentEnvRunner on gymnasium wrappers + recording (reference;
             ALE only: MinAtar has no gymnasium env here, only the vector env)
Memory: the collector's peak RSS after 10k and after 100k recorded steps (--memory).

Usage: python bench/collection.py [--game G] [--steps 6000] [--rounds 3] [--memory] [--out docs/bench]
(-> collection.json for ALE Breakout, collection_<family>_<game>.json otherwise)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time

import numpy as np


def make_raw(game: str, envs: int, threads: int):
    from understudy.envs import AtariProtocol, family_of, make_atari_vector_env

    if family_of(game).name == "ale":
        env = make_atari_vector_env(game, AtariProtocol(full_action_space=True), num_envs=envs,
                                    num_threads=threads)
    else:
        env = family_of(game).make_vector_env(game, envs)
    env.reset(seed=0)
    return env


def time_raw(env, steps: int) -> float:
    rng = np.random.default_rng(0)
    n, actions = env.batch_size, env.single_action_space.n
    done, started = 0, time.perf_counter()
    while done < steps:
        env.step(rng.integers(actions, size=n))
        done += n
    return done / (time.perf_counter() - started)


def make_runner(game: str, envs: int, threads: int, record_root: str | None, runner: str, session: str,
                shard_rows: int = 20_000):
    from understudy.algorithms.presets import PPOSettings
    from understudy.algorithms.teachers import teacher_config
    from understudy.envs import family_of

    ale = family_of(game).name == "ale"
    record = ({"root": record_root, "session": session, "algorithm": "ppo", "shard_rows": shard_rows}
              if record_root else None)
    config = teacher_config(algorithm="ppo", game=game, seed=0, env_steps=10**9,
                            env_steps_per_iter=envs * 64, protocol={"full_action_space": True} if ale else {},
                            max_episode_steps=None, record=record, cnn="nature" if ale else "minatar",
                            num_envs=envs,
                            lr=2.5e-4, reward="sign", settings=PPOSettings(), runner=runner,
                            env_threads=threads)
    algo = config.build_algo()
    algo.env_runner.sample(num_timesteps=envs * 20)  # warm-up
    return algo


def time_runner(algo, steps: int) -> float:
    env_runner = algo.env_runner
    per_call = env_runner.num_envs * 64
    started, done = time.perf_counter(), 0
    while done < steps:
        done += sum(len(e) for e in env_runner.sample(num_timesteps=per_call))
    return done / (time.perf_counter() - started)


def time_policy(algo, steps: int) -> float:
    """Observations per second through the runner's batched acting alone (no env)."""
    env_runner = algo.env_runner
    env_runner.sample(num_timesteps=env_runner.num_envs)  # its buffers exist
    obs = np.ascontiguousarray(env_runner._batch[0])
    started, done = time.perf_counter(), 0
    while done < steps:
        env_runner._act(obs, True, False, 0)
        done += len(obs)
    return done / (time.perf_counter() - started)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_profile(game: str, envs: int, threads: int, root: str) -> dict:
    """Peak RSS after 10k and after 100k recorded steps in one collector. Shards of 5k rows, so
    the first flush (the writer's largest transient buffer) is already behind the 10k mark."""
    algo = make_runner(game, envs, threads, root, "vector", "bench-memory", shard_rows=5_000)
    out, done = {}, 0
    env_runner = algo.env_runner
    for mark in (10_000, 100_000):
        while done < mark:
            done += sum(len(e) for e in env_runner.sample(num_timesteps=envs * 64))
        out[mark] = peak_rss_mb()
        print(f"  peak RSS after {done} steps: {out[mark]:.0f} MB", flush=True)
    algo.stop()
    return {"peak_rss_mb_10k": out[10_000], "peak_rss_mb_100k": out[100_000],
            "growth_10k_to_100k": out[100_000] / out[10_000]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--game", default="Breakout", help="an ALE or MinAtar game (MinAtar/Breakout)")
    p.add_argument("--steps", type=int, default=6_000, help="steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="C++ threads of the raw baseline env")
    p.add_argument("--runner-threads", type=int, default=1,
                   help="C++ threads of the runner's env (the other core runs the policy)")
    p.add_argument("--rllib-steps", type=int, default=1_500)
    p.add_argument("--memory", action="store_true", help="also measure RSS at 10k and 100k steps")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="folder for collection.json")
    args = p.parse_args()
    import ray
    import torch

    torch.set_num_threads(1)  # one core infers while the env's C++ threads step the other half
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="bench-shards-")
    if args.memory_only:  # a fresh process, so peak RSS is the collector's alone
        try:
            print("MEMORY " + json.dumps(memory_profile(args.game, args.envs, args.threads, tmp)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        from understudy.envs import family_of

        ale = family_of(args.game).name == "ale"
        raws = {n: make_raw(args.game, n, args.threads) for n in sorted({8, args.envs})}
        teacher = make_runner(args.game, args.envs, args.runner_threads, tmp, "vector", "bench-vector")
        plain = make_runner(args.game, args.envs, args.runner_threads, None, "vector", "none")
        rllib = make_runner(args.game, 8, args.runner_threads, tmp, "rllib", "bench-rllib") if ale else None
        samples = {k: [] for k in ["raw8", f"raw{args.envs}", "teacher", "no_record", "policy"]
                   + (["rllib"] if ale else [])}
        for r in range(args.rounds):
            for n, env in raws.items():
                samples[f"raw{n}"].append(time_raw(env, args.steps))
            samples["teacher"].append(time_runner(teacher, args.steps))
            samples["no_record"].append(time_runner(plain, args.steps))
            samples["policy"].append(time_policy(plain, args.steps))
            if rllib is not None:
                samples["rllib"].append(time_runner(rllib, args.rllib_steps))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in samples.items())
                  + " steps/s", flush=True)
        for algo in (teacher, plain, rllib):
            if algo is not None:
                algo.stop()
        med = {k: statistics.median(v) for k, v in samples.items()}
        raw = max(med["raw8"], med[f"raw{args.envs}"])
        ceiling = 1 / (1 / med[f"raw{args.envs}"] + 1 / med["policy"])  # step, then act, per batch
        from understudy.histories import shards

        run_id = next(r for r in os.listdir(tmp) if r.endswith("-bench-vector"))
        catalog = shards.read_catalog(tmp, run_id)
        rows, size = sum(e["rows"] for e in catalog), sum(e["bytes"] for e in catalog)
        frame_bytes = int(np.prod(family_of(args.game).frame_shape))
        results = {
            "game": args.game, "args": vars(args), "samples_steps_per_s": samples, "median_steps_per_s": med,
            "bytes_per_step": size / rows, "recorded_rows": rows,
            "ratios": {
                "teacher_vs_raw": med["teacher"] / raw,
                "ceiling_vs_raw": ceiling / raw,
                "teacher_vs_ceiling": med["teacher"] / ceiling,
                "record_on_vs_off": med["teacher"] / med["no_record"],
                "bytes_per_step_vs_raw_frame": size / rows / frame_bytes,
                **({"rllib_runner_vs_raw": med["rllib"] / raw,
                    "teacher_vs_rllib_runner": med["teacher"] / med["rllib"]} if ale else {}),
            },
        }
        if args.memory:
            import subprocess
            import sys

            out = subprocess.run([sys.executable, __file__, "--memory-only", "--game", args.game,
                                  "--envs", str(args.envs), "--threads", str(args.runner_threads)],
                                 capture_output=True, text=True, check=True).stdout
            results["memory"] = json.loads(out.split("MEMORY ", 1)[1])
        print(json.dumps({k: v for k, v in results.items() if k != "samples_steps_per_s"}, indent=2))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            name = "collection.json" if args.game == "Breakout" else \
                f"collection_{args.game.replace('/', '_').lower()}.json"
            path = os.path.join(args.out, name)
            with open(path + ".tmp", "w") as f:
                json.dump(results, f, indent=2)
            os.replace(path + ".tmp", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
