"""`understudy demo`: the finding in a few minutes. A short real Atari teach-and-record stage
exercises the Atari path (ALE ROMs, RLlib, the recording EnvRunner, shards, MLflow); then a
ready Dark Room experiment, sized to fit, shows a frozen Algorithm Distillation model learning
in context on goals it never saw while expert distillation (ED) does not. The demo ends with
that curve: the mean fraction of each held-out goal's optimum per consecutive episode, per agent,
as a table and a PNG, both also on the study's parent run in MLflow with the curves as metrics
(`curve/<agent>`, step = episode), so MLflow's chart view draws them too.
"""
from __future__ import annotations

import time

import numpy as np

from understudy.platform import plots, tracking
from understudy.platform.config import DemoConfig
from understudy.platform.workspace import Workspace, write_json_atomic

# What the README says the demo shows, checked on its own numbers at the end (not a pass/fail
# of the run: a demo that does not show it says so in its last lines).
AD_LATE_AT_LEAST = 0.5  # AD's last episodes: at least half of the optimum
ED_FLAT_WITHIN = 0.1  # ED's late - early: within this of 0
WINDOW = 5  # early: the first WINDOW episodes; late: the last WINDOW


def fraction_curves(episodes: list[dict], agents: list[str]) -> dict[str, np.ndarray]:
    """Per agent, (rows, episodes) of each episode's return as a fraction of its goal's optimum,
    one row per goal x copy x training run, cut to the fewest episodes a row played."""
    out = {}
    for agent in agents:
        rows = [np.asarray(r["episode_returns"], float) / r["optimal_return"] for r in episodes
                if r["agent"] == agent and r.get("optimal_return") and r["episode_returns"]]
        if rows:
            n = min(map(len, rows))
            out[agent] = np.stack([r[:n] for r in rows])
    return out


def early_late(curve: np.ndarray, k: int = WINDOW) -> tuple[float, float]:
    return float(curve[:, :k].mean()), float(curve[:, -k:].mean())


def curve_table(curves: dict[str, np.ndarray], block: int = WINDOW) -> str:
    """Markdown: one row per block of `block` consecutive episodes, one column per agent (its
    mean fraction of the optimum there), then early, late and late - early."""
    agents = list(curves)
    n = min(c.shape[1] for c in curves.values())
    lines = ["| episodes | " + " | ".join(agents) + " |", "|---|" + "---:|" * len(agents)]
    for start in range(0, n, block):
        stop = min(start + block, n)
        cells = [f"{curves[a][:, start:stop].mean():.2f}" for a in agents]
        span = f"{start + 1}-{stop}" if stop > start + 1 else f"{stop}"
        lines.append(f"| {span} | " + " | ".join(cells) + " |")
    pairs = {a: early_late(curves[a][:, :n]) for a in agents}
    lines.append(f"| **late - early** (last {block} - first {block}) | "
                 + " | ".join(f"**{late - early:+.2f}**" for early, late in pairs.values()) + " |")
    return "\n".join(lines)


LABELS = {"imitator": "AD, frozen", "ed": "ED, frozen", "random": "random", "context_reset": "AD, context reset",
          "scratch": "Q-learning from scratch"}


def verdict(curves: dict[str, np.ndarray]) -> list[str]:
    """Whether the numbers show what the README says the demo shows, in words."""
    lines = []
    if "imitator" in curves:
        early, late = early_late(curves["imitator"])
        ok = late >= AD_LATE_AT_LEAST
        lines.append(f"AD (frozen) {early:.2f} -> {late:.2f} of the optimum (first {WINDOW} -> last {WINDOW} "
                     f"episodes): {'at least' if ok else 'BELOW'} half of the optimum")
    if "ed" in curves:
        early, late = early_late(curves["ed"])
        flat = abs(late - early) <= ED_FLAT_WITHIN
        lines.append(f"ED (frozen) {early:.2f} -> {late:.2f}: {'flat' if flat else 'NOT flat'} "
                     f"(late - early {late - early:+.2f}, flat: within {ED_FLAT_WITHIN})")
    return lines


