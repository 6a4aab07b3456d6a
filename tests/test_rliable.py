"""platform/metrics.py's IQM and stratified bootstrap against rliable (Agarwal et al. 2021), the
field's reference implementation, on the same scores: point estimates equal; interval endpoints
equal within a stated Monte-Carlo tolerance (two percentile bootstraps with different random
draws differ only by the sampling error of an estimated percentile)."""
import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics as rly_metrics

from understudy.platform import metrics

REPS = 10_000  # rliable's bootstrap calls the statistic once per resample (about 5 s here)
SE_MULTIPLE = 4.0  # the tolerance: 4 Monte-Carlo standard errors of the difference of two endpoints


def scores(kind: str, runs: int, tasks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(0.5, 0.2, size=(runs, tasks)) + 0.1 * np.arange(tasks)
    # skewed, per-task levels apart: where a stratified bootstrap and a pooled one part ways
    return rng.lognormal(0.0, 1.0, size=(runs, tasks)) + np.arange(tasks)


def rliable_iqm_ci(x: np.ndarray, reps: int = REPS, seed: int = 1, task_bootstrap: bool = False):
    points, intervals = rly.get_interval_estimates(
        {"agent": x}, lambda s: np.array([rly_metrics.aggregate_iqm(s)]), reps=reps,
        task_bootstrap=task_bootstrap, random_state=np.random.RandomState(seed))
    return float(points["agent"][0]), float(intervals["agent"][0, 0]), float(intervals["agent"][1, 0])


def endpoint_tolerance(x: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """SE_MULTIPLE x the standard error of (ours - rliable's) for the low and high endpoints:
    each is the p-quantile of REPS bootstrap draws, whose sampling SE is
    sqrt(p (1 - p) / REPS) / f(q_p), f the density of the bootstrap distribution at q_p, read
    off 400,000 draws of ours as 2h / (q_{p+h} - q_{p-h}); two independent estimates: x sqrt(2)."""
    rng = np.random.default_rng(123)
    runs, tasks = x.shape
    draws = metrics._iqm_rows(x[rng.integers(0, runs, size=(400_000, runs, tasks)), np.arange(tasks)]
                              .reshape(400_000, -1))
    out = []
    for p in ((1 - confidence) / 2, (1 + confidence) / 2):
        h = 0.005
        spread = np.quantile(draws, p + h) - np.quantile(draws, p - h)
        se = np.sqrt(p * (1 - p) / REPS) * spread / (2 * h)
        out.append(SE_MULTIPLE * np.sqrt(2) * se)
    return out[0], out[1]


@pytest.mark.parametrize("shape", [(3, 1), (4, 4), (5, 3), (10, 5), (7, 2)])
def test_iqm_point_equals_rliables(shape):
    """Including sizes that are no multiple of 4, where the trimming rule matters."""
    for kind in ("normal", "skewed"):
        x = scores(kind, *shape)
        assert metrics.iqm(x) == pytest.approx(float(rly_metrics.aggregate_iqm(x)), rel=1e-12, abs=1e-12)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # rliable passes arch a RandomState
@pytest.mark.parametrize("kind, shape", [("normal", (10, 5)), ("skewed", (12, 3))])
def test_stratified_bootstrap_interval_agrees_with_rliable(kind, shape):
    x = scores(kind, *shape)
    point, low, high = metrics.stratified_bootstrap_ci(x, metrics.iqm, reps=REPS, seed=7)
    ref_point, ref_low, ref_high = rliable_iqm_ci(x)
    tol_low, tol_high = endpoint_tolerance(x)
    assert point == pytest.approx(ref_point, rel=1e-12)
    assert abs(low - ref_low) <= tol_low, (low, ref_low, tol_low)
    assert abs(high - ref_high) <= tol_high, (high, ref_high, tol_high)
    # The same through `aggregate`, the function the reports call.
    agg = metrics.aggregate({f"task{t}": x[:, t] for t in range(x.shape[1])}, normalize=False, reps=REPS,
                            seed=11, estimator="iqm")
    assert agg["iqm"] == pytest.approx(ref_point, rel=1e-12)
    assert abs(agg["ci_low"] - ref_low) <= tol_low and abs(agg["ci_high"] - ref_high) <= tol_high

    # The tolerance is tight enough to tell another bootstrap apart: resampling tasks as well
    # (rliable's task_bootstrap) gives an interval far outside it.
    _, task_low, task_high = rliable_iqm_ci(x, task_bootstrap=True)
    assert abs(task_low - ref_low) > 5 * tol_low or abs(task_high - ref_high) > 5 * tol_high
