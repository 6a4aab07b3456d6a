"""Evaluation metrics and Atari reference scores, on hand-made numbers with known answers."""
import time

import numpy as np
import pytest

from understudy.envs import scores
from understudy.envs.suites import resolve_suite
from understudy.platform import metrics

# --- reference scores -------------------------------------------------------------------------

def test_every_atari57_game_has_reference_scores():
    _, games = resolve_suite("atari57@1")
    assert len(games) == 57
    assert [g for g in games if g not in scores.ATARI_SCORES] == []
    assert set(scores.ATARI_SCORES) == set(games)


@pytest.mark.parametrize("game, random, human", [
    ("Alien", 227.8, 7127.7), ("Breakout", 1.7, 30.5), ("Pong", -20.7, 14.6),
    ("Skiing", -17098.1, -4336.9), ("SpaceInvaders", 148.0, 1668.7)])
def test_human_normalized_is_0_at_random_and_1_at_human(game, random, human):
    assert scores.reference_scores(game) == (random, human)
    assert scores.human_normalized(game, random) == pytest.approx(0.0)
    assert scores.human_normalized(game, human) == pytest.approx(1.0)


def test_human_normalized_accepts_other_spellings_and_arrays():
    assert scores.human_normalized("space_invaders", 148.0) == pytest.approx(0.0)
    assert scores.human_normalized("ms pacman", 6951.6) == pytest.approx(1.0)
    out = scores.human_normalized("Breakout", np.array([1.7, 30.5]))
    np.testing.assert_allclose(out, [0.0, 1.0])


def test_unknown_game_names_the_closest():
    with pytest.raises(ValueError, match=r"'Breakot'.*closest: Breakout"):
        scores.human_normalized("Breakot", 10.0)
    with pytest.raises(ValueError, match="DarkRoom"):
        scores.reference_scores("DarkRoom")


# --- in-context improvement -------------------------------------------------------------------

def test_in_context_improvement_on_a_line():
    returns = [2 * i + 3 for i in range(20)]  # 3, 5, ..., 41
    out = metrics.in_context_improvement(returns, early=5, late=5)
    assert out["slope"] == pytest.approx(2.0)
    assert out["early_mean"] == pytest.approx(7.0)   # mean(3, 5, 7, 9, 11)
    assert out["late_mean"] == pytest.approx(37.0)   # mean(33, ..., 41)
    assert out["improvement"] == pytest.approx(30.0)  # 2 per episode * 15 episodes apart
    assert out["episodes"] == 20


def test_in_context_improvement_flat_and_copies():
    flat = metrics.in_context_improvement([4.0] * 6, early=3, late=3)
    assert flat["slope"] == 0.0 and flat["improvement"] == 0.0
    # (copies, episodes): averaged over copies first -> 0, 1, 2, 3
    out = metrics.in_context_improvement([[0, 0, 2, 2], [0, 2, 2, 4]], early=2, late=2)
    assert out["slope"] == pytest.approx(1.0)
    assert out["improvement"] == pytest.approx(2.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(returns=[1, 2, 3], early=2, late=2), r"3 episodes but early=2 \+ late=2"),
    (dict(returns=[1, 2, 3, 4], early=0, late=2), r"early=0; valid: an integer >= 1"),
    (dict(returns=[1, 2, 3, 4], early=2, late=1.5), r"late=1.5"),
    (dict(returns=[], early=1, late=1), r"returns: shape \(0,\)"),
    (dict(returns=[1, float("nan"), 3, 4], early=1, late=1), r"returns: contains NaN.*\[1\]"),
])
def test_in_context_improvement_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.in_context_improvement(**kwargs)


# --- exceeds data -----------------------------------------------------------------------------

def test_exceeds_data():
    out = metrics.exceeds_data([1, 5, 12, 8, 10], data_returns=[2, 9, 7], late=2)
    assert out == {"data_best": 9.0, "best_minus_data_best": 3.0, "late_minus_data_best": 0.0}
    below = metrics.exceeds_data([1, 2], data_returns=[9], late=1)
    assert below["best_minus_data_best"] == -7.0 and below["late_minus_data_best"] == -7.0


