"""Evaluation summaries on the right scale: Dark Room per goal (a perfect agent scores exactly
1), episodes cut by the evaluation's step cap are not scored as games, and held-out Dark Room
goals must be absent from the imitator's training runs."""
import numpy as np
import pytest

from understudy.envs.darkroom import darkroom_goals, optimal_return
from understudy.platform.config import EvaluateConfig
from understudy.platform.evaluate import _check_goals_held_out
from understudy.platform.manifests import DistillManifest, TeachManifest, TeachRun
from understudy.platform.report import summarise
from understudy.platform.stages import StageFailed


def runs(*results, seeds=None):
    """What the evaluation collects per (agent, game): one entry per independent training run."""
    seeds = seeds or ([None] if len(results) == 1 else list(range(len(results))))
    return {"runs": [{**r, "seed": s, "gradient_steps": 0, "replays": {}} for r, s in zip(results, seeds)]}


def config(**kw):
    return EvaluateConfig(imitator="d", teacher="t", **{"games": ["DarkRoom"], "episodes": 4, "window": 2, **kw})


def test_dark_room_is_scored_per_goal_so_perfect_play_is_exactly_one():
    goals = darkroom_goals("heldout")
    optimum = np.repeat([optimal_return(g) for g in goals], 2)  # 2 copies per goal
    perfect = {"returns": np.tile(optimum[:, None], (1, 4)).tolist(), "lengths": [[20] * 4] * len(optimum),
               "truncated": [[True] * 4] * len(optimum)}  # Dark Room's 20 steps are the game itself
    half = {**perfect, "returns": (np.tile(optimum[:, None], (1, 4)) / 2).tolist()}
    rows, aggregate = summarise(config(copies=2), ["DarkRoom"], {("imitator", "DarkRoom"): runs(perfect, perfect),
                                                                 ("ed", "DarkRoom"): runs(half, half)}, {})
    by_agent = {r["agent"]: r for r in rows}
    assert by_agent["imitator"]["late_normalized"] == pytest.approx(1.0)
    assert by_agent["ed"]["late_normalized"] == pytest.approx(0.5)
    best = next(a for a in aggregate if a["agent"] == "imitator")
    assert best["group"] == "held-out games" and best["iqm"] == pytest.approx(1.0)
    assert best["ci_low"] == pytest.approx(1.0) and best["ci_high"] == pytest.approx(1.0)
    # on the old scale (the mean optimum of all 81 cells) this agent was not at 1
    assert np.std(optimum) > 1


def test_episodes_cut_by_the_step_cap_are_not_scored_as_games():
    cfg = config(games=["Pong", "Breakout"], max_episode_steps=120)
    cut = {"returns": [[-3.0, -2.0, -3.0, -2.0]] * 2, "lengths": [[120] * 4] * 2, "truncated": [[True] * 4] * 2}
    whole = {"returns": [[2.0, 3.0, 4.0, 5.0]] * 2, "lengths": [[300] * 4] * 2, "truncated": [[False] * 4] * 2}
    rows, aggregate = summarise(cfg, ["Breakout"],
                                {("random", "Pong"): runs(cut), ("random", "Breakout"): runs(whole)}, {})
    pong = next(r for r in rows if r["game"] == "Pong")
    assert pong["truncated_episodes"] == 8 and "late_normalized" not in pong
    assert pong["env_steps"] == 960
    assert [a["group"] for a in aggregate] == ["training games"]  # Pong (held out, cut) is left out
    # without a step cap the same episodes are whole games and are scored
    rows, aggregate = summarise(config(games=["Pong"]), [], {("random", "Pong"): runs(cut)}, {})
    assert "late_normalized" in rows[0] and aggregate


def test_held_out_goals_must_be_absent_from_the_distilled_runs():
    heldout = [int(v) for v in darkroom_goals("heldout")[0]]
    trained = [int(v) for v in darkroom_goals("train")[0]]
    teach = TeachManifest(name="t", shard_root="/s", runs=[
        TeachRun(run_id="a", game="DarkRoom", goal=trained), TeachRun(run_id="b", game="DarkRoom", goal=heldout)])

    def distill(run_ids):
        return DistillManifest(name="d", algorithm="ad", game="DarkRoom", games=["DarkRoom"], data_games=["DarkRoom"],
                               teacher="t", data_version="v", run_ids=run_ids, shard_root="/s", num_actions=5,
                               checkpoint="/c")

    _check_goals_held_out(config(), teach, distill(["a"]))
    with pytest.raises(StageFailed, match=str(tuple(heldout))):
        _check_goals_held_out(config(), teach, distill(["a", "b"]))
    _check_goals_held_out(config(goal_split="train"), teach, distill(["a", "b"]))


