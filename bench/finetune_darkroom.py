"""Is the fine-tuning baseline a credible learner? A trained Dark Room AD plays 40 consecutive
episodes per goal frozen, and again fine-tuned by policy gradient as it plays
(algorithms/policy_gradient_finetune.py), on the training goals (where a learner should gain)
and on the held-out goals, at several learning rates.

    python bench/finetune_darkroom.py CHECKPOINT [--episodes 40] [--lrs 1e-5 3e-5 1e-4] [--out docs/bench]

CHECKPOINT: an AD checkpoint folder of a Dark Room distill stage (e.g. the `checkpoint` of
`<workspace>/stages/distill-darkroom_ad-imitator.json` after `understudy experiment darkroom_ad`).
Reports, per split and agent, the mean return of the first 5 and the last 5 episodes over
goals (one copy per goal, one training run: indicative, not a finding).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from understudy.platform.config import FinetuneParams
    from understudy.platform.players import Agent, play

    rows = []
    for split in ("train", "heldout"):
        runs = [("imitator", None)] + [("finetune", lr) for lr in args.lrs]
        for kind, lr in runs:
            started = time.time()
            finetune = {**FinetuneParams().model_dump(), **({"lr": lr} if lr else {})}
            out = play._function(Agent(kind, args.checkpoint, run_seed=0), "DarkRoom", {}, args.episodes, 1,
                                 None, False, 0, split, finetune, (), 1e9, 0)
            r = np.array(out["returns"], float)
            rows.append({"split": split, "agent": kind, "lr": lr, "goals": r.shape[0], "episodes": r.shape[1],
                         "first5": float(r[:, :5].mean()), "last5": float(r[:, -5:].mean()),
                         "gradient_steps": out["gradient_steps"], "seconds": time.time() - started})
            print(json.dumps(rows[-1]), flush=True)
    result = {"checkpoint": args.checkpoint, "rows": rows, "machine": f"{os.cpu_count()} CPU cores, no GPU",
              "date": time.strftime("%Y-%m-%d")}
    if args.out:
        path = os.path.join(args.out, "finetune_darkroom.json")
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
