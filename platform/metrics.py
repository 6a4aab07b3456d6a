"""Evaluation metrics: does a frozen imitator keep improving in-context, does it beat its training
data, and aggregates over games with honest uncertainty (Agarwal et al. 2021, "Deep RL at the
Edge of the Statistical Precipice": interquartile mean + stratified bootstrap intervals).

numpy only; plain functions on plain arrays.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np


def _returns_1d(name: str, values) -> np.ndarray:
    """Episode returns as a 1-D float array; (copies, episodes) is averaged over copies first."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: not numbers of one shape ({str(values)[:60]}); valid: a list "
                         "of returns per episode, or (copies, episodes) with equal rows") from None
    if arr.ndim == 2:
        arr = arr.mean(axis=0)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: shape {np.shape(values)}; valid: a non-empty list of returns "
                         "per episode, or (copies, episodes)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf at episode(s) "
                         f"{np.flatnonzero(~np.isfinite(arr)).tolist()[:5]}; valid: finite returns")
    return arr


def _window(name: str, k, n: int | None = None) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name}={k!r}; valid: an integer >= 1 (episodes)")
    if n is not None and k > n:
        raise ValueError(f"{name}={k} but there are only {n} episodes; valid: 1..{n}")
    return int(k)


def in_context_improvement(returns, early: int = 5, late: int = 5) -> dict:
    """How much a frozen agent's return grows over consecutive episodes (its context carries over).

    returns: R_0..R_{n-1}, one per consecutive episode (or (copies, episodes): averaged over
    copies first). With i the episode index:

        early_mean  = mean(R_0 .. R_{early-1})
        late_mean   = mean(R_{n-late} .. R_{n-1})
        improvement = late_mean - early_mean
        slope       = sum_i (i - i_bar)(R_i - R_bar) / sum_i (i - i_bar)^2    (least squares,
                      return per episode)

    The early and late windows may not overlap: n >= early + late.
    """
    r = _returns_1d("returns", returns)
    early, late = _window("early", early), _window("late", late)
    if r.size < early + late:
        raise ValueError(f"returns: {r.size} episodes but early={early} + late={late} need at "
                         f"least {early + late}; valid: len(returns) >= early + late")
    i = np.arange(r.size, dtype=float)
    di = i - i.mean()
    early_mean, late_mean = float(r[:early].mean()), float(r[-late:].mean())
    return {
        "early_mean": early_mean,
        "late_mean": late_mean,
        "improvement": late_mean - early_mean,
        "slope": float(np.dot(di, r - r.mean()) / np.dot(di, di)),
        "episodes": int(r.size),
    }


def exceeds_data(returns, data_returns, late: int = 5) -> dict:
    """Does the imitator do better than the best episode in its training data?

        data_best             = max(data_returns)
        best_minus_data_best  = max(returns) - data_best
        late_minus_data_best  = mean(last `late` returns) - data_best

    Positive late_minus_data_best is the stronger claim: it holds on average, not for one lucky
    episode.
    """
    r = _returns_1d("returns", returns)
    data = _returns_1d("data_returns", data_returns)
    late = _window("late", late, r.size)
    data_best = float(data.max())
    return {
        "data_best": data_best,
        "best_minus_data_best": float(r.max()) - data_best,
        "late_minus_data_best": float(r[-late:].mean()) - data_best,
    }


def best_window_mean(returns, window: int) -> float:
    """The best mean of `window` consecutive returns: the highest level a learner held, not one
    lucky episode (the whole series' mean when it is shorter than the window)."""
    r = _returns_1d("returns", returns)
    if r.size <= window:
        return float(r.mean())
    sums = np.convolve(r, np.ones(window), mode="valid")
    return float(sums.max() / window)


def episodes_to_reach(curve, level: float) -> int | None:
    """The first episode (counting from 1) whose return reaches `level`, or None if none does:
    Laskin et al.'s data-efficiency measure, on a per-goal scale (fractions of the optimum)."""
    r = _returns_1d("curve", curve)
    hit = np.flatnonzero(r >= level)
    return int(hit[0]) + 1 if hit.size else None


def median_episodes_to_reach(curves, level: float) -> tuple[float | None, float]:
    """(median episodes to reach `level` over curves, with never reaching counted as the
    longest; None when most never reach it), and the share of curves that reach it."""
    firsts = [episodes_to_reach(c, level) for c in curves]
    reached = [f for f in firsts if f is not None]
    share = len(reached) / len(firsts) if firsts else 0.0
    if share <= 0.5:
        return None, share
    ranked = sorted(f if f is not None else float("inf") for f in firsts)
    return float(np.median(ranked)), share


def _iqm_rows(x: np.ndarray) -> np.ndarray:
    """IQM of each row of a 2-D array (see `iqm`)."""
    n = x.shape[-1]
    cut = int(0.25 * n)  # scipy.stats.trim_mean: floor(0.25 n) cut from each end
    return np.sort(x, axis=-1)[..., cut:n - cut].mean(axis=-1)


