"""Evaluation results: one row per agent and game (first/last, in-context improvement,
"exceeds the data", the normalised late return, tasks played below random), the aggregate per
agent (every agent of a table on the same number of runs and the same estimator: a mean with a
Student-t interval over few runs, the IQM with a stratified bootstrap over many), in-context
improvement per training run with t intervals, sign-flip p-values, the minimum detectable
effect and the gain a perfect copy of the data would show, and where they go: MLflow runs
(metrics, the return-per-episode plot, Markdown and HTML tables) and the evaluate stage's
manifest.
"""
from __future__ import annotations

import html

import numpy as np

from understudy.envs import family_of
from understudy.envs.families import is_heldout_split
from understudy.platform import metrics, plots, tracking
from understudy.platform.config import EvaluateConfig
from understudy.platform.episode_gifs import log_gifs
from understudy.platform.manifests import DistillManifest, TeachManifest
from understudy.platform.reproducibility import params as params_of
from understudy.platform.workspace import Study, Workspace


def normalised(game: str, returns: np.ndarray, goal_split: str, copies: int) -> np.ndarray | None:
    """(rows, episodes) returns on the scale the aggregate uses, or None without a reference.
    (score - random) / (reference - random) with the game's family's references (Atari: human;
    MinAtar: the authors' DQN). Dark Room: the fraction of each row's own goal's optimal return
    (rows are goals x copies, in darkroom_goals order), so 1.0 is perfect play on every goal."""
    family = family_of(game)
    if family.per_goal:
        optimum = np.repeat([family.optimum(g) for g in family.goals(goal_split)], copies)
        return returns / optimum[:len(returns), None]
    ref = family.reference(game)
    if ref is not None:
        random, reference = ref
        return (returns - random) / (reference - random)
    return None


def cut_short(cfg: EvaluateConfig, game: str) -> bool:
    """Episodes of this game can end early by the evaluation's own step cap, not by the game
    (Dark Room's 20-step episodes are the game itself; Atari's protocol cap of 108,000 frames is
    the field's full game)."""
    family = family_of(game)
    return (family.episode_steps is None and cfg.max_episode_steps is not None
            and cfg.max_episode_steps < family.longest_episode)  # a cap past the protocol's never binds


UNTRAINED = ("random", "noop")  # nothing trained: each copy is an independent run
# Controls of a trained agent: its same weights played with something taken away (players.py):
# context cleared each episode, rewards zeroed in the context, a foreign history prefilled.
# What a control takes away is measured as base minus control on the same training runs (paired).
CONTROLS = {"context_reset": "imitator", "reward_blind": "imitator", "warmup": "imitator"}
FEW_RUNS = 5  # fewer independent runs: intervals are marked indicative, not findings


def common_runs(counts) -> int:
    """The number of runs every agent of one table is cut to, so that all are judged on equally
    many: the fewest any agent has among agents with 2 or more (an agent with a single run keeps
    it, shown without an interval, rather than leaving every other agent without one)."""
    counts = list(counts)
    several = [c for c in counts if c >= 2]
    return min(several) if several else min(counts, default=0)


def _env_steps(run: dict) -> int:
    """The env steps one playing task took: its budget where it had one, else its episodes' lengths."""
    return int(run["env_steps"] if "env_steps" in run else np.sum(run.get("lengths") or 0))


