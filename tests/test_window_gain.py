"""Distill refuses cross-episode data whose training windows hold too little learning
(platform/distill.check_window_gain): each history's gain across one context against its own
successive-episode noise, judged on the median history, with a logged override."""
from types import SimpleNamespace

import numpy as np
import pytest

from understudy.platform.config import parse_config
from understudy.platform.distill import check_window_gain, context_span, improvement_per_context
from understudy.platform.stages import StageFailed


def history(returns, steps=20):
    return SimpleNamespace(episodes=[SimpleNamespace(ret=float(r), steps=steps) for r in returns], run_id=None)


def noisy(slope, n=60, sd=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return history(slope * np.arange(n) + rng.normal(0, sd, n))


def config(**extra):
    return parse_config({"kind": "distill", "teacher": "t", "game": "DarkRoom", "algorithm": "ad",
                         "model": {"cnn": "grid", "context": 100}, **extra})  # 5 episodes of 20 steps


def test_the_noise_is_one_episode_s_not_the_trend_s():
    # a steep clean rise: the plain SD counts the trend, the successive differences do not
    span = improvement_per_context([noisy(1.0, n=200, sd=0.5, seed=1)], context_steps=100)
    assert span["return_std"] > 50
    assert span["episode_noise_by_history"][0] == pytest.approx(0.5, rel=0.15)
    assert span["gain_over_noise_by_history"][0] == pytest.approx(5.0 / 0.5, rel=0.15)


def test_flat_windows_are_refused_and_the_error_says_what_to_change():
    flat = [noisy(0.01, seed=s) for s in range(9)]  # 0.05 per 5-episode context against noise 1
    with pytest.raises(StageFailed) as err:
        context_span(config(), flat)
    msg = str(err.value)
    assert "0 of 9 histories reach it" in msg and "data.gap 1" in msg
    assert "raise data.gap" in msg and "allow_flat_windows: true" in msg


def test_the_override_trains_anyway_and_is_logged(capsys):
    span = context_span(config(allow_flat_windows=True), [noisy(0.01, seed=s) for s in range(9)])
    assert span["allow_flat_windows"] is True and span["gain_over_noise_median"] < 0.5
    assert "allow_flat_windows: across one context" in capsys.readouterr().out


def test_windows_that_rise_pass_and_the_median_history_decides():
    rising = [noisy(0.5, seed=s) for s in range(5)]  # 2.5 per context against noise 1
    span = context_span(config(), rising + [noisy(0.0, seed=9)] * 4)
    assert span["histories_at_min_gain"] == 5 and span["gain_over_noise_median"] >= 0.5
    with pytest.raises(StageFailed):
        context_span(config(), rising[:4] + [noisy(0.0, seed=9)] * 5)


def test_expert_data_and_too_short_histories_are_not_judged(capsys):
    flat = [noisy(0.0, seed=s) for s in range(5)]
    ed = config(data={"expert_last": 10})
    check_window_gain(ed, improvement_per_context(flat, context_steps=100))  # ED: meant to be flat
    short = [noisy(0.0, n=8, seed=s) for s in range(5)]
    context_span(config(), short)
    assert "window gain not judged: the median history keeps 8 episodes" in capsys.readouterr().out
