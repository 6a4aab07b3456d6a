"""Speeds measured in real stages, read back from finished workspaces: seconds per gradient
update of distill stages, and env steps per second of each kind of playing task of evaluation
stages. `understudy plan` prefers them over the benches that time one part alone
(bench/imitator_updates.py, bench/eval.py).

bench/imitator_updates.py times the update alone. A real distill trial also evaluates the
held-out episodes every epoch, writes a checkpoint and reports to Tune (a 2-CPU trial runs at
0.95x the plain loop since the loader's mmap threshold was removed: docs/benchmarks.md).
Here each trial's seconds are Tune's own `time_total_s` (the time the trial ran, over restarts,
never the time it stood stopped) divided by the updates it made (`steps`), from the trial's
`progress.csv`; a stage's figure is the median over its trials, so one trial slowed by other
work beside it does not set it. What else ran on the machine is not known here: the JSON keeps
every trial's figure.

An evaluation's playing task (an agent on a game, one training run, all its copies) records its
own seconds and env steps (evaluate manifests since 2026-12-07: `rows[].tasks`); a kind's speed
is its tasks' env steps over their seconds. Imitators' tasks are keyed by their model too.

An evaluation also says how long its episodes were: the imitator and the teacher play a number
of episodes (the baselines play the imitator's env steps), so their env steps over the episodes
of all copies is the mean episode length on each game. Such a figure depends on what played, so
it is keyed by the digests of the evaluation's, the teach stage's and the imitator's configs: the
plan uses it only for this very stage run again, in place of its upper bound.

The figures of workspaces read before and not read again are kept in the JSON.

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


def finished_manifests(workspace: str, kind: str):
    """(path, manifest) of every finished stage of `kind` in a workspace."""
    for path in sorted(glob.glob(os.path.join(workspace, "stages", f"{kind}-*.json"))):
        if not path.endswith(".running.json"):
            with open(path) as f:
                yield path, json.load(f)


def distill_stages(workspace: str) -> list[dict]:
    """Every finished distill stage of a workspace with its trials' measured speeds."""
    from understudy.platform.config import DistillConfig

    found = []
    for path, manifest in finished_manifests(workspace, "distill"):
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
                      "precision": cfg.precision,
                      "finished": time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path))),
                      "trials": trials,
                      "seconds_per_update": statistics.median(t["seconds_per_update"] for t in trials.values())})
    return found


def evaluate_stages(workspace: str) -> list[dict]:
    """Per finished evaluation stage, agent and env family: env steps per second of one task."""
    from understudy.envs import family_of
    from understudy.platform.config import DistillConfig
    from understudy.platform.resources import MODEL_AGENTS

    def model_of(stage: str | None) -> dict | None:
        path = os.path.join(workspace, "stages", f"distill-{stage}.json")
        if not stage or not os.path.isfile(path):
            return None
        with open(path) as f:
            return DistillConfig.model_validate(json.load(f)["config"]).model.model_dump(exclude_none=True)

    found = []
    for path, manifest in finished_manifests(workspace, "evaluate"):
        stages = manifest.get("stages") or {}
        kinds: dict[tuple, list] = {}
        for row in manifest["rows"]:
            if row.get("tasks"):
                kinds.setdefault((row["agent"], family_of(row["game"]).name), []).extend(row["tasks"])
        for (agent, family), tasks in sorted(kinds.items()):
            seconds, steps = sum(t["seconds"] for t in tasks), sum(t["env_steps"] for t in tasks)
            # agents that run an imitator's network (the controls: the imitator's own checkpoints)
            model = model_of(stages.get("ed" if agent == "ed" else "imitator")) \
                if agent in MODEL_AGENTS else None
            found.append({"stage": manifest["name"], "workspace": os.path.abspath(workspace), "agent": agent,
                          "family": family, "model": model, "tasks": len(tasks), "env_steps": steps,
                          "seconds": round(seconds, 1),
                          "finished": time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path))),
                          "env_steps_per_s": steps / seconds if seconds > 0 else None})
    return found


def episode_steps(workspace: str) -> list[dict]:
    """Per finished evaluation stage: the mean episode length of every agent that plays a
    number of episodes (imitator, teacher), per game, with the digests of the configs it ran."""
    found, upstream_digests = [], {}  # every rotation shares one teach stage: read it once

    def digest_of(path: str) -> str | None:
        if path not in upstream_digests:
            with open(path) as f:
                upstream_digests[path] = json.load(f).get("config_digest")
        return upstream_digests[path]

    for path, manifest in finished_manifests(workspace, "evaluate"):
        stages = manifest.get("stages") or {}
        digests = {"evaluate": manifest.get("config_digest")}
        for role, kind in (("teacher", "teach"), ("imitator", "distill")):
            upstream = os.path.join(workspace, "stages", f"{kind}-{stages.get(role)}.json")
            if stages.get(role) and os.path.isfile(upstream):
                digests[role] = digest_of(upstream)
        if not all(digests.get(k) for k in ("evaluate", "teacher", "imitator")):
            continue  # written before its digests and stages were recorded
        lengths: dict[str, dict] = {}
        for row in manifest["rows"]:
            if row["agent"] in ("imitator", "teacher") and row.get("env_steps") and row.get("episodes") \
                    and row.get("copies"):
                lengths.setdefault(row["agent"], {})[row["game"]] = row["env_steps"] / (row["episodes"] * row["copies"])
        if lengths:
            found.append({"stage": manifest["name"], "workspace": os.path.abspath(workspace), "digests": digests,
                          "finished": time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path))),
                          "mean_episode_steps": lengths})
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
    plays = [p for ws in args.workspaces for p in evaluate_stages(ws) if p["env_steps_per_s"]]
    for p in plays:
        print(f"{p['stage']}: {p['agent']} on {p['family']}: {p['env_steps_per_s']:.0f} env steps/s "
              f"({p['tasks']} tasks, {p['env_steps']} env steps in {p['seconds']:.0f}s)")
    lengths = [e for ws in args.workspaces for e in episode_steps(ws)]
    for e in lengths:
        print(f"{e['stage']}: mean episode steps " + "; ".join(
            f"{agent} " + ", ".join(f"{g} {n:.0f}" for g, n in sorted(games.items()))
            for agent, games in sorted(e["mean_episode_steps"].items())))
    # The figures of workspaces not read this time stay (their runs may be gone from this machine)
    read = {os.path.abspath(ws) for ws in args.workspaces}
    before = json.load(open(args.out)) if os.path.exists(args.out) else {}

    def kept(key: str, new: list) -> list:
        return [e for e in before.get(key, []) if e.get("workspace") not in read] + new

    stages, plays, lengths = kept("distill", stages), kept("evaluate", plays), kept("episode_steps", lengths)
    report = {"machine": f"{os.cpu_count()} CPUs, {_platform.machine()}, no GPU",
              "what": "seconds per gradient update in real distill trials: Tune's time_total_s / steps, "
                      "held-out evaluation, checkpoints and reports included; median over a stage's trials",
              "distill": stages,
              "evaluate_what": "env steps per second of one playing task (an agent on a game, one run, all its "
                               "copies): its env steps over its own seconds, summed over a stage's tasks",
              "evaluate": plays,
              "episode_steps_what": "mean episode length of the agents that play a number of episodes, per "
                                    "evaluation stage and game; keyed by the digests of the evaluate, teach "
                                    "and imitator configs it ran",
              "episode_steps": lengths}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(stages)} distill stages, {len(plays)} kinds of playing task, "
          f"{len(lengths)} evaluations' episode lengths)")


if __name__ == "__main__":
    main()
