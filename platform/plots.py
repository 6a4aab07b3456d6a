"""Figures people look at instead of reading numbers. matplotlib, headless."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _rolling(values, window):
    values = np.asarray(values, float)
    if len(values) < 2 or window <= 1:
        return values
    window = min(window, len(values))
    kernel = np.ones(window) / window
    head = [values[: i + 1].mean() for i in range(window - 1)]
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def learning_curve(steps, returns, title: str):
    """Episode return against env steps, raw points and a rolling mean."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(steps, returns, s=10, alpha=0.5, label="episode return")
    if len(returns):
        ax.plot(steps, _rolling(returns, 10), color="C1", label="rolling mean (10)")
    ax.set_xlabel("env steps (this env runner)")
    ax.set_ylabel("return (raw)")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def training_curves(history: list[dict], title: str):
    """Imitator loss and held-out action accuracy per epoch."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    epochs = [h["epoch"] for h in history]
    a1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    if any(h.get("heldout_loss") is not None for h in history):
        a1.plot(epochs, [h.get("heldout_loss") for h in history], marker="o", label="held-out")
    a1.set_xlabel("epoch"); a1.set_ylabel("cross-entropy"); a1.legend()
    a2.plot(epochs, [h.get("heldout_accuracy") for h in history], marker="o", color="C2")
    a2.set_xlabel("epoch"); a2.set_ylabel("held-out action accuracy"); a2.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def returns_by_agent(results: dict[str, dict[str, list[float]]], title: str):
    """One panel per game: each agent's episode returns (points) and mean (bar)."""
    games = sorted({g for per_game in results.values() for g in per_game})
    agents = list(results)
    fig, axes = plt.subplots(1, len(games), figsize=(4.2 * len(games), 3.8), squeeze=False)
    for ax, game in zip(axes[0], games):
        for i, agent in enumerate(agents):
            values = results[agent].get(game, [])
            if not values:
                continue
            ax.bar(i, np.mean(values), color=f"C{i}", alpha=0.6)
            ax.scatter(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values,
                       color=f"C{i}", s=14, zorder=3)
        ax.set_xticks(range(len(agents)), agents)
        ax.set_title(game)
        ax.set_ylabel("episode return")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _mean_with_band(ax, rows: np.ndarray, color: str, label: str, **style) -> None:
    """(rows, episodes): the mean per episode (1-based) with a 95% band, normal approximation
    over rows."""
    mean = rows.mean(0)
    half = 1.96 * rows.std(0) / np.sqrt(len(rows))
    x = np.arange(1, len(mean) + 1)
    ax.plot(x, mean, color=color, label=label, **style)
    ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2)


def returns_per_episode(curves: dict, title: str, horizon: float | None = None):
    """One panel per game: each agent's mean return per episode index over its copies, with a
    95% band (normal approximation over copies); a dashed line at `horizon`, the training
    histories' length in episodes."""
    games = sorted({g for _, g in curves})
    agents = sorted({a for a, _ in curves})
    fig, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 3.8), squeeze=False)
    for ax, game in zip(axes[0], games):
        for i, agent in enumerate(agents):
            returns = curves.get((agent, game))
            if returns is None or not returns.size:
                continue
            _mean_with_band(ax, returns, f"C{i}", agent, marker="o" if returns.shape[1] < 12 else None, ms=3)
        if horizon:
            ax.axvline(horizon, color="grey", ls="--", lw=1, label="training history length")
        ax.set_title(game)
        ax.set_xlabel("episode (consecutive, memory carried)")
        ax.set_ylabel("return")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fraction_of_optimum(curves: dict, title: str, marks: dict | None = None, horizon: float | None = None):
    """Per label, (rows, episodes) of returns as fractions of each task's optimum: the mean per
    episode with a 95% band (normal approximation over rows); the optimum and `marks`
    ({label: level}) as horizontal lines, `horizon` (the training histories' length) as a
    vertical one."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (label, curve) in enumerate(curves.items()):
        _mean_with_band(ax, np.asarray(curve, float), f"C{i}", label)
    ax.axhline(1.0, color="k", lw=1, ls="--", label="optimum")
    for label, level in (marks or {}).items():
        ax.axhline(level, color="grey", lw=1, ls=":", label=label)
    if horizon:
        ax.axvline(horizon, color="grey", lw=1, ls="-.", label="training histories' length")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("episode on a held-out task (consecutive; weights frozen, context carried)")
    ax.set_ylabel("return / the task's optimum")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
