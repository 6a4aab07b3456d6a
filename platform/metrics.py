"""Evaluation metrics: does a frozen imitator keep improving in-context, does it beat its training
data, and aggregates over games with honest uncertainty.

Few runs (3-5 training seeds) are the norm here, and a percentile bootstrap over so few runs is
anti-conservative (at nominal 5% it rejects a true null about 24% of the time at 3 runs, 16% at
5). So: Student-t intervals over per-run values (and over paired per-run differences), an exact
sign-flip permutation p-value beside them, and the minimum detectable effect of a t-test; the
interquartile mean with a stratified bootstrap (Agarwal et al. 2021, "Deep RL at the Edge of the
Statistical Precipice") only where runs are many (MANY_RUNS per task).

Plain functions on plain arrays: numpy, and scipy.stats for Student-t, chi-square and normal
quantiles (scipy is a dependency of mlflow and MinAtar, both pinned). `iqm` and
`stratified_bootstrap_ci` are rliable's estimators, vectorised over resamples (rliable calls the
statistic once per resample through arch); tests/test_rliable.py checks them against rliable
1.2.0 on the same scores: equal points, interval endpoints within 4 Monte-Carlo standard errors.
"""
from __future__ import annotations

from functools import lru_cache
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


# ---- few runs: t intervals, sign-flip tests, power -------------------------------------------

MANY_RUNS = 10  # runs per task from which the IQM with a stratified bootstrap is used (rliable)


def _finite_1d(name: str, values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError(f"{name}: empty; valid: at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf; valid: finite values")
    return x


def _confidence(confidence) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}; valid: strictly between 0 and 1, e.g. 0.95")
    return float(confidence)


def t_interval(values, confidence: float = 0.95) -> dict:
    """Student-t interval for the mean of n independent values (one per training run, or one
    paired difference per run), and the two-sided t-test of mean 0:

        mean = sum x_i / n,   sd = sqrt(sum (x_i - mean)^2 / (n - 1)),   se = sd / sqrt(n)
        low, high = mean -/+ t_{(1 + confidence)/2, n-1} * se
        p = 2 * P(T_{n-1} > |mean| / se)

    Exact for normal values; for a symmetric null (a difference of exchangeable windows or of
    exchangeable agents, as every null tested here) it stays at or below its nominal level even
    for skewed returns (tests/test_statistics.py). A directly skewed value (a mean level, not a
    difference) can undercover at n = 3. n = 1 has no spread: sd, se, low, high and p are None.
    """
    x = _finite_1d("values", values)
    confidence = _confidence(confidence)
    n, mean = x.size, float(x.mean())
    out = {"mean": mean, "n": n, "sd": None, "se": None, "low": None, "high": None, "p": None}
    if n < 2:
        return out
    from scipy import stats

    sd = float(x.std(ddof=1))
    se = sd / np.sqrt(n)
    q = float(stats.t.ppf((1 + confidence) / 2, n - 1))
    if se == 0:  # every run the same: no spread to test against
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    out.update(sd=sd, se=float(se), low=float(mean - q * se), high=float(mean + q * se), p=p)
    return out


def paired_t_interval(a, b, confidence: float = 0.95) -> dict:
    """`t_interval` of the per-run differences d_i = a_i - b_i (a and b aligned by run: the same
    training seed, the same env seeds), so what the two agents share cancels."""
    a, b = _finite_1d("a", a), _finite_1d("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a, b: {a.size} and {b.size} runs; valid: one value of each per shared run")
    return t_interval(a - b, confidence)


def sign_flip_p(differences, exact_up_to: int = 16, reps: int = 100_000, seed: int = 0) -> float:
    """Two-sided permutation p-value of mean 0 for paired differences (or per-run gains), by
    flipping their signs: valid whenever the null distribution of each d_i is symmetric about 0,
    with no normality assumed.

        p = #{s in {-1, +1}^n : |sum s_i d_i| >= |sum d_i|} / 2^n

    enumerated exactly up to `exact_up_to` values (else `reps` random sign vectors, the observed
    one counted: p = (1 + hits) / (1 + reps)). Its smallest possible value is 2 / 2^n: at 3 runs
    0.25, at 5 runs 0.0625, so under 6 runs it can never reject at 5%: few runs cannot show an
    effect without assuming a distribution.
    """
    d = _finite_1d("differences", differences)
    n = d.size
    observed = abs(d.sum())
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))  # ties (e.g. all flips of zeros) count as extreme
    if n <= exact_up_to:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed - tol))
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(reps, n))
    return float((1 + np.sum(np.abs(signs @ d) >= observed - tol)) / (1 + reps))