def test_intervals_resample_training_runs_not_evaluation_copies():
    cfg = config(games=["Breakout"], copies=4)
    # within each run the copies differ wildly; the three runs' means are identical
    copies = [[0.0] * 4, [100.0] * 4, [20.0] * 4, [80.0] * 4]
    same = {"returns": copies, "lengths": [[100] * 4] * 4, "truncated": [[False] * 4] * 4}
    rows, aggregate = summarise(cfg, ["Breakout"], {("imitator", "Breakout"): runs(same, same, same)}, {})
    (agg,) = aggregate
    assert agg["runs"] == 3 and rows[0]["runs"] == 3 and rows[0]["seeds"] == [0, 1, 2]
    assert agg["ci_low"] == pytest.approx(agg["ci_high"])  # copies never enter the resampling
    assert agg["finding"] is False  # 3 < 5 runs
    low = {**same, "returns": [[10.0] * 4] * 4}
    _, (agg,) = summarise(cfg, ["Breakout"], {("imitator", "Breakout"): runs(same, low, same, low, same)}, {})
    assert agg["runs"] == 5 and agg["finding"] is True and agg["ci_high"] > agg["ci_low"]


def test_untrained_agents_count_their_copies_as_runs_and_few_runs_are_marked():
    from understudy.platform.report import results_table

    cfg = config(games=["Breakout"], copies=6)
    play = {"returns": [[float(i)] * 4 for i in range(6)], "lengths": [[50] * 4] * 6, "truncated": [[False] * 4] * 6}
    rows, aggregate = summarise(cfg, ["Breakout"], {("random", "Breakout"): runs(play),
                                                    ("imitator", "Breakout"): runs(play, play)}, {})
    by_agent = {a["agent"]: a for a in aggregate}
    # random's 6 copies are 6 runs, but every agent of the table is judged on the same number: 2
    assert by_agent["random"]["runs_available"] == 6 and by_agent["random"]["runs"] == 2
    assert by_agent["imitator"]["runs"] == 2 and not by_agent["imitator"]["finding"]
    assert not by_agent["random"]["finding"]
    assert {a["estimator"] for a in aggregate} == {"mean"}  # one estimator for the table
    table = results_table(rows, aggregate)
    assert "fewer than 5 independent training runs" in table
    imitator_line = next(line for line in table.splitlines() if line.startswith("| imitator | training games"))
    assert imitator_line.endswith(")* | 0 of 1 |")


def test_the_imitator_is_every_seed_of_the_best_point_never_the_luckiest_seed():
    from understudy.platform.distill import choose_runs

    trials = [{"point": (("lr", 1e-3),), "seed": 0, "heldout_loss": 0.1},  # the single best seed
              {"point": (("lr", 1e-3),), "seed": 1, "heldout_loss": 0.9},
              {"point": (("lr", 3e-4),), "seed": 1, "heldout_loss": 0.3},
              {"point": (("lr", 3e-4),), "seed": 0, "heldout_loss": 0.4}]
    chosen = choose_runs(trials, "heldout_loss", "min")
    assert [(t["point"], t["seed"]) for t in chosen] == [((("lr", 3e-4),), 0), ((("lr", 3e-4),), 1)]


