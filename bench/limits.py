"""How close imitator training runs to this machine's limit (docs/bench/training_limits.json).

1. peak     dense matmul GFLOP/s at 2 threads, float32 and (where the CPU has it) bfloat16:
            the best of several square products, the ceiling every MFU below is measured against.
2. flops    each update's FLOPs, counted analytically (ad_update_flops): the CNN encoder, the
            step embedding, attention and MLP of every layer, the action head; training counts
            3x the forward pass (the backward pass is two matmuls per forward matmul).
3. update   the MinAtar AD update (context 512, d_model 64, 3 layers, batch 8: the ready MinAtar
            experiments' full-scale model) on the same synthetic batches, as
            bench/imitator_updates.py times it, before and after:
              before  float32 and torch's bernoulli dropout (nets.dropout's baseline), as the
                      code ran before 2026-12-07
              after   bfloat16 mixed precision and nets.dropout
            each in a fresh process, alternated over rounds; medians.
4. stage    a distill stage of 2 seeds of the same model, run by the platform's own Tune trainable
            (distill.train_imitator) on real MinAtar Breakout shards (random play recorded
            through ShardWriter): tokens over the fit's wall-clock, before (2 CPUs a trial, as
            the ready experiments ran) and after with 2 CPUs a trial and with 1 CPU a trial (two
            at once); "before" adds what every loader did before
            2026-12-07: glibc's mmap threshold set to 1 MB (mallopt), so each update faulted its
            activations in afresh. And the plain loop (the same loader, model and batches in a
            plain process, "after"), for trial_to_bench_ratio (a 2-CPU trial's own samples/s).

Usage: python bench/limits.py [--rounds 2] [--updates 12] [--stage-updates 120] [--out docs/bench]
       python bench/limits.py --skip-stage   (1-3 only, about a minute)
"""
from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import subprocess
import sys
import tempfile
import time

import numpy as np

MODEL = {"cnn": "minatar", "stack": 1, "context": 512, "d_model": 64, "layers": 3, "heads": 4}
BATCH, ACTIONS, FRAME = 8, 6, (10, 10, 10)
# conv layers of each encoder: (out channels, kernel, stride) and its input (height, width, channels)


def matmul_peak(dtype: str, sizes=(1024, 2048), repeats: int = 5) -> float:
    """The best dense matmul GFLOP/s over square sizes (2 n^3 FLOPs each), at torch's threads."""
    import torch

    best = 0.0
    for n in sizes:
        a = torch.randn(n, n).to(getattr(torch, dtype))
        b = torch.randn(n, n).to(getattr(torch, dtype))
        a @ b  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - started) / 1e9)
    return best


def has_bf16() -> bool:
    """AVX-512 bf16 or AMX: the CPU multiplies bfloat16 natively (else autocast emulates it)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def encoder_flops(cnn: str, stack: int, d_model: int) -> float:
    """Forward FLOPs of one frame through the encoder (algorithms.nets.FrameEncoder): each conv's
    multiply-adds (2 per) and the linear layer to d_model."""
    from understudy.algorithms.encoders import ENCODERS

    if cnn == "grid":
        return 2 * 2 * d_model
    height, width, channels = ENCODERS[cnn].frame
    channels *= stack
    flops = 0.0
    for out, kernel, stride in ENCODERS[cnn].convs:
        height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        flops += 2 * height * width * out * channels * kernel * kernel
        channels = out
    return flops + 2 * height * width * channels * d_model


def ad_update_flops(model: dict, batch: int, num_actions: int) -> dict:
    """FLOPs of one AD training update on `batch` windows of `context` tokens, by part.

    Per token, forward: the encoder (encoder_flops); the step embedding (the reward's linear
    layer, 2 d); per layer the q/k/v and output projections (8 d^2) and the MLP (16 d^2), and
    causal attention: token t scores t+1 keys and mixes t+1 values (4 d (t+1)), 2 d (L+1) per
    token on average; the action head (2 d A). Training = 3 x forward."""
    d, L, layers = model["d_model"], model["context"], model["layers"]
    tokens = batch * L
    forward = {"encoder": encoder_flops(model["cnn"], model.get("stack", 1), d) * tokens,
               "embedding": 2 * d * tokens,
               "projections_and_mlp": 24 * d * d * layers * tokens,
               "attention": 2 * d * (L + 1) * layers * tokens,
               "head": 2 * d * num_actions * tokens}
    total = 3 * sum(forward.values())
    return {"tokens": tokens, "forward_by_part": forward, "training_flops": total,
            "share_by_part": {k: v / sum(forward.values()) for k, v in forward.items()}}


def _synthetic_batches(n: int, seed: int = 1) -> list:
    """`n` batches cut by the real batch maker from bench/imitator_updates.py's synthetic history
    (the update's speed does not depend on the values)."""
    from imitator_updates import synthetic_history  # bench/ is on sys.path: this script's folder

    from understudy.algorithms import imitation
    from understudy.histories.data import make_batch

    h = synthetic_history(4000, FRAME, ACTIONS)
    spec = imitation.build("ad", ACTIONS, **MODEL).sample_spec()
    pick = np.random.default_rng(seed)
    return [make_batch(h, pick.integers(0, len(h) - spec.length, BATCH), spec, ACTIONS) for _ in range(n)]


def _old_dropout() -> None:
    """The transformer's dropout as before 2026-12-07: torch's own (bernoulli_ masks)."""
    import torch.nn.functional as F

    from understudy.algorithms import nets

    nets.dropout = lambda x, p, training: F.dropout(x, p, training)


def _old_heap() -> None:
    """What every loader did before 2026-12-07: glibc's mmap threshold at 1 MB."""
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)


