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
from understudy.platform.teach import StageFailed


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
    rows, aggregate = summarise(cfg, ["Breakout"], {("random", "Pong"): runs(cut), ("random", "Breakout"): runs(whole)}, {})
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
    assert by_agent["random"]["runs"] == 6 and by_agent["random"]["finding"]
    assert by_agent["imitator"]["runs"] == 2 and not by_agent["imitator"]["finding"]
    table = results_table(rows, aggregate)
    assert "fewer than 5 independent training runs" in table
    imitator_line = next(line for line in table.splitlines() if line.startswith("| imitator | training games"))
    assert imitator_line.endswith(")* |")


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


def test_per_goal_fractions_with_intervals_over_runs():
    from understudy.platform.report import per_goal, per_goal_table

    goal = [int(v) for v in darkroom_goals("heldout")[0]]
    opt = optimal_return(np.array(goal))
    rows = [{"agent": "imitator", "goal": goal, "optimal_return": opt, "run_seed": seed, "copy": c,
             "episode_returns": [0.0, 0.5 * opt, level * opt, level * opt]}
            for seed, level in ((0, 0.8), (1, 1.0), (2, 0.9)) for c in (0, 1)]
    (row,) = per_goal(rows, k=2)
    assert row["runs"] == 3 and row["late_fraction"] == pytest.approx(0.9)
    assert 0.8 <= row["ci_low"] < 0.9 < row["ci_high"] <= 1.0
    assert row["episodes_to_0.9"] == 3 and row["reached_0.9"] == pytest.approx(2 / 3)
    assert f"| {tuple(goal)} |" in per_goal_table([row])


def test_in_context_improvement_per_training_run_with_an_effect_against_random():
    """Improvement is taken per independent run (copies of one model averaged first, never
    resampled as runs); random's copies are runs; the effect against random is the difference
    of the two mean improvements, and fewer than 5 runs are marked."""
    from understudy.platform.report import improvement_by_run, improvement_table

    rising, flat = [0.0] * 5 + [1.0] * 5, [2.0] * 10

    def row(agent, seed, copy, returns):
        return {"agent": agent, "game": "MinAtar/SpaceInvaders", "goal": None, "run_seed": seed, "copy": copy,
                "episode_returns": returns}

    # imitator: 6 training runs of 2 copies; one copy rises by 1, the other by 3 -> each run +2
    rows = [row("imitator", s, c, [r * (1 if c == 0 else 3) for r in rising]) for s in range(6) for c in range(2)]
    rows += [row("random", 0, c, flat) for c in range(6)]  # one "seed", 6 copies: 6 runs of 0
    rows += [row("ed", 0, c, rising) for c in range(2)]  # one training run: indicative only
    out = {r["agent"]: r for r in improvement_by_run(rows, k=5)}
    assert out["imitator"]["runs"] == 6 and out["imitator"]["improvement"] == pytest.approx(2.0)
    assert out["imitator"]["ci_low"] == pytest.approx(2.0) and out["imitator"]["ci_high"] == pytest.approx(2.0)
    assert out["imitator"]["vs_random"] == pytest.approx(2.0) and out["imitator"]["finding"]
    assert out["random"]["runs"] == 6 and out["random"]["improvement"] == 0.0 and "vs_random" not in out["random"]
    assert out["ed"]["runs"] == 1 and not out["ed"]["finding"]
    table = improvement_table(list(out.values()), 5)
    assert "| imitator | MinAtar/SpaceInvaders | 6 | +2.00 | [+2.00, +2.00] | +2.00 |" in table
    assert "fewer than 5 runs" in table
