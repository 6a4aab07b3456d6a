"""Evaluation results: one row per agent and game (first/last, in-context improvement,
"exceeds the data", the normalised late return), the aggregate IQM with stratified bootstrap
intervals, and where they go: MLflow runs (metrics, the return-per-episode plot, Markdown and
HTML tables) and the evaluate stage's manifest.
"""
from __future__ import annotations

import html

import numpy as np

from understudy.platform import metrics, plots, tracking
from understudy.platform.config import EvaluateConfig
from understudy.platform.manifests import DistillManifest, EvaluateManifest, TeachManifest
from understudy.platform.players import DARKROOM
from understudy.platform.workspace import Workspace


def report(cfg: EvaluateConfig, ws: Workspace, teach: TeachManifest, distill: DistillManifest,
           trained: list[str], results: dict, experiment: str | None) -> EvaluateManifest:
    """Rows, aggregate and table of an evaluation's results ({(agent, game): what `play`
    returned}), logged to MLflow and written as the stage's manifest."""
    from understudy.envs.scores import has_reference

    k = max(1, min(cfg.window, cfg.episodes // 2))
    data = distill.data_returns
    if not data:
        print(f"[evaluate] distill stage {distill.name!r} recorded no training-data returns (written "
              "before they were kept); exceeds-data left out", flush=True)
    client = tracking.client_for(ws)
    exp = tracking.experiment_id(client, ws, "evaluate")
    tags = {"understudy.experiment": experiment} if experiment else {}
    rows = []
    for (name, game), res in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        returns = np.array(res["returns"], float)
        if returns.size == 0 or returns.shape[1] < 1:
            continue
        held_out = is_heldout(game, trained, cfg.goal_split)
        row = {"agent": name, "game": game, "held_out": held_out, "copies": returns.shape[0],
               "episodes": returns.shape[1], "first": float(returns[:, 0].mean()),
               "last": float(returns[:, -1].mean()), "return_mean": float(returns.mean())}
        if returns.shape[1] >= 2 * k:
            ici = metrics.in_context_improvement(returns, early=k, late=k)
            row.update(early=ici["early_mean"], late=ici["late_mean"], improvement=ici["improvement"],
                       slope=ici["slope"])
        in_context = np.array(res.get("episodes_in_context") or [], dtype=float)  # None: no context
        if in_context.size and not np.isnan(in_context).all():
            # how many earlier episodes the context held: over the late window, and at the last episode
            row["context_episodes_late"] = float(np.nanmean(in_context[:, -k:]))
            row["context_episodes_last"] = float(np.nanmean(in_context[:, -1]))
        if data.get(game) and returns.shape[1] >= k:
            ex = metrics.exceeds_data(returns.mean(0), data[game], late=k)
            row.update(data_best=ex["data_best"], best_minus_data=ex["best_minus_data_best"],
                       late_minus_data=ex["late_minus_data_best"])
        reference = _reference(game)
        if reference is not None or has_reference(game):
            low, high = reference or _atari_reference(game)
            row["late_normalized"] = float((returns[:, -k:].mean() - low) / (high - low))
        run = tracking.start_run(client, exp, f"{name}-on-{game}", {
            "stage": cfg.name, "agent": name, "game": game, "trained_on": ",".join(trained),
            "held_out": held_out, "episodes": cfg.episodes, "copies": cfg.copies,
            "max_episode_steps": cfg.max_episode_steps, "greedy": cfg.greedy, "seed": cfg.seed,
            "data_version": distill.data_version, "gradient_steps": res["gradient_steps"]}, tags)
        tracking.log_metric_series(client, run, "episode_return", returns.mean(0))
        for key, value in row.items():
            if isinstance(value, float):
                client.log_metric(run, key, value)
        for other, replay in res["replays"].items():
            before = results.get(("imitator", other))
            value = float(np.mean(replay))
            client.log_metric(run, f"forgetting/{other}/return_after", value)
            rows.append({"agent": f"{name} on {game}, then frozen", "game": other, "held_out": False,
                         "copies": len(replay), "episodes": len(replay[0]), "first": float(np.mean([r[0] for r in replay])),
                         "last": float(np.mean([r[-1] for r in replay])), "return_mean": value,
                         "before_finetune": float(np.mean(before["returns"])) if before else None})
        client.set_terminated(run, "FINISHED")
        row["mlflow_run_id"] = run
        rows.append(row)
    aggregate = _aggregate(results, trained, k, cfg.goal_split)
    table = results_table(rows, aggregate)
    summary = tracking.start_run(client, exp, f"summary-{cfg.name}", {
        "stage": cfg.name, "imitator_stage": cfg.imitator, "teacher_stage": cfg.teacher,
        "ed_stage": cfg.ed or "", "trained_on": ",".join(trained), "games": ",".join(cfg.games),
        "agents": ",".join(cfg.agents), "episodes": cfg.episodes, "copies": cfg.copies,
        "data_version": distill.data_version}, {"understudy.summary": "true", **tags})
    curves = {(name, game): np.array(res["returns"], float) for (name, game), res in results.items()
              if len(res["returns"])}
    tracking.log_figure(client, summary, plots.returns_per_episode(
        curves, f"Return per episode, {cfg.copies} copies each (imitator trained on {', '.join(trained)})"),
        "returns_per_episode.png")
    tracking.log_text(client, summary, table, "results.md")
    tracking.log_text(client, summary, markdown_to_html(table, f"Evaluation {cfg.name}"), "results.html")
    client.set_terminated(summary, "FINISHED")
    manifest = EvaluateManifest(name=cfg.name, rows=rows, aggregate=aggregate, summary_run_id=summary,
                                table=table, trained_on=trained, experiment=experiment)
    ws.write_stage("evaluate", cfg.name, manifest)
    return manifest


def _reference(game: str):
    if game == DARKROOM:
        from understudy.envs.darkroom import darkroom_goals, optimal_return

        return 0.0, float(np.mean([optimal_return(g) for g in darkroom_goals("all")]))
    return None


def _atari_reference(game: str):
    from understudy.envs.scores import reference_scores

    ref = reference_scores(game)
    return ref.random, ref.human


def is_heldout(game: str, trained, goal_split: str) -> bool:
    """Never trained on: a game outside the training data, or Dark Room's held-out goals."""
    return game not in trained or (game == DARKROOM and goal_split == "heldout")


def _aggregate(results, trained, k, goal_split) -> list[dict]:
    """Per agent and game group (training / held-out): human-normalised late return, IQM with
    a stratified bootstrap interval over copies."""
    from understudy.envs.scores import has_reference

    out = []
    for agent in sorted({a for a, _ in results}):
        for group, held in (("training games", False), ("held-out games", True)):
            scores, reference = {}, {}
            for (a, game), res in results.items():
                if a != agent or is_heldout(game, trained, goal_split) != held or not len(res["returns"]):
                    continue
                if _reference(game) is None and not has_reference(game):
                    continue
                r = np.array(res["returns"], float)
                scores[game] = r[:, -min(k, r.shape[1]):].mean(1).tolist()
                reference[game] = _reference(game) or _atari_reference(game)
            if not scores:
                continue
            n = min(len(v) for v in scores.values())
            agg = metrics.aggregate({g: v[:n] for g, v in scores.items()}, reference=reference, reps=1000)
            out.append({"agent": agent, "group": group, "games": len(scores), "iqm": agg["iqm"],
                        "ci_low": agg["ci_low"], "ci_high": agg["ci_high"]})
    return out


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def results_table(rows: list[dict], aggregate: list[dict] | None = None) -> str:
    cols = [("agent", "agent"), ("game", "game"), ("held_out", "held out"), ("copies", "copies"),
            ("episodes", "episodes"), ("first", "first"), ("last", "last"), ("early", "early mean"),
            ("late", "late mean"), ("improvement", "late - early"), ("slope", "slope/episode"),
            ("data_best", "data best"), ("best_minus_data", "best - data best"),
            ("late_minus_data", "late - data best"), ("late_normalized", "late (normalised)"),
            ("context_episodes_late", "episodes in context (late)")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c, _ in cols) + " |")
    if aggregate:
        lines += ["", "Human-normalised late return (Dark Room: fraction of optimal), interquartile "
                  "mean over games x copies with a 95% stratified bootstrap interval:", "",
                  "| agent | games | IQM | 95% CI |", "|---|---|---:|---|"]
        for a in aggregate:
            lines.append(f"| {a['agent']} | {a['group']} ({a['games']}) | {a['iqm']:.3f} | "
                         f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}] |")
    return "\n".join(lines)


def markdown_to_html(table: str, title: str) -> str:
    """The results tables as a standalone HTML page (for the MLflow artifact viewer)."""
    out = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
           "text-align:right}</style></head><body>", f"<h2>{html.escape(title)}</h2>"]
    in_table = False
    for line in table.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            if not in_table:
                out.append("<table>")
                tag, in_table = "th", True
            else:
                tag = "td"
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
        else:
            if in_table:
                out.append("</table>")
                in_table = False
            if line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
