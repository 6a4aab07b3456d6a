"""Seconds per gradient update measured in real distill stages, read back from finished
workspaces: the speed `understudy plan` prefers over bench/imitator_updates.py's.

bench/imitator_updates.py times the update alone. A real distill trial also evaluates the
held-out episodes every epoch, writes a checkpoint and reports to Tune, and its updates ran
about 1.7x slower than the bench's on this machine (2026-12-07; not explained: docs/benchmarks.md).
Here each trial's seconds are Tune's own `time_total_s` (the time the trial ran, over restarts,
never the time it stood stopped) divided by the updates it made (`steps`), from the trial's
`progress.csv`; a stage's figure is the median over its trials, so one trial slowed by other
work beside it does not set it. What else ran on the machine is not known here: the JSON keeps
every trial's figure.

Usage: python bench/stage_speeds.py WORKSPACE [WORKSPACE ...] [--out docs/bench/stage_speeds.json]
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform as _platform
import statistics
import time


def trial_seconds_per_update(trial_dir: str) -> dict | None:
    """(seconds, updates) of one Tune trial, from the last row of its progress.csv."""
    path = os.path.join(trial_dir, "progress.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not rows[-1].get("steps") or not rows[-1].get("time_total_s"):
        return None
    seconds, updates = float(rows[-1]["time_total_s"]), int(float(rows[-1]["steps"]))
    return {"seconds": round(seconds, 1), "updates": updates, "seconds_per_update": seconds / max(updates, 1)}


def distill_stages(workspace: str) -> list[dict]:
    """Every finished distill stage of a workspace with its trials' measured speeds."""
    from understudy.platform.config import DistillConfig

    found = []
    for path in sorted(glob.glob(os.path.join(workspace, "stages", "distill-*.json"))):
        if path.endswith(".running.json"):
            continue
        with open(path) as f:
            manifest = json.load(f)
        if "attention_dropout" not in manifest["config"].get("model", {}):
            # Written before 2026-12-07: its transformer ran attention unfused, another computation.
            print(f"{path}: skipped, trained before attention was fused", flush=True)
            continue
        cfg = DistillConfig.model_validate(manifest["config"])
        trials = {}
        for trial in manifest.get("trials", []):
            trial_dir = os.path.dirname(trial["checkpoint"]) if trial.get("checkpoint") else None
            measured = trial_seconds_per_update(trial_dir) if trial_dir else None
            if measured:
                trials[str(trial["seed"])] = measured
        if not trials:
            continue
        found.append({"stage": manifest["name"], "workspace": os.path.abspath(workspace),
                      "algorithm": cfg.algorithm, "model": cfg.model.model_dump(exclude_none=True),
                      "batch_size": cfg.batch_size, "cpus_per_trial": cfg.cpus_per_trial,
                      "finished": time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path))),
                      "trials": trials,
                      "seconds_per_update": statistics.median(t["seconds_per_update"] for t in trials.values())})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspaces", nargs="+")
    parser.add_argument("--out", default="docs/bench/stage_speeds.json")
    args = parser.parse_args()
    stages = [s for ws in args.workspaces for s in distill_stages(ws)]
    for s in stages:
        per_trial = ", ".join(f"{t['seconds_per_update']:.3f}" for t in s["trials"].values())
        print(f"{s['stage']}: {s['seconds_per_update']:.3f} s per update (trials: {per_trial})")
    report = {"machine": f"{os.cpu_count()} CPUs, {_platform.machine()}, no GPU",
              "what": "seconds per gradient update in real distill trials: Tune's time_total_s / steps, "
                      "held-out evaluation, checkpoints and reports included; median over a stage's trials",
              "distill": stages}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(stages)} stages)")


if __name__ == "__main__":
    main()
