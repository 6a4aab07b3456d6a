"""Selections of recorded histories that need no recording to check: the return cap."""
import pytest

from understudy.envs.darkroom import darkroom_goals, optimal_return
from understudy.histories import data


def _history(returns, goal=(1, 1), game="DarkRoom"):
    eps = tuple(data.EpisodeRef("run-a", 0, i, "shard", 20 * i, 20, float(r), i, i) for i, r in enumerate(returns))
    return data.HistoryIndex("run-a", game, {"goal": list(goal)} if goal is not None else {}, eps)


def test_return_cap_keeps_each_history_up_to_its_first_episode_over_the_cap():
    goal = darkroom_goals("train")[3]
    best = optimal_return(goal)
    returns = [0, 0.2 * best, 0.5 * best, 0.3 * best, 0.51 * best, 0.1 * best, best]
    kept = data.Selection(cap_return_fraction=0.5).apply([_history(returns, goal)])[0].episodes
    assert [e.ret for e in kept] == returns[:4]  # 0.5 x the optimum is not over it; 0.51 x is
    assert max(e.ret for e in kept) <= 0.5 * best
    # the cap comes before gap subsampling, as the docstring orders them
    gapped = data.Selection(cap_return_fraction=0.5, gap=2).apply([_history(returns, goal)])[0].episodes
    assert [e.ret for e in gapped] == returns[:4:2]


def test_return_cap_needs_a_game_with_tasks():
    with pytest.raises(ValueError, match="MinAtar/Breakout.*no tasks with an optimum"):
        data.Selection(cap_return_fraction=0.5).apply([_history([1.0, 2.0], None, "MinAtar/Breakout")])