def shows_the_finding(curves: dict[str, np.ndarray]) -> bool:
    ad, ed = curves.get("imitator"), curves.get("ed")
    if ad is None or ed is None:
        return False
    early, late = early_late(ed)
    return early_late(ad)[1] >= AD_LATE_AT_LEAST and abs(late - early) <= ED_FLAT_WITHIN


def finding(cfg: DemoConfig, ws: Workspace, episodes: list[dict], horizon: float | None = None) -> dict:
    """The demo's ending: the curve as a table and a PNG in `<workspace>/results/`, on the study's
    parent run in MLflow (artifacts, and each agent's curve as the metric `curve/<agent>` by
    episode, with `early/<agent>` and `late/<agent>`), and what they show in words."""
    curves = fraction_curves(episodes, cfg.curve_agents)
    if not curves:
        raise RuntimeError(f"demo: the evaluation of {cfg.experiment!r} has no episodes of {cfg.curve_agents} "
                           "on tasks with a known optimum")
    table = curve_table(curves)
    rows = ", ".join(f"{a} {len(c)}" for a, c in curves.items())
    title = (f"{cfg.experiment} ({cfg.scale}), held-out goals: mean over goal x copy x training-run rows "
             f"({rows}), 95% band")
    fig = plots.fraction_of_optimum({LABELS.get(a, a): c for a, c in curves.items()}, title,
                                    marks={"half of the optimum": AD_LATE_AT_LEAST}, horizon=horizon)
    out = ws.root / "results"
    out.mkdir(parents=True, exist_ok=True)
    png, md = out / f"{cfg.name}-in_context_curve.png", out / f"{cfg.name}-in_context_curve.md"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    words = verdict(curves)
    md.write_text(f"{title}\n\n{table}\n\n" + "\n".join(f"- {w}" for w in words) + "\n")
    summary = {"agents": {a: dict(zip(("early", "late"), early_late(c)), curve=c.mean(0).round(4).tolist(),
                                  rows=len(c)) for a, c in curves.items()},
               "shows_the_finding": shows_the_finding(curves), "verdict": words, "png": str(png), "table": str(md)}
    write_json_atomic(out / f"{cfg.name}-in_context_curve.json", summary)
    if ws.study is not None:
        def log():
            client = tracking.client_for(ws)
            run = ws.study.run_id
            tracking.log_figure(client, run, fig, "in_context_curve.png")
            tracking.log_text(client, run, f"{title}\n\n{table}\n", "in_context_curve.md")
            for agent, curve in curves.items():
                tracking.log_metric_series(client, run, f"curve/{agent}", curve.mean(0),
                                           steps=range(1, curve.shape[1] + 1))
                early, late = early_late(curve)
                client.log_metric(run, f"early/{agent}", early)
                client.log_metric(run, f"late/{agent}", late)
        tracking.tolerant(ws, "the demo's in-context learning curve", log)
    return {**summary, "text": table, "title": title}


def run_demo(cfg: DemoConfig, ws: Workspace, stages: dict, run_experiment) -> dict:
    """The Atari teach-and-record stage (`stages["teach"]`), then the experiment
    (`run_experiment(experiment config, ws)`), then the curve (finding)."""
    from understudy.platform import experiment

    started = time.perf_counter()
    stages["teach"](cfg.atari, ws)
    exp = experiment.load(cfg.experiment, cfg.scale)
    manifest = run_experiment(exp, ws)
    evaluation = ws.read_stage("evaluate", exp.evaluate.name)
    horizon = ws.read_stage("distill", exp.distill.name).history_length if exp.evaluate.horizon else None
    result = finding(cfg, ws, evaluation.episodes, horizon)
    result["seconds"] = time.perf_counter() - started
    result["experiment_seconds"] = manifest.seconds
    return result