def test_exceeds_the_data_against_the_split_and_the_whole_history_per_goal_and_past_the_horizon():
    from understudy.platform.report import data_on_scale

    goal = [int(v) for v in darkroom_goals("train")[0]]
    opt = optimal_return(np.array(goal))
    teach = TeachManifest(name="t", shard_root="/s", runs=[TeachRun(run_id="a", game="DarkRoom", goal=goal)])
    history = [0.0, 0.2 * opt, 0.5 * opt, 0.9 * opt, 0.9 * opt, 0.95 * opt]  # what the source reached
    distill = DistillManifest(name="d", algorithm="ad", game="DarkRoom", games=["DarkRoom"], data_games=["DarkRoom"],
                              teacher="t", data_version="v", run_ids=["a"], shard_root="/s", num_actions=5,
                              checkpoint="/c", split_returns={"a": history[:4]}, history_returns={"a": history})
    assert distill.history_length == 4
    data = data_on_scale(teach, distill)["DarkRoom"]
    assert data["split"].max() == pytest.approx(0.9) and data["history"][0].max() == pytest.approx(0.95)

    cfg = config(goal_split="train", copies=1, episodes=6, window=2)
    goals = darkroom_goals("train")
    optimum = np.array([optimal_return(g) for g in goals])
    curve = np.array([0.1, 0.3, 0.6, 0.9, 1.0, 1.0])  # fractions of each goal's optimum
    play = {"returns": (optimum[:, None] * curve).tolist(), "lengths": [[20] * 6] * len(goals),
            "truncated": [[True] * 6] * len(goals)}
    rows, _ = summarise(cfg, ["DarkRoom"], {("imitator", "DarkRoom"): runs(play, play)},
                        {"DarkRoom": data}, horizon=distill.history_length)
    (row,) = rows
    assert row["data_best"] == pytest.approx(0.9) and row["late_minus_data"] == pytest.approx(0.1)
    assert row["history_best_late"] == pytest.approx(0.925)  # the best 2-episode mean of the whole history
    assert row["late_minus_history_late"] == pytest.approx(0.075)
    assert row["horizon"] == 4
    expected = (optimum[:, None] * curve)[:, 4:].mean() - (optimum[:, None] * curve)[:, 2:4].mean()
    assert row["past_horizon_gain"] == pytest.approx(expected)


def test_episodes_to_reach_nine_tenths_of_each_goals_optimum():
    from understudy.platform import metrics

    assert metrics.episodes_to_reach([0.1, 0.5, 0.95, 0.2], 0.9) == 3
    assert metrics.episodes_to_reach([0.1, 0.5], 0.9) is None
    assert metrics.median_episodes_to_reach([[0.9], [0.0, 0.95], [0.0, 0.0, 1.0]], 0.9) == (2.0, 1.0)
    assert metrics.median_episodes_to_reach([[0.9], [0.0], [0.1]], 0.9) == (None, pytest.approx(1 / 3))
    cfg = config(copies=1, episodes=4, window=2)
    goals = darkroom_goals("heldout")
    optimum = np.array([optimal_return(g) for g in goals])
    curve = np.array([0.0, 0.5, 0.95, 1.0])
    play = {"returns": (optimum[:, None] * curve).tolist(), "lengths": [[20] * 4] * len(goals),
            "truncated": [[True] * 4] * len(goals)}
    source = {"split": np.array([0.5]), "history": [np.linspace(0, 1, 11)] * 3}  # 0.9 at episode 10
    rows, _ = summarise(cfg, ["DarkRoom"], {("imitator", "DarkRoom"): runs(play, play, play)}, {"DarkRoom": source})
    assert rows[0]["episodes_to_0.9"] == 3 and rows[0]["reached_0.9"] == 1.0
    assert rows[0]["source_episodes_to_0.9"] == 10


def test_per_goal_fractions_with_t_intervals_over_runs_and_below_random_marked():
    from understudy.platform.report import per_goal, per_goal_table

    goal = [int(v) for v in darkroom_goals("heldout")[0]]
    opt = optimal_return(np.array(goal))
    rows = [{"agent": "imitator", "goal": goal, "optimal_return": opt, "run_seed": seed, "copy": c,
             "episode_returns": [0.0, 0.5 * opt, level * opt, level * opt]}
            for seed, level in ((0, 0.8), (1, 1.0), (2, 0.9)) for c in (0, 1)]
    rows += [{"agent": "random", "goal": goal, "optimal_return": opt, "run_seed": None, "copy": c,
              "episode_returns": [0.95 * opt] * 4} for c in range(4)]  # 4 copies: 4 runs
    by_agent = {r["agent"]: r for r in per_goal(rows, k=2)}
    row = by_agent["imitator"]
    assert row["runs"] == 3 and row["late_fraction"] == pytest.approx(0.9)
    # Student-t over 3 runs: 0.9 -/+ t_{0.975, 2} * 0.1 / sqrt(3) (a percentile bootstrap gave [0.83, 0.97])
    half = 4.302652729911275 * 0.1 / np.sqrt(3)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))
    assert row["episodes_to_0.9"] == 3 and row["reached_0.9"] == pytest.approx(2 / 3)
    assert row["below_random"] is True and by_agent["random"]["below_random"] is None
    assert by_agent["random"]["runs"] == 3 and by_agent["random"]["runs_available"] == 4  # the same n per goal
    table = per_goal_table(list(by_agent.values()))
    assert f"| {tuple(goal)} |" in table and "(below random)" in table
    assert "Goals below random per agent: {'imitator': 1}" in table


