"""Dark Room, where the answer is known: does a frozen Algorithm Distillation model improve
in-context on goals it never saw, while expert distillation (ED) stays flat?

Everything goes through the platform's own path: Q-learning histories recorded to shards
(algorithms.darkroom_source), the streaming loader with AD's cross-episode windows and the
gap / expert-only selections (histories.data), the shared training loop (algorithms.imitation),
the multi-episode player (platform.players.play_episodes) and the metrics (platform.metrics).

    python bench/darkroom_ad.py [--out docs/bench] [--minutes-per-model 14] [--ed-minutes 6]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from understudy.algorithms import darkroom_source, imitation
from understudy.envs.darkroom import NUM_ACTIONS, DarkRoomFrames, darkroom_goals, optimal_return
from understudy.histories import data
from understudy.platform import metrics
from understudy.platform.players import play_episodes


def train(root, run_ids, algorithm, selection, minutes, seed=0, **model):
    torch.manual_seed(seed)
    histories = selection.apply(data.index_runs(root, run_ids))
    net = imitation.build(algorithm, NUM_ACTIONS, cnn="grid", stack=1, **model)
    loader = data.Loader(root, histories, net.sample_spec(), batch_size=32, num_actions=NUM_ACTIONS,
                         seed=seed, cycle=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    started, steps, curve = time.perf_counter(), 0, []
    batches = iter(loader)
    while time.perf_counter() - started < minutes * 60:
        m = imitation.train_epoch(net, optimizer, batches, max_batches=100)
        steps += m["batches"]
        curve.append((steps, m["train_loss"], m["train_accuracy"]))
        print(f"  {algorithm} {selection}: {steps} steps, loss {m['train_loss']:.3f}, "
              f"accuracy {m['train_accuracy']:.3f} ({time.perf_counter() - started:.0f}s)", flush=True)
    return net, {"steps": steps, "seconds": time.perf_counter() - started, "curve": curve,
                 "episodes": sum(len(h.episodes) for h in histories)}


def evaluate(net, goals, episodes, seeds):
    """(len(goals) * seeds, episodes) returns of the frozen model, sampling its actions."""
    rows = []
    for seed in range(seeds):
        player = imitation.policy(net, len(goals), greedy=False, seed=seed)
        played = play_episodes(DarkRoomFrames(goals), player, 1, NUM_ACTIONS, episodes, seed)
        rows += [[e["return"] for e in p] for p in played]
    return np.array(rows)


def q_learning_from_scratch(goals, episodes, seeds):
    """The source algorithm itself on the held-out goals: a learner that updates its table."""
    rows = []
    for seed in range(seeds):
        config = darkroom_source.QLearningConfig(episodes=episodes)
        eps = [b.returns for b in darkroom_source.q_learning(goals, config, seed=100 + seed)]
        rows += np.stack(eps, 1).tolist()
    return np.array(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/bench")
    p.add_argument("--source-seeds", type=int, default=2)
    p.add_argument("--source-episodes", type=int, default=40)
    p.add_argument("--gap", type=int, default=1, help="AD's data: every gap-th episode of each history")
    p.add_argument("--context-episodes", type=int, default=6)
    p.add_argument("--minutes-per-model", type=float, default=14.0, help="AD's training budget")
    p.add_argument("--ed-minutes", type=float, default=6.0,
                   help="ED's budget: its windows are shorter, so 6 minutes give it as many "
                        "gradient steps as AD gets in 14")
    p.add_argument("--eval-episodes", type=int, default=60)
    p.add_argument("--eval-seeds", type=int, default=3)
    p.add_argument("--expert-episodes", type=int, default=10,
                   help="ED's data: the last N episodes of each history, where the source has converged")
    args = p.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    train_goals, heldout = darkroom_goals("train"), darkroom_goals("heldout")
    root = tempfile.mkdtemp(prefix="darkroom-shards-")
    run_ids = []
    for seed in range(args.source_seeds):
        run_ids += darkroom_source.record_histories(root, train_goals, args.source_episodes, seed)
    print(f"recorded {len(run_ids)} Q-learning histories in {time.perf_counter() - started:.0f}s", flush=True)

    context = 20 * args.context_episodes
    # No dropout: the histories are plentiful, and sampling dropout masks took a third of each
    # step on this CPU (and kept attention off torch's fused kernel).
    model = {"context": context, "d_model": 64, "layers": 2, "heads": 4, "dropout": 0.0}
    ad, ad_info = train(root, run_ids, "ad", data.Selection(gap=args.gap), args.minutes_per_model, **model)
    # ED: the same model, about as many gradient steps, on the end of each history only (expert behaviour).
    ed, ed_info = train(root, run_ids, "ad", data.Selection(expert_last=args.expert_episodes),
                        args.ed_minutes, **model)

    optimal = np.array([optimal_return(g) for g in heldout])
    reps = args.eval_seeds
    curves = {
        "AD (frozen)": evaluate(ad, heldout, args.eval_episodes, reps),
        "ED (frozen)": evaluate(ed, heldout, args.eval_episodes, reps),
        "Q-learning from scratch": q_learning_from_scratch(heldout, args.eval_episodes, reps),
        "random": evaluate_random(heldout, args.eval_episodes, reps),
    }
    opt = np.tile(optimal, reps)[:, None]
    results = {"args": vars(args), "seconds": time.perf_counter() - started,
               "train": {"ad": {k: v for k, v in ad_info.items() if k != "curve"},
                         "ed": {k: v for k, v in ed_info.items() if k != "curve"}},
               "optimal_mean": float(optimal.mean()), "agents": {}}
    for name, returns in curves.items():
        k = 5
        ici = metrics.in_context_improvement(returns, early=k, late=k)
        first, last = returns[:, :k].mean(), returns[:, -k:].mean()
        found = np.cumsum(returns > 0, axis=1) > 0
        after_find = np.concatenate([np.zeros((len(found), 1), bool), found[:, :-1]], axis=1)
        results["agents"][name] = {
            "first5_return": float(first), "last5_return": float(last),
            "first5_fraction_of_optimal": float((returns[:, :k] / opt).mean()),
            "last5_fraction_of_optimal": float((returns[:, -k:] / opt).mean()),
            "improvement": ici["improvement"], "slope_per_episode": ici["slope"],
            # Exploring vs exploiting: how many goal copies were ever found, and the return
            # (fraction of optimal) of every episode after the first that found its goal.
            "goal_found_by_last_episode": float(found[:, -1].mean()),
            "fraction_of_optimal_after_first_find": (float((returns / opt)[after_find].mean())
                                                     if after_find.any() else 0.0),
            "mean_curve": returns.mean(0).round(3).tolist()}
        print(f"{name:>26}: first 5 episodes {first:.2f}, last 5 {last:.2f} "
              f"(optimal {optimal.mean():.2f}), slope {ici['slope']:.3f}/episode", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "darkroom_ad.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(curves, optimal.mean(), os.path.join(args.out, "darkroom_ad.png"))
    print(f"total {time.perf_counter() - started:.0f}s; wrote {args.out}/darkroom_ad.json and .png")


def evaluate_random(goals, episodes, seeds):
    rng = np.random.default_rng(0)

    class Random:
        def act(self, obs, *_):
            return rng.integers(NUM_ACTIONS, size=len(obs))

    rows = []
    for seed in range(seeds):
        rows += [[e["return"] for e in p] for p in
                 play_episodes(DarkRoomFrames(goals), Random(), 1, NUM_ACTIONS, episodes, seed)]
    return np.array(rows)


def plot(curves, optimal, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, returns in curves.items():
        mean = returns.mean(0)
        half = 1.96 * returns.std(0) / np.sqrt(len(returns))
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - half, mean + half, alpha=0.2)
    ax.axhline(optimal, color="k", ls="--", lw=1, label="optimal (mean)")
    ax.set_xlabel("episode on a held-out goal")
    ax.set_ylabel("return")
    ax.set_title("Dark Room, held-out goals: frozen AD vs ED (95% CI)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