def child_update(mode: str, updates: int) -> dict:
    """In a fresh process: seconds per update of the MinAtar AD model on synthetic batches."""
    import torch

    torch.set_num_threads(2)
    from understudy.algorithms import imitation

    if mode == "before":
        _old_dropout()
    precision = "float32" if mode == "before" else "bfloat16"
    torch.manual_seed(0)
    model = imitation.build("ad", ACTIONS, **MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    batches = _synthetic_batches(updates + 1)
    imitation.train_epoch(model, optimizer, batches[:1], precision=precision)  # warm-up
    result = imitation.train_epoch(model, optimizer, batches[1:], precision=precision)
    return {"seconds_per_update": result["seconds"] / result["batches"]}


def _loader(root: str, model, cycle: bool = True):
    from understudy.histories import data

    histories = data.index_runs(root, ["random-minatar-breakout"])
    return data.Loader(root, histories, model.sample_spec(), BATCH, ACTIONS, cycle=cycle)


def child_plain(updates: int, root: str) -> dict:
    """In a fresh process: the plain PyTorch loop on the real loader, the configuration 'after'."""
    import torch

    torch.set_num_threads(2)
    from understudy.algorithms import imitation

    torch.manual_seed(0)
    model = imitation.build("ad", ACTIONS, **MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loader = _loader(root, model)
    imitation.train_epoch(model, optimizer, loader, max_batches=2, precision="bfloat16")  # warm-up
    result = imitation.train_epoch(model, optimizer, loader, max_batches=updates, precision="bfloat16")
    return {"samples_per_s": result["samples_per_s"], "seconds_per_update": result["seconds"] / result["batches"]}


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    if out.returncode != 0:
        raise RuntimeError(f"bench child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def record_random_minatar(root: str, steps: int) -> None:
    """Random play of MinAtar Breakout through the platform's ShardWriter (a real history)."""
    from understudy.envs.families import make_play_env
    from understudy.histories import shards

    run_id = "random-minatar-breakout"
    static = {"game": "MinAtar/Breakout", "algorithm": "random", "seed": 0}
    shards.write_run_metadata(root, run_id, {**static, "protocol": {}})
    writer = shards.ShardWriter(root, run_id, static, env_runner=0, max_rows=20_000)
    n = 8
    env = make_play_env("MinAtar/Breakout", n)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    open_eps: list[list] = [[] for _ in range(n)]
    episode = global_step = 0
    while global_step < steps:
        actions = rng.integers(ACTIONS, size=n)
        next_obs, rewards, terminated, truncated, _ = env.step(actions)
        for i in range(n):
            open_eps[i].append((obs[i], actions[i], rewards[i], terminated[i], truncated[i]))
            if terminated[i] or truncated[i]:
                rows, t = open_eps[i], len(open_eps[i])
                cols = {"step": np.arange(t), "global_step": np.arange(global_step, global_step + t),
                        "policy_version": np.zeros(t, np.int64), "frame": np.stack([r[0] for r in rows]),
                        "action": np.array([r[1] for r in rows]), "reward": np.array([r[2] for r in rows]),
                        "terminated": np.array([r[3] for r in rows]), "truncated": np.array([r[4] for r in rows]),
                        "lives": np.zeros(t), "epsilon": None, "policy_outputs": None}
                writer.add(shards.Episode(0, episode, cols, float(sum(r[2] for r in rows))))
                episode, global_step = episode + 1, global_step + t
                open_eps[i] = []
        obs = next_obs
    writer.flush()
    env.close()


def _old_trainable(config: dict) -> None:
    """The platform's trainable as it ran before 2026-12-07: glibc's mmap threshold at 1 MB,
    torch's bernoulli dropout (and float32, from the config)."""
    from understudy.platform.distill import train_imitator

    _old_heap()
    _old_dropout()
    train_imitator(config)


def stage_fit(root: str, mode: str, updates: int, cpus: int, seeds=(0, 1)) -> dict:
    """A distill stage of `len(seeds)` AD seeds run by the platform's own Tune trainable on the
    recorded shards, `cpus` CPUs per trial (2: one trial at a time, 1: two at once): tokens
    trained over the fit's wall-clock (trial start-up, loader, held-out-free epochs, checkpoints
    and reports included), and each trial's own samples per second (train_epoch's figure)."""
    from ray import tune

    from understudy.histories import shards
    from understudy.platform.config import DistillConfig
    from understudy.platform.distill import train_imitator

    cfg = DistillConfig(teacher="bench", game="MinAtar/Breakout", algorithm="ad", model=MODEL,
                        data={"heldout_episodes": 0}, epochs=1, batch_size=BATCH, lr=3e-4,
                        max_batches_per_epoch=updates, cycle_data=True, cpus_per_trial=cpus,
                        allow_short_context=True, allow_unlearned=True,
                        precision="float32" if mode == "before" else "bfloat16")
    run_ids = ["random-minatar-breakout"]
    context = {"shard_root": root, "run_ids": run_ids, "data_version": shards.data_version(root, run_ids),
               "skipped_shards": [], "storage_path": tempfile.mkdtemp()}
    trainable = _old_trainable if mode == "before" else train_imitator
    space = {"distill": {**cfg.model_dump(), "seed": tune.grid_search(list(seeds))}, "context": context}
    started = time.perf_counter()
    grid = tune.Tuner(tune.with_resources(trainable, {"cpu": cpus}), param_space=space,
                      run_config=tune.RunConfig(storage_path=context["storage_path"], verbose=0)).fit()
    wall = time.perf_counter() - started
    trials = [r.metrics for r in grid]
    if any(r.error for r in grid):
        raise RuntimeError(f"a bench trial failed: {[str(r.error)[:300] for r in grid if r.error]}")
    tokens = sum(m["train_targets"] for m in trials)
    return {"tokens_per_s": tokens / wall, "wall_s": wall, "trial_samples_per_s": [m["samples_per_s"] for m in trials]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--updates", type=int, default=12)
    p.add_argument("--stage-updates", type=int, default=120)
    p.add_argument("--history-steps", type=int, default=200_000)
    p.add_argument("--skip-stage", action="store_true")
    p.add_argument("--out", default="docs/bench")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        out = (child_update(rest[0], int(rest[1])) if kind == "update"
               else child_plain(int(rest[0]), rest[1]))
        print(json.dumps(out))
        return
    import torch

    torch.set_num_threads(2)
    results: dict = {"machine": f"{os.cpu_count()} CPUs, {_platform.machine()}, no GPU", "torch": torch.__version__,
                     "threads": 2, "date": time.strftime("%Y-%m-%d %H:%M"), "model": {**MODEL, "batch": BATCH}}
    peak = {"float32": matmul_peak("float32")}
    if has_bf16():
        peak["bfloat16"] = matmul_peak("bfloat16")
    results["matmul_peak_gflops"] = peak
    print("[limits] matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()), flush=True)
    flops = ad_update_flops(MODEL, BATCH, ACTIONS)
    results["ad_minatar_flops"] = flops
    print(f"[limits] AD update: {flops['training_flops'] / 1e9:.2f} GFLOP ({flops['tokens']} tokens; "
          + ", ".join(f"{k} {v:.0%}" for k, v in flops["share_by_part"].items()) + ")", flush=True)

    times: dict = {"before": [], "after": []}
    for r in range(args.rounds):
        for mode in ("before", "after"):  # alternated: the same machine state for both
            times[mode].append(_run_child("update", mode, str(args.updates))["seconds_per_update"])
        print(f"[limits] update round {r + 1}/{args.rounds}: before {times['before'][-1]:.3f} s, "
              f"after {times['after'][-1]:.3f} s", flush=True)
    before, after = (float(np.median(times[m])) for m in ("before", "after"))
    tokens = flops["tokens"]
    ad = {"tokens_per_s_before": tokens / before, "tokens_per_s_after": tokens / after, "speedup": before / after,
          "seconds_per_update_rounds": times,
          "mfu_before": flops["training_flops"] / before / 1e9 / peak["float32"],
          "mfu_after": flops["training_flops"] / after / 1e9 / peak["float32"]}
    if "bfloat16" in peak:
        ad["mfu_after_of_bf16_peak"] = flops["training_flops"] / after / 1e9 / peak["bfloat16"]
    results["ad_minatar"] = ad
    print(f"[limits] bench: {ad['tokens_per_s_before']:.0f} -> {ad['tokens_per_s_after']:.0f} tokens/s, "
          f"{ad['speedup']:.2f}x; MFU {ad['mfu_before']:.0%} -> {ad['mfu_after']:.0%} of the float32 peak", flush=True)

    if not args.skip_stage:
        import ray

        root = tempfile.mkdtemp(prefix="limits-bench-")
        started = time.perf_counter()
        record_random_minatar(root, args.history_steps)
        print(f"[limits] recorded {args.history_steps} steps of MinAtar Breakout in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        time.sleep(5)
        stage: dict = {"before": [], "after_2cpu": [], "after_1cpu": [], "trial_before": [], "trial_after": [],
                       "plain": []}
        try:
            for r in range(args.rounds):
                before = stage_fit(root, "before", args.stage_updates, 2)
                after2 = stage_fit(root, "after", args.stage_updates, 2)
                after1 = stage_fit(root, "after", args.stage_updates, 1)
                stage["before"].append(before["tokens_per_s"])
                stage["after_2cpu"].append(after2["tokens_per_s"])
                stage["after_1cpu"].append(after1["tokens_per_s"])
                stage["trial_before"] += before["trial_samples_per_s"]
                stage["trial_after"] += after2["trial_samples_per_s"]
                stage["plain"].append(_run_child("plain", str(args.stage_updates), root)["samples_per_s"])
                print(f"[limits] stage round {r + 1}/{args.rounds} (2 seeds, tokens/s over the fit's wall-clock): "
                      f"before (2 CPUs a trial) {stage['before'][-1]:.0f}, after with 2 CPUs a trial "
                      f"{stage['after_2cpu'][-1]:.0f}, with 1 CPU a trial (two at once) {stage['after_1cpu'][-1]:.0f}; "
                      f"a 2-CPU trial's own rate before {np.mean(before['trial_samples_per_s']):.0f}, after "
                      f"{np.mean(after2['trial_samples_per_s']):.0f}; the plain loop {stage['plain'][-1]:.0f}",
                      flush=True)
        finally:
            ray.shutdown()
        med = {k: float(np.median(v)) for k, v in stage.items()}
        best_layout = "1 CPU a trial, two at once" if med["after_1cpu"] > med["after_2cpu"] else "2 CPUs a trial"
        s_after = max(med["after_1cpu"], med["after_2cpu"])
        ad.update(stage_tokens_per_s_before=med["before"], stage_tokens_per_s_after=s_after,
                  stage_speedup=s_after / med["before"], stage_layout_after=best_layout,
                  stage_tokens_per_s_after_2cpu=med["after_2cpu"], stage_tokens_per_s_after_1cpu=med["after_1cpu"],
                  trial_to_bench_ratio=med["trial_after"] / med["plain"],
                  trial_to_bench_ratio_before=med["trial_before"] / med["plain"],
                  plain_loop_tokens_per_s=med["plain"], stage_rounds=stage,
                  stage_mfu_before=flops["training_flops"] * med["before"] / tokens / 1e9 / peak["float32"],
                  stage_mfu_after=flops["training_flops"] * s_after / tokens / 1e9 / peak["float32"])
        print(f"[limits] stage: {med['before']:.0f} -> {s_after:.0f} tokens/s ({best_layout}), "
              f"{ad['stage_speedup']:.2f}x; a 2-CPU trial / the plain loop {ad['trial_to_bench_ratio']:.2f}",
              flush=True)
    path = os.path.join(args.out, "training_limits.json")
    from understudy.platform.workspace import write_json_atomic

    write_json_atomic(path, results, indent=1)  # one run's figures only: nothing measured at another time is kept
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
