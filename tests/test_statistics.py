"""Honest statistics at few runs: the intervals and tests the reports use hold their nominal
level when the null is true (normal and skewed returns, 3 and 5 training runs), the minimum
detectable effect has the power it claims, and the teacher's gain per training window is taken
with each history's own episode length."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from understudy.platform import metrics

SIMS = 4000  # simulated datasets per case: a 5% rate is estimated to +-0.7% (one SE 0.34%)
LEVEL = 0.07  # the most a nominal 5% test may reject a true null here


def _rejects(values) -> bool:
    t = metrics.t_interval(values)
    return not t["low"] <= 0 <= t["high"]


def _improvements(returns: np.ndarray, k: int = 5) -> np.ndarray:
    """(..., episodes) -> late mean - early mean per run, as in_context_improvement."""
    return returns[..., -k:].mean(-1) - returns[..., :k].mean(-1)


@pytest.mark.parametrize("runs", [3, 5])
def test_t_interval_holds_its_level_on_normal_per_run_values(runs):
    rng = np.random.default_rng(runs)
    x = rng.normal(2.0, 5.0, size=(SIMS, runs)) - 2.0  # mean 0, any scale
    rate = np.mean([_rejects(v) for v in x])
    assert 0.03 <= rate <= LEVEL, rate  # near 5%: neither anti-conservative nor dead


@pytest.mark.parametrize("runs", [3, 5])
def test_improvement_and_paired_effect_hold_their_level_on_skewed_returns(runs):
    """Exponential episode returns, a lognormal level per training run (skewed twice over): the
    improvement of a memoryless player, and the paired effect imitator - context_reset when the
    context does nothing (the two agents exchangeable on each run's shared env seeds)."""
    rng = np.random.default_rng(10 + runs)
    level = rng.lognormal(0.0, 1.0, size=(SIMS, runs, 1))
    memoryless = rng.exponential(1.0, size=(SIMS, runs, 20)) * level
    assert np.mean([_rejects(v) for v in _improvements(memoryless)]) <= LEVEL

    shared = rng.exponential(1.0, size=(SIMS, runs, 20)) * level  # what the paired env seeds share
    imitator = shared + rng.exponential(1.0, size=(SIMS, runs, 20)) * level
    reset = shared + rng.exponential(1.0, size=(SIMS, runs, 20)) * level
    rate = np.mean([_rejects(a - b) for a, b in zip(_improvements(imitator), _improvements(reset))])
    assert rate <= LEVEL, rate


def test_the_level_check_catches_the_percentile_bootstrap_it_replaced():
    """The same check fails the old interval: a percentile bootstrap over 3 runs rejects a true
    null far more than 5% (about a quarter of the time)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SIMS, 3))
    boot = x[np.arange(SIMS)[:, None, None], rng.integers(0, 3, size=(SIMS, 500, 3))].mean(-1)
    low, high = np.percentile(boot, [2.5, 97.5], axis=1)
    assert np.mean((low > 0) | (high < 0)) > 0.15


def test_sign_flip_p_enumerates_every_sign_vector():
    assert metrics.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # only all +, all - as extreme
    assert metrics.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert metrics.sign_flip_p([1.0, -1.0]) == 1.0
    d = np.random.default_rng(1).normal(0.3, 1.0, size=9)
    brute = np.mean([abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in itertools.product([-1, 1], repeat=9)])
    assert metrics.sign_flip_p(d) == pytest.approx(brute)
    d = np.random.default_rng(2).normal(0.5, 1.0, size=17)  # past exact_up_to: random sign vectors
    assert metrics.sign_flip_p(d) == pytest.approx(metrics.sign_flip_p(d, exact_up_to=17), abs=0.01)


def test_sign_flip_p_holds_its_level_on_symmetric_nulls():
    rng = np.random.default_rng(3)
    x = rng.standard_t(2, size=(2000, 8))  # heavy-tailed, symmetric
    assert np.mean([metrics.sign_flip_p(v) <= 0.05 for v in x]) <= LEVEL
    # at 5 runs the smallest p is 2/32: no 5% finding is possible without assuming a distribution
    assert metrics.sign_flip_p([5.0, 6.0, 7.0, 8.0, 9.0]) == pytest.approx(0.0625)


@pytest.mark.parametrize("runs", [3, 5])
def test_minimum_detectable_effect_has_the_power_it_claims(runs):
    from scipy import stats

    mde = metrics.minimum_detectable_effect(2.0, runs)  # between-run SD 2
    textbook = (stats.t.ppf(0.975, runs - 1) + stats.t.ppf(0.8, runs - 1)) * 2.0 / np.sqrt(runs)
    assert metrics.minimum_detectable_effect(2.0, runs, exact=False) == pytest.approx(textbook)
    assert mde > textbook  # the textbook form is optimistic at few runs
    x = np.random.default_rng(runs).normal(mde, 2.0, size=(SIMS, runs))
    assert np.mean([_rejects(v) for v in x]) == pytest.approx(0.80, abs=0.025)
    assert metrics.minimum_detectable_effect(None, runs) is None
    assert metrics.minimum_detectable_effect(2.0, 1) is None


def test_expected_gain_if_copied_is_the_histories_mean_slope_times_the_episodes():
    histories = [np.arange(30) * 0.5, np.arange(40) * 1.5 + 3.0, [7.0, 8.0]]  # the last: too short
    assert metrics.expected_gain_if_copied(histories, 15) == pytest.approx(1.0 * 15)
    noisy = np.arange(200) * 0.1 + np.random.default_rng(0).normal(size=200)
    assert metrics.expected_gain_if_copied([noisy], 10) == pytest.approx(10 * np.polyfit(np.arange(200), noisy, 1)[0])
    assert metrics.expected_gain_if_copied([[1.0, 2.0]], 10) is None


def _history(returns, steps, run_id="r"):
    return SimpleNamespace(run_id=run_id, episodes=[SimpleNamespace(ret=float(r), steps=steps) for r in returns])


def test_teacher_gain_per_context_uses_each_historys_own_episode_length():
    """A 512-step context holds 5.12 episodes of 100 steps but 0.2 of Freeway's 2,500: each
    history's slope is scaled by its own episodes per context, not by the pooled mean length
    (1,300 steps here, which gave both histories 0.39 episodes)."""
    from understudy.platform.distill import improvement_per_context

    short, long = _history(np.arange(50) * 1.0, 100, "a"), _history(np.arange(50) * 1.0, 2500, "b")
    out = improvement_per_context([short, long], context_steps=512)
    assert out["return_gain_per_context_by_history"] == pytest.approx([5.12, 0.2048])
    assert out["episodes_per_context_by_history"] == pytest.approx([5.12, 0.205], abs=1e-3)
    assert out["return_gain_per_context"] == pytest.approx((5.12 + 0.2048) / 2)
    assert out["return_gain_per_context_median"] == pytest.approx((5.12 + 0.2048) / 2)
    assert out["history_run_ids"] == ["a", "b"]
    # the older call (episodes per context pooled over the histories) means the same context
    assert improvement_per_context([short, long], 512 / 1300) == out
    with pytest.raises(ValueError, match="context_steps"):
        improvement_per_context([short], 1.0, context_steps=512)


def test_teacher_gain_per_context_counts_gap_once():
    """With data.gap the selected episodes are every gap-th one: the slope per selected episode
    is gap times the slope per played episode, and the context holds selected episodes; no
    further factor of gap."""
    from understudy.histories.data import EpisodeRef, HistoryIndex, Selection
    from understudy.platform.distill import improvement_per_context

    episodes = tuple(EpisodeRef(run_id="r", env_runner=0, episode_index=i, shard="s", row=0, steps=100,
                                ret=float(i), first_policy_version=i, last_policy_version=i) for i in range(60))
    history = HistoryIndex("r", "Breakout", {}, episodes)
    (every,) = Selection(gap=1).apply([history])
    (third,) = Selection(gap=3).apply([history])
    assert improvement_per_context([every], context_steps=1000)["return_gain_per_context"] == pytest.approx(10.0)
    assert improvement_per_context([third], context_steps=1000)["return_gain_per_context"] == pytest.approx(30.0)