def _row(agent, seed, copy, returns, game="MinAtar/SpaceInvaders"):
    return {"agent": agent, "game": game, "goal": None, "run_seed": seed, "copy": copy, "episode_returns": returns}


def test_in_context_improvement_per_training_run_tested_against_zero_not_against_random():
    """Improvement is taken per independent run (copies of one model averaged first, never
    resampled as runs); random's copies are runs; the null is 0 (random's noisy window is not
    subtracted); every agent is on the same number of runs; a single run gets no interval."""
    from understudy.platform.report import improvement_by_run, improvement_table

    rising = [0.0] * 5 + [1.0] * 5
    # imitator: 6 training runs of 2 copies; one copy rises by 1, the other by 3 -> each run +2
    rows = [_row("imitator", s, c, [r * (1 if c == 0 else 3) for r in rising]) for s in range(6) for c in range(2)]
    rows += [_row("random", 0, c, [2.0] * 5 + [2.0 + (c - 3.5) / 10] * 5) for c in range(8)]  # 8 copies: 8 runs
    rows += [_row("ed", 0, c, rising) for c in range(2)]  # one training run: no interval
    out = {r["agent"]: r for r in improvement_by_run(rows, k=5)}
    assert out["imitator"]["runs"] == 6 and out["imitator"]["improvement"] == pytest.approx(2.0)
    assert out["imitator"]["ci_low"] == pytest.approx(2.0) and out["imitator"]["ci_high"] == pytest.approx(2.0)
    assert out["imitator"]["finding"] and "vs_random" not in out["imitator"]
    assert out["imitator"]["sign_flip_p"] == pytest.approx(2 / 2 ** 6)  # all six runs the same sign
    assert "mde" not in out["imitator"]  # its interval excludes 0: an effect was found
    rand = out["random"]
    assert rand["runs_available"] == 8 and rand["runs"] == 6  # cut to the imitator's 6
    gains = (np.arange(6) - 3.5) / 10  # the first six copies' late - early
    assert rand["improvement"] == pytest.approx(gains.mean())
    half = 2.5705818366147395 * gains.std(ddof=1) / np.sqrt(6)  # t_{0.975, 5}
    assert (rand["ci_low"], rand["ci_high"]) == (pytest.approx(gains.mean() - half), pytest.approx(gains.mean() + half))
    assert out["ed"]["runs"] == 1 and out["ed"]["ci_low"] is None and not out["ed"]["finding"]
    table = improvement_table(list(out.values()), 5)
    assert "| imitator | MinAtar/SpaceInvaders | 6 | +2.00 | [+2.00, +2.00] | 0.000 | 0.031 | - | - |" in table
    assert "| ed | MinAtar/SpaceInvaders | 1 | +1.00 | - (1 run) |" in table
    assert "minus random" not in table


def test_no_improvement_shows_the_minimum_detectable_effect_and_what_a_copy_of_the_data_would_show():
    from scipy import stats

    from understudy.platform import metrics
    from understudy.platform.report import improvement_by_run, improvement_table

    k, n_ep = 5, 20
    gains = [1.0, -2.0, 0.5, 2.5]  # per run: an interval around 0
    rows = [_row("imitator", s, 0, [0.0] * (n_ep - k) + [g] * k) for s, g in enumerate(gains)]
    # the imitator's training data: two histories rising by 0.5 and 1.5 per episode (mean slope 1)
    data = {"MinAtar/SpaceInvaders": {"split_runs": [np.arange(30) * 0.5, np.arange(40) * 1.5 + 3],
                                      "history": [], "split": np.zeros(1)}}
    (row,) = improvement_by_run(rows, k, data)
    assert row["ci_low"] < 0 < row["ci_high"]
    sd = np.std(gains, ddof=1)
    assert row["mde"] == pytest.approx(metrics.minimum_detectable_effect(sd, 4))
    textbook = (stats.t.ppf(0.975, 3) + stats.t.ppf(0.8, 3)) * sd / 2  # (t_{0.975,3} + t_{0.8,3}) sd / sqrt(4)
    assert textbook < row["mde"] < 1.05 * textbook  # the noncentral t's exact value, a little above it
    span = 43.0 - 2.77  # MinAtar SpaceInvaders: the authors' DQN - random
    assert row["mde_normalised"] == pytest.approx(row["mde"] / span)
    assert row["if_copied"] == pytest.approx(1.0 * (n_ep - k))  # mean slope x episodes between window centres
    assert row["if_copied_normalised"] == pytest.approx(15.0 / span)
    table = improvement_table([row], k)
    assert f"| {row['mde']:.2f} ({row['mde'] / span:.3f}) | +15.00 ({15.0 / span:+.3f}) |" in table


