"""Seconds per gradient update of every ready experiment's imitators, at every scale, on this
machine: the speed `understudy plan` turns into distill wall-clock.

Each model is built from its stage's config (algorithm, model, batch size) and trained for a few
updates with AdamW on a batch cut from a synthetic history by the real batch maker
(histories.data.make_batch), so the update does exactly the work of a real one: speed does not
depend on the pixel values. A batch too large for this machine (more than `--max-frames` frames
of windows) is measured at a smaller batch and scaled linearly to the configured one; the JSON
says so per model (`measured_batch`).

With --attention-baseline, each transformer is also timed with dropout on its attention
weights (attention_dropout = dropout, which sends attention to the unfused computation: how
every transformer trained before 2026-12-07), interleaved with the fused one in the same run;
the JSON gets both and their ratio.

Usage: python bench/imitator_updates.py [--updates 3] [--max-frames 8192] [--only NAMES]
       [--attention-baseline] [--out docs/bench]
"""
from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import time

import numpy as np
import torch


def synthetic_history(rows: int, frame_shape: tuple, num_actions: int, episode_steps: int = 400):
    from understudy.histories.data import History

    rng = np.random.default_rng(0)
    episode_id = np.arange(rows) // episode_steps
    return History(frames=rng.integers(0, 2, (rows, *frame_shape), dtype=np.uint8),
                   actions=rng.integers(0, num_actions, rows).astype(np.int64),
                   rewards=rng.integers(-1, 2, rows).astype(np.float32),
                   episode_start=(episode_id * episode_steps).astype(np.int64), episode_id=episode_id,
                   target=np.ones(rows, bool), history_start=np.zeros(rows, np.int64))


def seconds_per_update(cfg, game: str, updates: int, max_frames: int, attention_baseline: bool = False) -> dict:
    from understudy.algorithms import imitation
    from understudy.envs import family_of
    from understudy.histories.data import make_batch

    family = family_of(game)
    num_actions = 6 if family.name == "minatar" else 5 if family.per_goal else 18
    params = cfg.model.model_dump(exclude_none=True)
    model = imitation.build(cfg.algorithm, num_actions, **params)
    variants = {"fused": (model, torch.optim.AdamW(model.parameters(), lr=cfg.lr))}
    if attention_baseline and "attention_dropout" in model.spec:
        unfused = imitation.build(cfg.algorithm, num_actions, **{**params, "attention_dropout": model.spec["dropout"]})
        variants["unfused"] = (unfused, torch.optim.AdamW(unfused.parameters(), lr=cfg.lr))
    spec = model.sample_spec()
    batch_size = max(1, min(cfg.batch_size, max_frames // (spec.length * max(1, spec.stack))))
    h = synthetic_history(max(4 * spec.length, 2000), family.frame_shape, num_actions)
    rng = np.random.default_rng(1)
    high = len(h) - spec.length if spec.kind != "step" else len(h)
    rtg = np.zeros(len(h), np.float32) if cfg.algorithm == "dt" else None
    times = {name: [] for name in variants}
    for i in range(updates + 1):  # the first update warms up
        batch = make_batch(h, rng.integers(0, high, batch_size), spec, num_actions, rtg)
        for name, (net, optimizer) in variants.items():  # interleaved: the same load on both
            started = time.perf_counter()
            imitation.train_epoch(net, optimizer, [batch])
            if i:
                times[name].append(time.perf_counter() - started)
    measured = float(np.median(times["fused"]))
    row = {"algorithm": cfg.algorithm, "model": params,
           "batch_size": cfg.batch_size, "measured_batch": batch_size, "window": spec.length,
           "measured_seconds_per_update": measured,
           "seconds_per_update": measured * cfg.batch_size / batch_size, "updates_timed": len(times["fused"])}
    if "unfused" in times:
        unfused = float(np.median(times["unfused"]))
        row.update(attention_dropout_baseline=model.spec["dropout"],
                   unfused_seconds_per_update=unfused * cfg.batch_size / batch_size,
                   fused_speedup=unfused / measured)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--max-frames", type=int, default=8192)
    p.add_argument("--only", help="experiment names, comma-separated (default: all)")
    p.add_argument("--attention-baseline", action="store_true",
                   help="also time each transformer with attention dropout (unfused), interleaved")
    p.add_argument("--out", default="docs/bench")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("UNDERSTUDY_THREADS", os.cpu_count() or 1)))
    from understudy.platform import experiment
    from understudy.platform.config import load_config, read_yaml

    configs = []
    for name in experiment.available():
        if args.only and name not in args.only.split(","):
            continue
        path = experiment.experiment_path(name)
        scales = ["demo", *[s for s in (read_yaml(path).get("scales") or {}) if s != "demo"]]
        configs += [(f"{name}/{scale}", experiment.load(name, scale)) for scale in scales]
    if not args.only:
        root = experiment.EXPERIMENTS.parent / "pipelines"
        configs += [(f"{p.stem}/-", load_config(p, expect=("pipeline",))) for p in sorted(root.glob("*.yaml"))]
    out_path = os.path.join(args.out, "imitator_updates.json")
    results = json.load(open(out_path)) if os.path.exists(out_path) else {}
    results.setdefault("models", {})
    for i, (key, cfg) in enumerate(configs, 1):
        for stage in ("distill", "ed"):
            stage_cfg = getattr(cfg, stage, None)
            if stage_cfg is None:
                continue
            game = stage_cfg.train_games[0]
            started = time.perf_counter()
            row = seconds_per_update(stage_cfg, game, args.updates, args.max_frames, args.attention_baseline)
            results["models"][f"{key}/{stage}"] = row
            print(f"[{i}/{len(configs)}] {key}/{stage}: {row['algorithm']} {row['model']} batch {row['batch_size']} "
                  f"(measured at {row['measured_batch']}): {row['seconds_per_update']:.3g}s per update"
                  + (f", {row['fused_speedup']:.2f}x faster than unfused" if "fused_speedup" in row else "")
                  + f" ({time.perf_counter() - started:.0f}s)", flush=True)
    results.update(machine=f"{os.cpu_count()} CPUs, {_platform.machine()}, no GPU" if not torch.cuda.is_available()
                   else torch.cuda.get_device_name(), torch=torch.__version__, threads=torch.get_num_threads(),
                   date=time.strftime("%Y-%m-%d %H:%M"), max_frames=args.max_frames)
    from understudy.platform.workspace import write_json_atomic

    write_json_atomic(out_path, results, indent=1)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