def test_exceeds_data_validates():
    with pytest.raises(ValueError, match=r"late=4 but there are only 3 episodes"):
        metrics.exceeds_data([1, 2, 3], [1], late=4)
    with pytest.raises(ValueError, match=r"data_returns: shape"):
        metrics.exceeds_data([1, 2, 3], [], late=1)


# --- IQM --------------------------------------------------------------------------------------

def test_iqm_of_1_to_8_is_the_mean_of_3_to_6():
    assert metrics.iqm(np.arange(1, 9)) == 4.5
    # flattened over runs x tasks, order irrelevant
    assert metrics.iqm([[8, 1, 6, 3], [2, 7, 4, 5]]) == 4.5


def test_iqm_cuts_floor_n_over_4_from_each_end():
    # n = 10: floor(2.5) = 2 values cut each end, the middle 6 kept (scipy.stats.trim_mean).
    x = [100, -50, 0, 3, 100, 1, 4, 0, 2, 100]  # sorted: -50 0 0 1 2 3 4 100 100 100
    assert metrics.iqm(x) == pytest.approx((0 + 1 + 2 + 3 + 4 + 100) / 6)
    # n = 3: floor(0.75) = 0, nothing cut: the plain mean.
    assert metrics.iqm([1, 2, 9]) == pytest.approx(4.0)


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 7, 10, 13, 57, 570):
        x = rng.normal(size=n)
        assert metrics.iqm(x) == pytest.approx(stats.trim_mean(x, 0.25, axis=None))


def test_iqm_validates():
    with pytest.raises(ValueError, match="scores: empty"):
        metrics.iqm([])
    with pytest.raises(ValueError, match="NaN"):
        metrics.iqm([1.0, np.inf])


# --- stratified bootstrap ---------------------------------------------------------------------

def _scores(runs, tasks=57, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(loc=np.linspace(0, 2, tasks), scale=1.0, size=(runs, tasks))


def test_bootstrap_contains_point_and_is_deterministic():
    x = _scores(10)
    point, low, high = metrics.stratified_bootstrap_ci(x, seed=3)
    assert point == pytest.approx(metrics.iqm(x))
    assert low < point < high
    assert metrics.stratified_bootstrap_ci(x, seed=3) == (point, low, high)
    assert metrics.stratified_bootstrap_ci(x, seed=4) != (point, low, high)


def test_bootstrap_constant_scores_give_zero_width():
    point, low, high = metrics.stratified_bootstrap_ci(np.full((5, 4), 1.5))
    assert point == low == high == 1.5


def test_bootstrap_interval_shrinks_with_more_runs():
    widths = []
    for runs in (3, 30):
        _, low, high = metrics.stratified_bootstrap_ci(_scores(runs, tasks=20), seed=0)
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_bootstrap_resamples_within_tasks():
    # Task 0 always scores 0, task 1 always 10: resampling within tasks keeps every resample's
    # mean at exactly 5 (resampling across the flattened matrix would not).
    x = np.array([[0.0, 10.0]] * 6)
    mean = lambda s: float(np.mean(s))  # noqa: E731  (a statistic with no batched form)
    assert metrics.stratified_bootstrap_ci(x, statistic=mean, reps=200) == (5.0, 5.0, 5.0)


def test_bootstrap_is_fast():
    x = _scores(10, 57)
    start = time.perf_counter()
    metrics.stratified_bootstrap_ci(x, reps=2000)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=[1.0, 2.0]), r"scores: shape \(2,\); valid: a non-empty \(runs, tasks\)"),
    (dict(scores=[[1.0]], reps=0), r"reps=0"),
    (dict(scores=[[1.0]], confidence=1.0), r"confidence=1.0; valid: strictly between 0 and 1"),
])
def test_bootstrap_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.stratified_bootstrap_ci(**kwargs)


# --- aggregate --------------------------------------------------------------------------------

def test_aggregate_normalises_per_game():
    # Every run at human level on both games -> IQM 1 with a zero-width interval.
    out = metrics.aggregate({"Pong": [14.6, 14.6, 14.6], "Breakout": [30.5, 30.5, 30.5]})
    assert out["iqm"] == pytest.approx(1.0)
    assert out["ci_low"] == pytest.approx(1.0) and out["ci_high"] == pytest.approx(1.0)
    assert out["games"] == ["Pong", "Breakout"] and out["runs"] == 3