def test_controls_give_the_paired_in_context_effect():
    """imitator - context_reset on the same training runs: the run-to-run spread they share
    cancels, so the paired interval is narrow where the unpaired one would not be; any agent of
    CONTROLS gets it, and keeps its own gain against 0."""
    from scipy import stats

    from understudy.platform.report import CONTROLS, improvement_by_run, improvement_table

    assert CONTROLS["context_reset"] == CONTROLS["reward_blind"] == "imitator"
    k, shared = 5, [3.0, -4.0, 6.0, -1.0, 0.0]  # each training run's own gain, shared by its controls
    rows = []
    for seed, base in enumerate(shared):
        rows += [_row("imitator", seed, c, [0.0] * 5 + [base + 1.0 + 0.1 * seed] * 5) for c in range(2)]
        rows += [_row("context_reset", seed, c, [0.0] * 5 + [base] * 5) for c in range(2)]
        rows += [_row("reward_blind", seed, c, [0.0] * 5 + [base + 0.5] * 5) for c in range(2)]
    out = {r["agent"]: r for r in improvement_by_run(rows, k)}
    reset = out["context_reset"]
    d = 1.0 + 0.1 * np.arange(5)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert reset["control_of"] == "imitator" and reset["effect_pairs"] == 5
    assert reset["effect"] == pytest.approx(d.mean())
    assert reset["effect_low"] == pytest.approx(d.mean() - half)
    assert reset["effect_high"] == pytest.approx(d.mean() + half)
    assert reset["effect_low"] > 0  # found, paired ...
    assert out["imitator"]["ci_low"] < 0  # ... where the imitator's own gain against 0 is not
    assert "mde" in out["imitator"] and "effect_mde" not in reset
    assert out["reward_blind"]["effect"] == pytest.approx(d.mean() - 0.5)  # and its own gain is reported
    assert out["reward_blind"]["improvement"] == pytest.approx(np.mean(shared) + 0.5)
    table = improvement_table(list(out.values()), k)
    assert "| imitator - context_reset | MinAtar/SpaceInvaders | 5 | +1.20 |" in table
    assert "| imitator - reward_blind |" in table and "in-context effect" in table


def test_a_memoryless_player_is_not_found_to_improve():
    """The final teacher (or random play) has no memory across episodes: its returns are i.i.d.
    Over many simulated evaluations (3 training runs x 2 copies x 20 episodes; normal and skewed
    returns), the improvement interval excludes 0 at most ~7% of the time (nominal 5%)."""
    from understudy.platform.report import improvement_by_run

    rng = np.random.default_rng(7)
    for draw in (lambda size: rng.normal(10.0, 3.0, size), lambda size: rng.exponential(5.0, size)):
        found = 0
        sims = 2000
        for _ in range(sims):
            returns = draw((3, 2, 20)) * rng.lognormal(0.0, 0.5, (3, 1, 1))  # each run its own level
            rows = [_row("teacher", s, c, returns[s, c].tolist()) for s in range(3) for c in range(2)]
            (row,) = improvement_by_run(rows, k=5)
            found += not row["ci_low"] <= 0 <= row["ci_high"]
        assert found / sims <= 0.07, found / sims