def _stack(res: dict, key: str) -> np.ndarray:
    """A per-copy field of every run of an (agent, game), runs after one another: (copies, ...)."""
    parts = [np.array(r.get(key) or [], dtype=float) for r in res["runs"]]
    parts = [p for p in parts if p.size]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def _tasks(game: str, rows: int, cfg: EvaluateConfig) -> list:
    """What each copy row of a run plays: the game, or for Dark Room the game and the goal
    (rows are goals x copies), since each goal is a task of its own."""
    if not family_of(game).per_goal:
        return [(game, None)] * rows
    return [(game, i // cfg.copies) for i in range(rows)]


def late_window(cfg: EvaluateConfig) -> int:
    """k: the episodes an evaluation's early and late means (and normalised scores) are over."""
    return max(1, min(cfg.window, cfg.episodes // 2))


def summarise(cfg: EvaluateConfig, trained: list[str], results: dict, data: dict,
              horizon: float | None = None) -> tuple[list, list]:
    """(rows, aggregate) of an evaluation's results ({(agent, game): {"runs": [what `play`
    returned, with its training "seed"]}}): one row per agent and game over all its runs, and
    the IQM per agent and group of games over tasks x independent runs. `data`: per game, the
    returns the imitator was trained on and the teachers' whole histories (data_on_scale);
    `horizon`: the training histories' length in episodes. Pure: no MLflow."""
    k = late_window(cfg)
    rows, late_scores, late_by_task = [], {}, {}
    for (name, game), res in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        returns = _stack(res, "returns")
        if returns.size == 0 or returns.shape[1] < 1:
            continue
        held_out = is_heldout(game, trained, cfg.goal_split)
        runs = (len(res["runs"]) if name not in UNTRAINED
                else returns.shape[0] // len(set(_tasks(game, len(res["runs"][0]["returns"]), cfg))))
        row = {"agent": name, "game": game, "held_out": held_out, "runs": runs,
               "seeds": [r["seed"] for r in res["runs"] if r["seed"] is not None],
               "copies": returns.shape[0], "episodes": returns.shape[1], "first": float(returns[:, 0].mean()),
               "last": float(returns[:, -1].mean()), "return_mean": float(returns.mean()),
               "env_steps": sum(_env_steps(r) for r in res["runs"])}
        # per training run (one learner: an imitator's copies, one scratch learner, one random run)
        row["env_steps_per_run"] = round(row["env_steps"] / max(1, len(res["runs"])))
        late_by_task[(name, game)] = _late_by_task(game, res, cfg, k)
        if returns.shape[1] >= 2 * k:
            ici = metrics.in_context_improvement(returns, early=k, late=k)
            row.update(early=ici["early_mean"], late=ici["late_mean"], improvement=ici["improvement"],
                       slope=ici["slope"])
        in_context = _stack(res, "episodes_in_context")  # nan: a player without a context
        if in_context.size and not np.isnan(in_context).all():
            # how many earlier episodes the context held: over the late window, and at the last episode
            row["context_episodes_late"] = float(np.nanmean(in_context[:, -k:]))
            row["context_episodes_last"] = float(np.nanmean(in_context[:, -1]))
        if game in data and returns.shape[1] >= k:
            row.update(exceeds(game, res, data[game], cfg, k))
        if family_of(game).per_goal:
            row.update(time_to_optimum(game, res, data.get(game), cfg))
        if horizon and returns.shape[1] > horizon:
            # past the horizon: the episodes beyond the training histories' length, against the
            # last `k` episodes before it
            h = int(round(horizon))
            row["horizon"] = h
            row["past_horizon_gain"] = float(returns[:, h:].mean() - returns[:, max(0, h - k):h].mean())
        cut = _stack(res, "truncated").astype(bool)
        if cut_short(cfg, game) and cut.any():
            # a game stopped by the step cap is not a game: its score is not on the reference scale
            row["truncated_episodes"] = int(cut.sum())
        else:
            late = _late_per_task_and_run(name, game, res, cfg, k)
            if late:
                row["late_normalized"] = float(np.mean([np.mean(v) for v in late.values()]))
                late_scores.update({(name, task): v for task, v in late.items()})
        rows.append(row)
    for row in rows:
        below = below_random(late_by_task, row["agent"], row["game"])
        if below is not None:
            row["below_random"] = below
    return rows, _aggregate(late_scores, trained, cfg.goal_split)


def _late_by_task(game: str, res: dict, cfg: EvaluateConfig, k: int) -> dict:
    """{task: the mean raw return of its last `k` episodes over every run and copy}: the level
    an agent held on each task (game; Dark Room goal)."""
    late: dict = {}
    for run in res["runs"]:
        returns = np.array(run.get("returns") or [], float)
        if returns.ndim != 2 or returns.shape[1] == 0:
            continue
        for task, value in zip(_tasks(game, len(returns), cfg), returns[:, -k:].mean(1)):
            late.setdefault(task, []).append(float(value))
    return {task: float(np.mean(v)) for task, v in late.items()}


def below_random(late_by_task: dict, agent: str, game: str) -> int | None:
    """How many of an (agent, game)'s tasks it played below random: its late mean under random
    play's on the same task (random's over all its copies, the best estimate of its expectation).
    Shown, never trimmed away by an IQM. None for random itself or where random did not play."""
    mine, rand = late_by_task.get((agent, game)), late_by_task.get(("random", game))
    if agent == "random" or not mine or not rand:
        return None
    return sum(1 for task, v in mine.items() if task in rand and v < rand[task])


def data_on_scale(teach: TeachManifest, distill: DistillManifest) -> dict:
    """Per game, {"split": the training split's returns, "history": [each teacher run's whole
    history]}, on the scale "exceeds the data" is judged on: raw score, or for Dark Room the
    fraction of each run's own goal's optimum (its goals differ in what is possible)."""
    runs = {r.run_id: r for r in teach.runs}
    out: dict = {}
    if not distill.history_returns:  # older manifests: the training split per game, raw
        return {g: {"split": np.array(v, float), "split_runs": [np.array(v, float)], "history": []}
                for g, v in distill.data_returns.items() if v}
    for run_id, history in distill.history_returns.items():
        run = runs.get(run_id)
        if run is None or not history:
            continue
        scale = 1.0
        if family_of(run.game).per_goal and run.goal is not None:
            scale = 1.0 / family_of(run.game).optimum(np.array(run.goal))
        entry = out.setdefault(run.game, {"split_runs": [], "history": []})
        entry["split_runs"].append(np.array(distill.split_returns.get(run_id, []), float) * scale)
        entry["history"].append(np.array(history, float) * scale)
    return {g: {"split": np.concatenate(v["split_runs"]), **v} for g, v in out.items()}


def exceeds(game: str, res: dict, data: dict, cfg: EvaluateConfig, k: int) -> dict:
    """Does the agent play better than anything in its data? Its best episode and its late mean
    (over copies and runs, per episode index) against the best training episode and against
    the teachers' whole histories: their best episode and best `k`-episode mean. Dark Room on
    the per-goal scale (fractions of the optimum)."""
    curve = _stack(res, "returns")
    if family_of(game).per_goal:
        curve = np.concatenate([normalised(game, np.array(r["returns"], float), cfg.goal_split, cfg.copies)
                                for r in res["runs"]])
    curve = curve.mean(0)
    out = {}
    if data["split"].size:
        ex = metrics.exceeds_data(curve, data["split"], late=k)
        out.update(data_best=ex["data_best"], best_minus_data=ex["best_minus_data_best"],
                   late_minus_data=ex["late_minus_data_best"])
        # the best k consecutive training episodes of any one run: what the data's best
        # stretch of play reached, the level a copy of its best phase would hold
        runs = [r for r in data.get("split_runs", []) if r.size >= k]
        if runs:
            best_late = max(metrics.best_window_mean(r, k) for r in runs)
            out.update(data_best_late=best_late, late_minus_data_late=float(curve[-k:].mean()) - best_late)
    if data["history"]:
        best = max(float(h.max()) for h in data["history"])
        best_late = max(metrics.best_window_mean(h, k) for h in data["history"])
        out.update(history_best=best, history_best_late=best_late,
                   best_minus_history=float(curve.max()) - best,
                   late_minus_history_late=float(curve[-k:].mean()) - best_late)
    return out


REACH = 0.9  # of each goal's optimum: Laskin et al.'s data-efficiency threshold


def time_to_optimum(game: str, res: dict, data: dict | None, cfg: EvaluateConfig) -> dict:
    """Dark Room: in how many episodes the agent first reaches 0.9 of each goal's optimum (the
    median over goals x runs, a run's copies of a goal averaged; never reaching counts as the
    longest), and, from the recorded histories, in how many the source it was distilled from did."""
    curves = []
    for run in res["runs"]:
        scaled = normalised(game, np.array(run["returns"], float), cfg.goal_split, cfg.copies)
        goals = scaled.reshape(-1, cfg.copies, scaled.shape[1]).mean(1)
        curves += list(goals)
    median, share = metrics.median_episodes_to_reach(curves, REACH)
    out = {"episodes_to_0.9": median, "reached_0.9": share}
    if data and data["history"]:
        source, source_share = metrics.median_episodes_to_reach(data["history"], REACH)
        out.update({"source_episodes_to_0.9": source, "source_reached_0.9": source_share})
    return out


def run_of(row: dict):
    """Which independent run a raw row (episode_rows) belongs to: a trained agent's copies are
    evaluation copies of one training run; random and no-op train nothing, so each copy is a run."""
    return (row["run_seed"], row["copy"]) if row["agent"] in UNTRAINED else row["run_seed"]


def _cut(by_run: dict, n: int) -> list:
    """The first `n` runs (in one fixed order, the same for every agent) of {run: value}: how
    every agent of a table is cut to the same number of runs, and a control to its base's runs."""
    return sorted(by_run, key=str)[:n]


def _interval_row(values, prefix: str = "") -> dict:
    """A t interval (metrics.t_interval) and the sign-flip p of per-run values, as row fields."""
    t = metrics.t_interval(values)
    return {f"{prefix}low" if prefix else "ci_low": t["low"], f"{prefix}high" if prefix else "ci_high": t["high"],
            f"{prefix}sd": t["sd"], f"{prefix}p": t["p"], f"{prefix}sign_flip_p": metrics.sign_flip_p(values)}


def per_goal(episodes: list[dict], k: int) -> list[dict]:
    """Dark Room, per agent and goal, from the raw rows (episode_rows): the late fraction of the
    goal's optimum (last `k` episodes, a run's copies averaged), its mean over independent runs
    with a 95% Student-t interval over those runs (metrics.t_interval: valid at 3 runs, where a
    percentile bootstrap is not), every agent of a goal cut to the same number of runs
    (common_runs); whether it is below random play's fraction on the goal (random's over all its
    copies); and the median episodes to 0.9 of the optimum."""
    groups: dict = {}
    for row in episodes:
        if row["goal"] is None:
            continue
        key = (row["agent"], tuple(row["goal"]))
        run = groups.setdefault(key, {"optimal": row["optimal_return"], "runs": {}})
        run["runs"].setdefault(run_of(row), []).append(
            np.array(row["episode_returns"], float) / row["optimal_return"])
    late = {key: {r: float(np.mean(copies, 0)[-k:].mean()) for r, copies in g["runs"].items()}
            for key, g in groups.items()}
    out = []
    for (agent, goal), g in sorted(groups.items()):
        n = common_runs(len(late[(a, gl)]) for a, gl in late if gl == goal)
        chosen = _cut(late[(agent, goal)], n)
        values = np.array([late[(agent, goal)][r] for r in chosen])
        curves = [np.mean(g["runs"][r], 0) for r in chosen]
        median, share = metrics.median_episodes_to_reach(curves, REACH)
        rand = late.get(("random", goal))
        mine = float(np.mean(list(late[(agent, goal)].values())))
        t = metrics.t_interval(values)
        out.append({"agent": agent, "goal": list(goal), "optimal_return": g["optimal"], "runs": len(values),
                    "runs_available": len(late[(agent, goal)]), "late_fraction": t["mean"],
                    "ci_low": t["low"], "ci_high": t["high"], "episodes_to_0.9": median, "reached_0.9": share,
                    "below_random": (None if rand is None or agent == "random"
                                     else bool(mine < np.mean(list(rand.values()))))})
    return out


def improvement_by_run(episodes: list[dict], k: int, data: dict | None = None) -> list[dict]:
    """Per agent and game, from the raw rows (episode_rows): the in-context improvement
    (mean of the last `k` episodes - mean of the first `k`, raw returns) of each independent run
    (a trained agent's copies averaged first; random and no-op copies are runs), every agent of
    a game cut to the same number of runs (common_runs), and tested against 0:

        mean over runs, 95% Student-t interval and t-test p (metrics.t_interval), and the exact
        sign-flip p (metrics.sign_flip_p)

    A memoryless player (random, no-op, the final teacher) improves by 0 in expectation, so the
    null is "improvement = 0" for every agent; random play is not subtracted (its own window is
    noise, and a memoryless policy's expectation is known). Where the interval includes 0, the
    minimum detectable effect at 80% power (two-sided 5%, from the between-run SD,
    metrics.minimum_detectable_effect) in raw and, where the game has a reference, normalised
    units ((score - random) / (reference - random): a gain over hi - lo). With `data`
    (data_on_scale), per game the gain a perfect copy of the training data would show over this
    evaluation: metrics.expected_gain_if_copied of the training split's histories over the
    n - k episodes between the windows' centres.

    A control (CONTROLS: the base agent's same weights, something taken away) also gets the
    effect of what it takes away: base's improvement minus the control's, on the training runs
    both played (paired: the same run seed and env seeds), with a paired t interval, sign-flip p
    and MDE. imitator - context_reset is the in-context effect. Per-goal families (Dark Room):
    each row's returns as fractions of its goal's optimum, a run's goals and copies averaged
    (the row's "unit" says so); `per_goal` has each goal apart."""
    runs: dict = {}
    for row in episodes:
        if len(row["episode_returns"]) < 2 * k:
            continue
        returns = np.array(row["episode_returns"], float)
        if row.get("goal") is not None:  # goals differ in what is possible: each on its own scale
            returns = returns / row["optimal_return"]
        runs.setdefault((row["agent"], row["game"]), {}).setdefault(run_of(row), []).append(returns)
    gains, lengths = {}, {}
    for key, by_run in runs.items():
        curves = {r: np.mean(copies, 0) for r, copies in by_run.items()}
        gains[key] = {r: metrics.in_context_improvement(c, early=k, late=k)["improvement"] for r, c in curves.items()}
        lengths[key] = min(len(c) for c in curves.values())
    out = []
    for (agent, game), by_run in sorted(gains.items()):
        n = common_runs(len(v) for (a, g), v in gains.items() if g == game)
        g = np.array([by_run[r] for r in _cut(by_run, n)])
        ref = None if family_of(game).per_goal else family_of(game).reference(game)
        scale = (ref[1] - ref[0]) if ref else None  # a difference of returns: only the span rescales it
        row = {"agent": agent, "game": game, "runs": len(g), "runs_available": len(by_run),
               "unit": "fraction of each goal's optimum" if family_of(game).per_goal else "raw return",
               "improvement": float(g.mean()), **_interval_row(g), "finding": len(g) >= FEW_RUNS}
        row.update(_no_effect_power(row, "ci_low", "ci_high", "sd", len(g), scale, "mde"))
        if data and game in data and agent not in UNTRAINED:  # what the imitator (and its kin) could copy
            histories = data[game].get("split_runs") or data[game].get("history") or []
            copied = metrics.expected_gain_if_copied(histories, lengths[(agent, game)] - k)
            if copied is not None:
                row["if_copied"] = copied
                if scale:
                    row["if_copied_normalised"] = copied / scale
        base = CONTROLS.get(agent)
        if base is not None and (base, game) in gains:
            mine, theirs = by_run, gains[(base, game)]
            shared = _cut({r: None for r in mine if r in theirs}, n)
            if shared:
                d = np.array([theirs[r] - mine[r] for r in shared])
                row.update(control_of=base, effect=float(d.mean()), effect_pairs=len(d), **_interval_row(d, "effect_"))
                row.update(_no_effect_power(row, "effect_low", "effect_high", "effect_sd", len(d), scale, "effect_mde"))
        out.append(row)
    return out


def _no_effect_power(row: dict, low: str, high: str, sd: str, n: int, scale, key: str) -> dict:
    """Beside an interval that includes 0 ("no effect found"): the minimum detectable effect at
    80% power (metrics.minimum_detectable_effect, noncentral t), raw and over `scale`."""
    if row.get(low) is None or not row[low] <= 0 <= row[high]:
        return {}
    mde = metrics.minimum_detectable_effect(row[sd], n)
    if mde is None:
        return {}
    return {key: mde, **({f"{key}_normalised": mde / scale} if scale else {})}


def _pm(value, fmt: str = "+.2f") -> str:
    return "-" if value is None else format(value, fmt)


def _raw_and_normalised(row: dict, key: str) -> str:
    """`raw (normalised)`, or `raw`, or - ."""
    if row.get(key) is None:
        return "-"
    norm = row.get(f"{key}_normalised")
    return f"{row[key]:.2f}" + (f" ({norm:.3f})" if norm is not None else "")


def improvement_table(rows: list[dict], k: int) -> str:
    """`improvement_by_run`'s rows as Markdown: every agent's improvement against 0, then each
    control's paired effect."""
    if not rows:
        return ""
    lines = ["| agent | game | runs | late - early (raw; per-task families: fraction of optimum) | 95% t CI | "
             "p (t) | p (sign-flip) | MDE, 80% power: raw (normalised) | if the data were copied: raw (normalised) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    few = False
    for r in rows:
        star = "" if r["finding"] else "*"
        few |= not r["finding"]
        interval = f"[{_pm(r['ci_low'])}, {_pm(r['ci_high'])}]{star}" if r.get("ci_low") is not None else "- (1 run)"
        copied = "-" if r.get("if_copied") is None else (
            f"{r['if_copied']:+.2f}" + (f" ({r['if_copied_normalised']:+.3f})" if "if_copied_normalised" in r else ""))
        lines.append(f"| {r['agent']} | {r['game']} | {r['runs']} | {r['improvement']:+.2f} | {interval} | "
                     f"{_pm(r.get('p'), '.3f')} | {_pm(r.get('sign_flip_p'), '.3f')} | "
                     f"{_raw_and_normalised(r, 'mde')} | {copied} |")
    controls = [r for r in rows if "control_of" in r]
    if controls:
        lines += ["", "| comparison | game | paired runs | difference of late - early (raw; per-task: fraction "
                  "of optimum) | 95% paired t CI | p (t) | p (sign-flip) | MDE, 80% power: raw (normalised) |",
                  "|---|---|---:|---:|---|---:|---:|---:|"]
        for r in controls:
            star = "" if r["effect_pairs"] >= FEW_RUNS else "*"
            few |= bool(star)
            interval = (f"[{_pm(r['effect_low'])}, {_pm(r['effect_high'])}]{star}" if r.get("effect_low") is not None
                        else "- (1 run)")
            lines.append(f"| {r['control_of']} - {r['agent']} | {r['game']} | {r['effect_pairs']} | "
                         f"{r['effect']:+.2f} | {interval} | {_pm(r.get('effect_p'), '.3f')} | "
                         f"{_pm(r.get('effect_sign_flip_p'), '.3f')} | {_raw_and_normalised(r, 'effect_mde')} |")
    per_goal = any(r.get("unit", "raw return") != "raw return" for r in rows)
    lines += ["", f"In-context improvement: mean of the last {k} episodes minus the first {k}, raw returns "
              + ("(Dark Room: fractions of each goal's optimum, a run's goals averaged) " if per_goal else "")
              + "per independent run (a trained agent's copies averaged first; random and no-op copies are "
              "runs), every agent of a game on the same number of runs (the fewest any agent with 2 or more "
              "has), tested against 0 (a memoryless player such as random play or the final teacher improves "
              "by 0 in expectation): the mean with a 95% Student-t interval over runs, the t-test's p, and the "
              "exact sign-flip permutation p (no normality assumed; its smallest value is 2/2^runs, so under "
              "6 runs it cannot reach 0.05). MDE: where the interval includes 0, the smallest true improvement "
              "the t-test finds 80% of the time at two-sided 5% with this between-run spread (noncentral t); "
              "normalised: over the game's reference - random. 'If the data were copied': the training "
              "histories' least-squares return slope per episode times the episodes between the two windows' "
              "centres, averaged over histories: what a perfect copy of the data's learning would show."
              + (" Comparisons: a control (the same weights, context cleared each episode, rewards zeroed in "
                 "the context, or a foreign history prefilled) against its agent on the same training runs "
                 "and env seeds; the agent's improvement minus the control's, with a paired t interval; "
                 "imitator - context_reset is the in-context effect." if controls else "")
              + (f" *fewer than {FEW_RUNS} runs: indicative, not a finding." if few else "")]
    return "\n".join(lines)


def per_goal_table(rows: list[dict]) -> str:
    """The per-goal rows as Markdown: one line per goal, one column per agent."""
    agents = sorted({r["agent"] for r in rows})
    goals = sorted({tuple(r["goal"]) for r in rows})
    cell = {(r["agent"], tuple(r["goal"])): r for r in rows}
    lines = ["| goal (x, y) | optimal | " + " | ".join(agents) + " |", "|---|---:|" + "---|" * len(agents)]
    for goal in goals:
        parts = []
        for agent in agents:
            r = cell.get((agent, goal))
            if r is None:
                parts.append("-")
                continue
            reach = f"{r['episodes_to_0.9']:.0f}" if r["episodes_to_0.9"] is not None else "never"
            interval = f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if r["ci_low"] is not None else ""
            below = " (below random)" if r.get("below_random") else ""
            parts.append(f"{r['late_fraction']:.2f}{interval}{below} / {reach}")
        optimal = next(r["optimal_return"] for r in rows if tuple(r["goal"]) == goal)
        lines.append(f"| {goal} | {optimal:.0f} | " + " | ".join(parts) + " |")
    runs = {r["agent"]: r["runs"] for r in rows}
    below = {a: sum(1 for r in rows if r["agent"] == a and r.get("below_random")) for a in agents if a != "random"}
    lines += ["", "Each cell: the late fraction of the goal's optimum, mean over independent runs with a 95% "
              "Student-t interval over them, / the median episode in which a run first reached 0.9 of the "
              f"optimum. Runs per agent: {runs} (random and no-op: copies; every agent of a goal on the same "
              "number of runs); under 5 runs the interval is indicative, not a finding. '(below random)': the "
              "agent's late fraction is under random play's on that goal (random's over all its copies)."
              + (f" Goals below random per agent: {below}." if "random" in agents else "")]
    return "\n".join(lines)


def _late_per_task_and_run(name: str, game: str, res: dict, cfg: EvaluateConfig, k: int) -> dict:
    """{task: [normalised late return of each independent run]}: a run's copies of a task are
    averaged (they are evaluation copies of one trained model, not runs); for an untrained agent
    every copy is a run."""
    out: dict = {}
    for run in res["runs"]:
        returns = np.array(run["returns"], float)
        scaled = normalised(game, returns, cfg.goal_split, cfg.copies)
        if scaled is None:
            return {}
        late = scaled[:, -k:].mean(1)
        tasks = _tasks(game, len(late), cfg)
        for task in dict.fromkeys(tasks):
            mine = late[[t == task for t in tasks]]
            out.setdefault(task, []).extend(mine.tolist() if name in UNTRAINED else [float(mine.mean())])
    return out


def episode_rows(cfg: EvaluateConfig, results: dict, teacher_seeds: list[int], experiment: str | None,
                 trained: list[str] | None = None) -> list[dict]:
    """Raw results, one row per agent, game (and Dark Room goal), training run and copy: every
    episode's return in order (docs/results/*.json hold these for the experiments run here).
    `arm` is the agent (or control), `task` the goal's index in its split or the game,
    `eval_seed` the env seed its run played (players.eval_seed: every arm of a run the same),
    `heldout` whether the task was never trained on (given `trained`)."""
    out = []
    for (name, game), res in sorted(results.items()):
        family = family_of(game)
        goals = family.goals(cfg.goal_split) if family.per_goal else None
        optimum = [float(family.optimum(g)) for g in goals] if family.per_goal else None
        for run in res["runs"]:
            for i, returns in enumerate(run["returns"]):
                goal = i // cfg.copies if family.per_goal else None
                imitated = name in ("imitator", "ed", "finetune") or name in CONTROLS  # controls: imitator weights
                trained_on = teacher_seeds if imitated else []
                out.append({"experiment": experiment, "agent": name, "game": game,
                            "goal": goals[goal].tolist() if goal is not None else None,
                            "optimal_return": optimum[goal] if goal is not None else None,
                            "teacher_seed": run["seed"] if name == "teacher" else
                            (trained_on[0] if len(trained_on) == 1 else None),
                            "teacher_seeds": trained_on or None,
                            "imitator_seed": run["seed"] if imitated else None,
                            "run_seed": run["seed"], "copy": i % cfg.copies,
                            "arm": name, "task": goal if goal is not None else game,
                            "eval_seed": run.get("eval_seed"),
                            "heldout": is_heldout(game, trained, cfg.goal_split) if trained is not None else None,
                            "run_env_steps": _env_steps(run),
                            "episode_returns": [float(r) for r in returns]})
            # Forgetting: the fine-tuned weights, frozen, replayed on each game they were trained on
            for other, copies in sorted(run.get("replays", {}).items()):
                for i, returns in enumerate(copies):
                    out.append({"experiment": experiment, "agent": f"{name} on {game}, then frozen", "game": other,
                                "goal": None, "optimal_return": None, "teacher_seed": None,
                                "teacher_seeds": teacher_seeds or None, "imitator_seed": run["seed"],
                                "run_seed": run["seed"], "copy": i, "arm": f"{name}_replay", "task": other,
                                "eval_seed": run.get("eval_seed"), "heldout": False, "run_env_steps": None,
                                "episode_returns": [float(r) for r in returns]})
    return out


def report(cfg: EvaluateConfig, ws: Workspace, stage: Study, teach: TeachManifest,
           distill: DistillManifest, trained: list[str], results: dict, experiment: str | None,
           reproducibility: dict | None = None) -> dict:
    """The summary of an evaluation's results, logged to MLflow (a run per agent and game nested
    under the stage's run, which gets the plot and tables; the aggregate on the study's parent
    run), and returned as the stage's manifest (an EvaluateManifest's fields) for the stage to
    write."""
    data = data_on_scale(teach, distill)
    if not data:
        print(f"[evaluate] distill stage {distill.name!r} recorded no training-data returns (written "
              "before they were kept); exceeds-data left out", flush=True)
    horizon = distill.history_length if cfg.horizon else None
    rows, aggregate = summarise(cfg, trained, results, data, horizon)
    truncated = sorted({r["game"] for r in rows if r.get("truncated_episodes")})
    if truncated:
        print(f"[evaluate] episodes of {truncated} were cut at max_episode_steps={cfg.max_episode_steps}: "
              "those rows are marked truncated and left out of the normalised scores and the aggregate",
              flush=True)
    client = tracking.client_for(ws)
    tags = {"understudy.experiment": experiment} if experiment else {}
    table_rows = []
    for row in rows:
        name, game = row["agent"], row["game"]
        res = results[(name, game)]
        # The run spans the time its tasks played (they ran before it could be logged).
        played = [r for r in res["runs"] if "started" in r]
        started = min((r["started"] for r in played), default=None)
        ended = max((r["ended"] for r in played), default=None)
        row["played_s"] = ended - started if played else None
        # each task's own time: what bench/stage_speeds.py makes play speeds of for `understudy plan`
        row["tasks"] = [{"seconds": round(r["ended"] - r["started"], 3), "env_steps": _env_steps(r)} for r in played]
        run_name = tracking.run_name(stage, f"{cfg.name} {name} on {game}")
        run = tracking.start_run(client, stage.experiment_id, run_name, {
            "stage": cfg.name, "agent": name, "game": game, "trained_on": ",".join(trained),
            "held_out": row["held_out"], "episodes": cfg.episodes, "copies": cfg.copies,
            "max_episode_steps": cfg.max_episode_steps, "greedy": cfg.greedy, "seed": cfg.seed,
            "data_version": distill.data_version, "runs": row["runs"],
            "run_seeds": ",".join(map(str, row["seeds"])) or "none",
            "gradient_steps": sum(r["gradient_steps"] for r in res["runs"])}, tags,
            parent=stage.run_id, start_time=started, source=stage.source)
        tracking.log_metric_series(client, run, "episode_return", _stack(res, "returns").mean(0))
        gifs = next((r["gifs"] for r in res["runs"] if r.get("gifs")), None)  # the first run's (seed order)
        if gifs:
            log_gifs(client, run, gifs)
        for key, value in row.items():
            if isinstance(value, float):
                client.log_metric(run, key, value)
        replays = []
        for other in sorted({g for r in res["runs"] for g in r["replays"]}):
            replay = np.concatenate([np.array(r["replays"][other], float)
                                     for r in res["runs"] if other in r["replays"]])
            before = results.get(("imitator", other))
            value = float(np.mean(replay))
            client.log_metric(run, f"forgetting/{other}/return_after", value)
            replays.append({"agent": f"{name} on {game}, then frozen", "game": other, "held_out": False,
                            "copies": len(replay), "episodes": len(replay[0]),
                            "first": float(np.mean([r[0] for r in replay])),
                            "last": float(np.mean([r[-1] for r in replay])), "return_mean": value,
                            "before_finetune": float(_stack(before, "returns").mean()) if before else None})
        tracking.end_run(client, run, "FINISHED", end_time=ended)
        row["mlflow_run_id"] = run
        table_rows += replays + [row]
    table = results_table(table_rows, aggregate)
    distilled = set(distill.run_ids)
    episodes = episode_rows(cfg, results, sorted({r.seed for r in teach.runs if r.run_id in distilled}), experiment,
                            trained)
    gains = improvement_table(improvement_by_run(episodes, late_window(cfg), data), late_window(cfg))
    if gains:
        table += "\n\n" + gains
    summary = stage.run_id  # the stage's own run is the evaluation's summary
    tracking.log_params(client, summary, {
        "imitator_stage": cfg.imitator, "teacher_stage": cfg.teacher,
        "ed_stage": cfg.ed or "", "trained_on": ",".join(trained), "games": ",".join(cfg.games),
        "agents": ",".join(cfg.agents), "episodes": cfg.episodes, "copies": cfg.copies,
        "data_version": distill.data_version,
        # what was known only once the tasks had played: their env seeds and threads
        **(params_of({"seeds": {"env_seeds": reproducibility["seeds"]["env_seeds"]},
                      "threads": {k: v for k, v in reproducibility["threads"].items() if k != "driver"}})
           if reproducibility else {})})
    headline = headline_metrics(rows, aggregate)
    for run in {summary, *([ws.study.run_id] if ws.study else [])}:  # and on the study's parent run
        log_metrics(client, run, headline)
    curves = {key: _stack(res, "returns") for key, res in results.items()}
    curves = {key: c for key, c in curves.items() if c.size}
    tracking.log_figure(client, summary, plots.returns_per_episode(
        curves, f"Return per episode, {cfg.copies} copies each (imitator trained on {', '.join(trained)})"),
        "returns_per_episode.png")
    tracking.log_text(client, summary, table, "results.md")
    tracking.log_text(client, summary, markdown_to_html(table, f"Evaluation {cfg.name}"), "results.html")
    return {"rows": table_rows, "aggregate": aggregate, "summary_run_id": summary, "table": table,
            "trained_on": trained, "experiment": experiment, "episodes": episodes,
            "stages": {"teacher": cfg.teacher, "imitator": cfg.imitator, "ed": cfg.ed}}


def headline_metrics(rows: list[dict], aggregate: list[dict]) -> dict[str, float]:
    """The evaluation's answer as metrics: per agent and game group the aggregate of normalised
    late returns and its 95% interval, per agent and game the in-context improvement (late -
    early). The aggregate is logged as `iqm/...` whichever estimator the table used (the name
    the study's metrics have always had; with fewer than metrics.MANY_RUNS runs it is the plain
    mean, also logged as `mean/...`), and tasks played below random as `below_random/...`."""
    out = {}
    for a in aggregate:
        group = "heldout" if a["group"] == "held-out games" else "training"
        for key in ("iqm", "ci_low", "ci_high"):
            if a.get(key) is not None:
                out[f"{key}/{a['agent']}/{group}"] = float(a[key])
        if a.get("estimator", "iqm") != "iqm":
            out[f"{a['estimator']}/{a['agent']}/{group}"] = float(a["point"])
        if a.get("below_random") is not None:
            out[f"below_random/{a['agent']}/{group}"] = float(a["below_random"])
    for r in rows:
        if isinstance(r.get("improvement"), float):
            out[f"improvement/{r['agent']}/{r['game']}"] = r["improvement"]
    return {k: v for k, v in out.items() if v == v}  # NaN is no measurement


def log_metrics(client, run_id: str, values: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in sorted(values.items())]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def is_heldout(game: str, trained, goal_split: str) -> bool:
    """Never trained on: a game outside the training data, or held-out goals (Dark Room's)."""
    return game not in trained or (family_of(game).per_goal and is_heldout_split(goal_split))


def _aggregate(late_scores: dict, trained, goal_split) -> list[dict]:
    """Per agent and game group (training / held-out): normalised late returns over tasks x
    independent runs, every agent of the table on the same number of runs per task and the same
    estimator, so that no two agents are compared through different statistics:

        n = common_runs(each agent's fewest runs on a task)   (random's and no-op's copies included)
        estimator = metrics.estimator_for(n): from metrics.MANY_RUNS runs the IQM with a
            stratified bootstrap interval resampling runs within each task (rliable); below it
            the plain mean over tasks x runs with a Student-t interval over runs

    (an agent with a single run keeps it, without an interval). "below_random": the tasks
    where the agent's late mean (all its runs) is under random play's (all random's copies),
    counted and named, since an IQM would trim them silently; None without random play. Rows
    left out of `late_scores` (truncated ones) are left out."""
    agents = sorted({a for a, _ in late_scores})
    fewest = {a: min(len(v) for (b, _), v in late_scores.items() if b == a) for a in agents}
    n = common_runs(fewest.values())
    estimator = metrics.estimator_for(n)
    random = {task: float(np.mean(v)) for (a, task), v in late_scores.items() if a == "random"}
    out = []
    for agent in agents:
        for group, held in (("training games", False), ("held-out games", True)):
            scores = {task: v for (a, task), v in late_scores.items()
                      if a == agent and is_heldout(task[0], trained, goal_split) == held}
            if not scores:
                continue
            m = min(n, fewest[agent])
            keys = {task: f"{task[0]}#{task[1]}" if task[1] is not None else task[0] for task in scores}
            agg = metrics.aggregate({keys[t]: v[:m] for t, v in scores.items()},
                                    reference={keys[t]: (0.0, 1.0) for t in scores}, reps=1000,
                                    estimator=estimator)
            below = None
            if random and agent != "random":
                below = sorted(keys[t] for t, v in scores.items() if t in random and np.mean(v) < random[t])
            out.append({"agent": agent, "group": group, "games": len({t[0] for t in scores}),
                        "tasks": len(scores), "runs": m, "runs_available": fewest[agent], "estimator": estimator,
                        "point": agg["point"], "iqm": agg["point"],  # "iqm": the key the study has always had
                        "ci_low": agg["ci_low"], "ci_high": agg["ci_high"],
                        "finding": m >= FEW_RUNS and agg["ci_low"] is not None,
                        "below_random": None if below is None else len(below), "below_random_tasks": below})
    return out


def episode_curves(episodes: list[dict]) -> dict:
    """Per (agent, game), one row of returns per copy (every run's), from raw rows
    (episode_rows), cut to the fewest episodes a copy played: what plots.returns_per_episode
    draws."""
    by_key: dict = {}
    for r in episodes:
        if r["episode_returns"]:
            by_key.setdefault((r["agent"], r["game"]), []).append(r["episode_returns"])
    return {key: np.array([c[:min(map(len, copies))] for c in copies], float) for key, copies in by_key.items()}


def rotations_aggregate(episodes: list[dict], k: int, cut: set = frozenset()) -> list[dict]:
    """Leave-one-out rotations: per agent, the aggregate of normalised late returns over held-out
    games x independent runs (`_aggregate`: the same runs and estimator for every agent; the IQM
    only from metrics.MANY_RUNS runs), from the rotations' raw rows (episode_rows). A trained
    agent's copies are averaged within its run; random and no-op copies are runs. `cut`:
    (agent, game) rows whose episodes the step cap cut, left out."""
    late: dict = {}
    for r in episodes:
        agent, game = r["agent"], r["game"]
        if (agent, game) in cut or not r["episode_returns"]:
            continue  # (the late window is the last k episodes, or all a row has, as summarise takes)
        scaled = normalised(game, np.array([r["episode_returns"]], float), "all", 1)
        if scaled is None:
            continue
        late.setdefault((agent, (game, None)), {}).setdefault(run_of(r), []).append(float(scaled[0, -k:].mean()))
    scores = {key: [float(np.mean(v)) for _, v in sorted(runs.items(), key=lambda kv: str(kv[0]))]
              for key, runs in late.items()}
    return _aggregate(scores, trained=[], goal_split="all")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def results_table(rows: list[dict], aggregate: list[dict] | None = None) -> str:
    cols = [("agent", "agent"), ("game", "game"), ("held_out", "held out"), ("runs", "runs"), ("copies", "copies"),
            ("episodes", "episodes"), ("first", "first"), ("last", "last"), ("early", "early mean"),
            ("late", "late mean"), ("improvement", "late - early"), ("slope", "slope/episode"),
            ("data_best", "data best"), ("best_minus_data", "best - data best"),
            ("late_minus_data", "late - data best"), ("data_best_late", "data best k-mean"),
            ("late_minus_data_late", "late - data best k-mean"), ("history_best_late", "teacher best k-mean"),
            ("late_minus_history_late", "late - teacher best k-mean"), ("past_horizon_gain", "past horizon - before"),
            ("late_normalized", "late (normalised)"), ("before_finetune", "before fine-tuning"),
            ("episodes_to_0.9", "episodes to 0.9 opt."), ("reached_0.9", "share reaching 0.9"),
            ("source_episodes_to_0.9", "source: episodes to 0.9"),
            ("truncated_episodes", "cut by step cap"), ("context_episodes_late", "episodes in context (late)"),
            ("below_random", "tasks below random"), ("env_steps", "env steps (all runs)"),
            ("env_steps_per_run", "env steps per run")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c, _ in cols) + " |")
    if aggregate:
        estimator = aggregate[0].get("estimator", "iqm")  # one for the whole table (_aggregate)
        how = ("interquartile mean over tasks (games; Dark Room goals) x independent training runs, with a 95% "
               "stratified bootstrap interval resampling runs within each task" if estimator == "iqm" else
               "plain mean over tasks (games; Dark Room goals) x independent training runs, with a 95% Student-t "
               "interval over runs (each run's mean over tasks one value): with fewer than "
               f"{metrics.MANY_RUNS} runs an interquartile mean trims little or nothing and a bootstrap undercovers")
        lines += ["", "Normalised late return (Atari: human-normalised; MinAtar: (score - random) / (the "
                  f"authors' DQN - random); Dark Room: fraction of each goal's optimum), {how}. Every agent "
                  "is cut to the same number of runs per task (the fewest any agent with 2 or more has). A run's "
                  "copies are averaged first; random and no-op train nothing, so their copies are their runs. "
                  "'Below random': tasks where the agent's late mean is under random play's. Rows whose episodes "
                  "were cut by the step cap are left out.", "",
                  f"| agent | games (tasks) | runs | {'IQM' if estimator == 'iqm' else 'mean'} | 95% CI | "
                  "tasks below random |", "|---|---|---:|---:|---|---|"]
        few = False
        for a in aggregate:
            runs = a.get("runs", "-")
            interval = f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}]" if a.get("ci_low") is not None else "- (1 run)"
            if not a.get("finding", True) and a.get("ci_low") is not None:
                interval, few = f"({interval[1:-1]})*", True
            below = "-" if a.get("below_random") is None else (
                f"{a['below_random']} of {a.get('tasks', a['games'])}"
                + (f": {', '.join(a['below_random_tasks'][:6])}" if a["below_random"] else "")
                + (", ..." if (a["below_random"] or 0) > 6 else ""))
            lines.append(f"| {a['agent']} | {a['group']} ({a['games']}; {a.get('tasks', a['games'])}) | {runs} | "
                         f"{a.get('point', a['iqm']):.3f} | {interval} | {below} |")
        if few:
            lines += ["", f"*fewer than {FEW_RUNS} independent training runs: the interval is shown for "
                      "reference, not as a finding."]
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