def t_test_power(effect_over_se: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample (or paired) t-test at level alpha when the true mean is
    `effect_over_se` standard errors (delta = effect * sqrt(n) / sd, the noncentrality):

        power = P(|T'| > t_{1-alpha/2, n-1}),   T' = (Z + delta) / sqrt(V / (n-1)),
        Z ~ N(0, 1), V ~ chi^2_{n-1}
              = E_V[ Phi(delta - c s) + Phi(-delta - c s) ],  s = sqrt(V / (n-1)), c the quantile

    the expectation over V taken on 4,000 equally likely chi-square quantiles (scipy's nct is
    unstable at df = 1)."""
    from scipy import stats

    c, s = _t_quantile_and_scales(n, alpha)
    return float(np.mean(stats.norm.cdf(effect_over_se - c * s) + stats.norm.cdf(-effect_over_se - c * s)))


@lru_cache(maxsize=256)
def _t_quantile_and_scales(n: int, alpha: float) -> tuple[float, np.ndarray]:
    """t_{1-alpha/2, n-1} and sqrt(V / (n-1)) at 4,000 equally likely quantiles of V ~ chi^2_{n-1}."""
    from scipy import stats

    df = n - 1
    u = (np.arange(4000) + 0.5) / 4000
    return float(stats.t.ppf(1 - alpha / 2, df)), np.sqrt(stats.chi2.ppf(u, df) / df)


@lru_cache(maxsize=256)
def _detectable_over_se(n: int, alpha: float, power: float, exact: bool) -> float:
    """The MDE in standard errors (sd / sqrt(n)): it depends on n, alpha and power only."""
    from scipy import optimize, stats

    df = n - 1
    textbook = float(stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df))
    if not exact:
        return textbook
    return float(optimize.brentq(lambda d: t_test_power(d, n, alpha) - power, 0.0, 4 * textbook))


def minimum_detectable_effect(sd, n: int, alpha: float = 0.05, power: float = 0.8,
                              exact: bool = True) -> float | None:
    """The smallest true mean (or mean paired difference) a two-sided one-sample t-test at level
    `alpha` over n runs detects with probability `power`, given the between-run SD `sd`:

        textbook:  MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)
        exact:     MDE = delta * sd / sqrt(n), delta solving t_test_power(delta, n, alpha) = power
                   (the noncentral t; the textbook form is 5% low at n = 3, 16% at n = 2)

    None when n < 2 or sd is None (no spread to judge by)."""
    if sd is None or n < 2:
        return None
    return float(_detectable_over_se(int(n), float(alpha), float(power), bool(exact)) * float(sd) / np.sqrt(n))


def expected_gain_if_copied(history_returns_list, episodes: float) -> float | None:
    """The in-context gain an imitator would show over `episodes` if it had copied the learning
    in its data perfectly: per history h with returns R_0..R_{m-1} (m >= 3; the episodes the
    imitator trained on, in training order),

        slope_h = sum_i (i - i_bar)(R_i - R_bar) / sum_i (i - i_bar)^2     (return per episode)
        gain    = mean_h(slope_h) * episodes

    For a late-minus-early difference with k-episode windows over n episodes, pass
    episodes = n - k (the distance between the windows' centres): a line of slope s gives exactly
    s * (n - k) there. None without a history of 3 or more episodes."""
    slopes = []
    for h in history_returns_list:
        r = np.asarray(h, dtype=float).ravel()
        if r.size < 3 or not np.all(np.isfinite(r)):
            continue
        i = np.arange(r.size, dtype=float) - (r.size - 1) / 2
        slopes.append(float(np.dot(i, r - r.mean()) / np.dot(i, i)))
    return float(np.mean(slopes)) * float(episodes) if slopes else None


def mean_over_runs_ci(scores, confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(point, low, high) for few runs: scores (runs, tasks); each run's mean over tasks, then
    the mean of those and its Student-t interval over runs (`t_interval`):

        m_r = sum_t x_{r,t} / tasks,   point = sum_r m_r / runs,   low, high: t over the m_r

    Run r of every task is one value of the interval: a trained agent's run r is one trained
    model on every task, so its tasks are not independent of each other, but runs are."""
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"scores: shape {x.shape}; valid: a non-empty (runs, tasks) array")
    out = t_interval(x.mean(axis=1), confidence)
    return out["mean"], out["low"], out["high"]


def estimator_for(runs: int) -> str:
    """Which aggregate a table uses for `runs` runs per task: "iqm" (interquartile mean, stratified
    bootstrap) from MANY_RUNS runs on, else "mean" (plain mean, t interval over runs): with 3
    runs an IQM trims nothing and its bootstrap undercovers."""
    return "iqm" if runs >= MANY_RUNS else "mean"


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
              confidence: float = 0.95, seed: int = 0, estimator: str = "iqm") -> dict:
    """An aggregate across games with its interval: estimator "iqm", the IQM with a stratified
    bootstrap interval (`stratified_bootstrap_ci`; for many runs), or "mean", the plain mean
    over games x runs with a Student-t interval over runs (`mean_over_runs_ci`; for few runs);
    `estimator_for(runs)` picks between them. The result has "point", "estimator" and the point
    under the estimator's name ("iqm" or "mean").

    scores_by_game: game -> one score per run (the same number of runs for every game), e.g.
    each seed's mean evaluation return. With `normalize`, each game's scores become

        (score - lo) / (hi - lo)

    with (lo, hi) = reference[game] when given (e.g. {"DarkRoom": (0.0, optimal_return)}),
    else the game's family's (random, reference) scores (Atari: human; MinAtar: the authors'
    DQN). A game with neither raises ValueError rather than being skipped: a silently smaller
    game set would change what the aggregate means.
    """
    from understudy.envs import family_of
    from understudy.envs import scores as atari_scores

    if not scores_by_game:
        raise ValueError("scores_by_game: empty; valid: {game: [score per run, ...], ...}")
    if estimator not in ("iqm", "mean"):
        raise ValueError(f"estimator={estimator!r}; valid: 'iqm' (many runs) or 'mean' (few runs)")
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
    x = np.stack(columns, axis=1)
    if estimator == "iqm":
        point, low, high = stratified_bootstrap_ci(x, iqm, reps=reps, confidence=confidence, seed=seed)
    else:
        point, low, high = mean_over_runs_ci(x, confidence)
    return {estimator: point, "point": point, "estimator": estimator, "ci_low": low, "ci_high": high,
            "confidence": confidence, "games": games, "runs": next(iter(runs.values())),
            "normalized": normalize}