def test_aggregate_judges_every_agent_on_the_same_runs_with_the_same_estimator():
    """With 3 imitator runs the IQM is a plain mean while random's 4 copies would get a midmean:
    every agent is cut to 3 runs and the table uses one estimator (the mean, t over runs); from
    10 runs on, the IQM with its stratified bootstrap."""
    cfg = config(games=["Breakout"], copies=1)

    def play(levels):
        return {"returns": [[v] * 4 for v in levels], "lengths": [[50] * 4] * len(levels),
                "truncated": [[False] * 4] * len(levels)}

    imitator = [play([v]) for v in (10.0, 12.0, 20.0)]
    random = play([1.0, 2.0, 3.0, 100.0])  # 4 copies; an IQM would average the middle two
    _, aggregate = summarise(config(games=["Breakout"], copies=4), ["Breakout"],
                             {("imitator", "Breakout"): runs(*[{**p, "returns": p["returns"] * 4,
                                                                 "lengths": p["lengths"] * 4,
                                                                 "truncated": p["truncated"] * 4} for p in imitator]),
                              ("random", "Breakout"): runs(random)}, {})
    by_agent = {a["agent"]: a for a in aggregate}
    assert by_agent["random"]["runs"] == by_agent["imitator"]["runs"] == 3
    assert {a["estimator"] for a in aggregate} == {"mean"}
    norm = lambda x: (x - 1.7) / (30.5 - 1.7)  # noqa: E731
    assert by_agent["random"]["point"] == pytest.approx(norm(2.0))  # mean of its first 3 copies, not a midmean
    assert by_agent["imitator"]["point"] == pytest.approx(norm(14.0))
    many = [play([float(v)]) for v in range(12)]
    _, aggregate = summarise(cfg, ["Breakout"], {("imitator", "Breakout"): runs(*many),
                                                 ("random", "Breakout"): runs(play([float(v) for v in range(12)]))}, {})
    assert {a["estimator"] for a in aggregate} == {"iqm"} and {a["runs"] for a in aggregate} == {12}


def test_below_random_play_is_flagged_per_row_and_counted_per_agent():
    from understudy.platform.report import headline_metrics, results_table

    cfg = config(games=["Breakout", "Pong"], copies=2)

    def play(level):
        return {"returns": [[level] * 4] * 2, "lengths": [[50] * 4] * 2, "truncated": [[False] * 4] * 2}

    results = {("imitator", "Breakout"): runs(play(0.5), play(1.0)), ("random", "Breakout"): runs(play(1.7)),
               ("imitator", "Pong"): runs(play(-10.0), play(-12.0)), ("random", "Pong"): runs(play(-20.0))}
    rows, aggregate = summarise(cfg, ["Breakout", "Pong"], results, {})
    flags = {(r["agent"], r["game"]): r.get("below_random") for r in rows}
    assert flags == {("imitator", "Breakout"): 1, ("imitator", "Pong"): 0, ("random", "Breakout"): None,
                     ("random", "Pong"): None}
    (imitator,) = [a for a in aggregate if a["agent"] == "imitator"]
    assert imitator["below_random"] == 1 and imitator["below_random_tasks"] == ["Breakout"]
    table = results_table(rows, aggregate)
    assert "| 1 of 2: Breakout |" in table
    assert headline_metrics(rows, aggregate)["below_random/imitator/training"] == 1.0


def test_raw_rows_carry_each_runs_env_steps_and_export_the_forgetting_replays():
    """Env steps are reported per training run (a learner), not only summed over runs, and the
    fine-tuned weights' replays on the old game are raw rows of their own (the forgetting figure
    can be recomputed from the results file)."""
    from understudy.platform.report import episode_rows

    cfg = config(games=["MinAtar/SpaceInvaders"], copies=2)
    play = {"returns": [[1.0, 2.0, 3.0, 4.0]] * 2, "lengths": [[10] * 4] * 2, "truncated": [[False] * 4] * 2,
            "env_steps": 80}
    tuned = runs(play, play)
    tuned["runs"][0]["replays"] = {"MinAtar/Breakout": [[5.0, 6.0], [7.0, 8.0]]}
    results = {("finetune", "MinAtar/SpaceInvaders"): tuned}
    rows, _ = summarise(cfg, ["MinAtar/Breakout"], results, {})
    assert rows[0]["env_steps"] == 160 and rows[0]["env_steps_per_run"] == 80
    raw = episode_rows(cfg, results, [0], "x", trained=["MinAtar/Breakout"])
    played = [r for r in raw if r["arm"] == "finetune"]
    replayed = [r for r in raw if r["arm"] == "finetune_replay"]
    assert len(played) == 4 and {r["run_env_steps"] for r in played} == {80}
    assert [r["episode_returns"] for r in replayed] == [[5.0, 6.0], [7.0, 8.0]]
    assert all(r["game"] == "MinAtar/Breakout" and r["heldout"] is False and r["run_seed"] == 0 for r in replayed)
    assert replayed[0]["agent"] == "finetune on MinAtar/SpaceInvaders, then frozen"