def test_aggregate_darkroom_needs_a_reference():
    with pytest.raises(ValueError, match=r"DarkRoom.*reference="):
        metrics.aggregate({"DarkRoom": [5.0, 6.0], "Pong": [-20.7, 14.6]})
    out = metrics.aggregate({"DarkRoom": [0.0, 10.0], "Pong": [-20.7, 14.6]},
                            reference={"DarkRoom": (0.0, 10.0)})
    assert out["iqm"] == pytest.approx(0.5)
    raw = metrics.aggregate({"DarkRoom": [5.0, 7.0]}, normalize=False)
    assert raw["iqm"] == pytest.approx(6.0) and raw["normalized"] is False


def test_aggregate_validates():
    with pytest.raises(ValueError, match="runs per game differ"):
        metrics.aggregate({"Pong": [1.0, 2.0], "Breakout": [3.0]})
    with pytest.raises(ValueError, match=r"reference\['DarkRoom'\].*low != high"):
        metrics.aggregate({"DarkRoom": [1.0]}, reference={"DarkRoom": (3.0, 3.0)})


def test_ragged_returns_are_rejected_clearly():
    with pytest.raises(ValueError, match=r"returns: not numbers of one shape"):
        metrics.in_context_improvement([[1, 2], [3]], early=1, late=1)


# --- few runs: t intervals, the mean aggregate ------------------------------------------------

def test_t_interval_by_hand():
    out = metrics.t_interval([1.0, 2.0, 6.0])  # mean 3, sd sqrt(7), se sqrt(7/3)
    half = 4.302652729911275 * np.sqrt(7 / 3)  # t_{0.975, 2}
    assert out["mean"] == 3.0 and out["n"] == 3 and out["sd"] == pytest.approx(np.sqrt(7))
    assert (out["low"], out["high"]) == (pytest.approx(3 - half), pytest.approx(3 + half))
    stats = pytest.importorskip("scipy.stats")
    assert out["p"] == pytest.approx(stats.ttest_1samp([1.0, 2.0, 6.0], 0.0).pvalue)
    one = metrics.t_interval([4.0])
    assert one["mean"] == 4.0 and one["low"] is one["high"] is one["p"] is None  # one run: no spread
    same = metrics.t_interval([2.0, 2.0, 2.0])
    assert same["low"] == same["high"] == 2.0 and same["p"] == 0.0


def test_paired_t_interval_cancels_what_runs_share():
    a, b = np.array([10.0, -5.0, 30.0]), np.array([9.0, -6.5, 28.5])  # run levels shared, a ~1.3 above
    paired = metrics.paired_t_interval(a, b)
    assert paired["mean"] == pytest.approx(4 / 3) and paired["low"] > 0
    assert metrics.t_interval(a)["low"] < 0  # either agent alone: the shared spread hides it
    with pytest.raises(ValueError, match="3 and 2 runs"):
        metrics.paired_t_interval(a, b[:2])


def test_aggregate_with_few_runs_is_the_mean_with_a_t_interval_over_runs():
    assert metrics.estimator_for(3) == "mean" and metrics.estimator_for(metrics.MANY_RUNS) == "iqm"
    scores = {"A": [0.0, 1.0, 5.0], "B": [2.0, 1.0, 3.0]}  # run means 1, 1, 4
    out = metrics.aggregate(scores, normalize=False, estimator="mean")
    t = metrics.t_interval([1.0, 1.0, 4.0])
    assert out["estimator"] == "mean" and out["point"] == out["mean"] == pytest.approx(2.0)
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(t["low"]), pytest.approx(t["high"]))
    assert "iqm" not in out
    point, low, high = metrics.mean_over_runs_ci(np.array([scores["A"], scores["B"]]).T)
    assert (point, low, high) == (pytest.approx(2.0), pytest.approx(t["low"]), pytest.approx(t["high"]))
    with pytest.raises(ValueError, match="estimator='median'"):
        metrics.aggregate(scores, normalize=False, estimator="median")