def iqm(scores) -> float:
    """Interquartile mean over all runs and tasks (flattened), as rliable's `aggregate_iqm`,
    i.e. scipy.stats.trim_mean(x, 0.25, axis=None):

        sort the n values x_(0) <= ... <= x_(n-1), c = floor(n / 4),
        IQM = mean(x_(c) .. x_(n-1-c))

    When n is not a multiple of 4 this keeps slightly more than the middle half (n=10: c=2,
    the middle 6), with no fractional weights at the cut.
    """
    x = np.asarray(scores, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("scores: empty; valid: at least one score")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores: contains NaN or inf; valid: finite scores")
    return float(_iqm_rows(x[None])[0])


# Statistics with a batched form, f(resamples of shape (reps, runs * tasks)) -> (reps,): the
# bootstrap uses these instead of a Python loop over resamples.
_BATCHED: dict[Callable, Callable] = {iqm: _iqm_rows}


def stratified_bootstrap_ci(scores, statistic: Callable = iqm, reps: int = 2000,
                            confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): `statistic` on `scores` and its percentile bootstrap interval.

    scores: (runs, tasks). Each resample draws `runs` runs with replacement independently within
    each task (stratified by task, so every task keeps its weight), as rliable does:

        x*_{r,t} = x_{J_{r,t}, t},   J_{r,t} ~ Uniform{0..runs-1} i.i.d.
        low, high = percentiles (1 - confidence)/2 and (1 + confidence)/2 of statistic(x*)

    `statistic` takes a (runs, tasks) array. `iqm` is vectorised over resamples; any other
    statistic is called once per resample.
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"scores: shape {x.shape}; valid: a non-empty (runs, tasks) array")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores: contains NaN or inf; valid: finite scores")
    reps = _window("reps", reps)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}; valid: strictly between 0 and 1, e.g. 0.95")
    runs, tasks = x.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    resampled = x[idx, np.arange(tasks)]  # (reps, runs, tasks): column t draws only from task t
    if statistic in _BATCHED:
        stats = _BATCHED[statistic](resampled.reshape(reps, -1))
        point = float(_BATCHED[statistic](x.reshape(1, -1))[0])  # same code path as the resamples
    else:
        stats = np.array([statistic(s) for s in resampled], dtype=float)
        point = float(statistic(x))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return point, float(low), float(high)


def aggregate(scores_by_game: Mapping[str, list[float]], normalize: bool = True,
              reference: Mapping[str, tuple[float, float]] | None = None, reps: int = 2000,
              confidence: float = 0.95, seed: int = 0) -> dict:
    """IQM across games with a stratified bootstrap interval.

    scores_by_game: game -> one score per run (the same number of runs for every game), e.g.
    each seed's mean evaluation return. With `normalize`, each game's scores become

        (score - lo) / (hi - lo)

    with (lo, hi) = reference[game] when given (e.g. {"DarkRoom": (0.0, optimal_return)}),
    else the game's family's (random, reference) scores (Atari: human; MinAtar: the authors' DQN). A game with neither raises
    ValueError rather than being skipped: a silently smaller game set would change what the
    aggregate means.
    """
    from understudy.envs import family_of
    from understudy.envs import scores as atari_scores

    if not scores_by_game:
        raise ValueError("scores_by_game: empty; valid: {game: [score per run, ...], ...}")
    games = list(scores_by_game)
    runs = {g: len(np.atleast_1d(scores_by_game[g])) for g in games}
    if len(set(runs.values())) != 1:
        raise ValueError(f"scores_by_game: runs per game differ ({runs}); valid: the same number "
                         "of runs for every game")
    reference = dict(reference or {})
    columns = []
    for g in games:
        col = np.asarray(scores_by_game[g], dtype=float).ravel()
        if normalize:
            if g in reference:
                lo, hi = map(float, reference[g])
                if hi == lo:
                    raise ValueError(f"reference[{g!r}] = {reference[g]!r}; valid: (low, high) "
                                     "with low != high")
                col = (col - lo) / (hi - lo)
            elif (family_ref := family_of(g).reference(g)) is not None:  # Atari: human; MinAtar: DQN
                lo, hi = family_ref
                col = (col - lo) / (hi - lo)
            else:
                try:
                    atari_scores.reference_scores(g)
                except ValueError as e:
                    raise ValueError(f"scores_by_game[{g!r}]: {e}, via aggregate(reference="
                                     f"{{{g!r}: (low, high)}}), or normalize=False") from None
        columns.append(col)
    point, low, high = stratified_bootstrap_ci(np.stack(columns, axis=1), iqm, reps=reps,
                                               confidence=confidence, seed=seed)
    return {"iqm": point, "ci_low": low, "ci_high": high, "confidence": confidence,
            "games": games, "runs": next(iter(runs.values())), "normalized": normalize}
