"""Stage 3, evaluate: agents play games as parallel Ray tasks; returns go to MLflow."""
from __future__ import annotations

import time

import numpy as np
import ray

from understudy.platform import plots, storage, tracking
from understudy.platform.config import EvaluateConfig
from understudy.platform.teach import StageFailed
from understudy.platform.workspace import Workspace


def _make_policy(agent: dict, env, greedy: bool, seed: int):
    kind = agent["kind"]
    n = env.single_action_space.n
    if kind == "random":
        rng = np.random.default_rng(seed)
        return lambda obs: rng.integers(n, size=len(obs))
    if kind == "imitator":
        from understudy.algorithms import bc

        model, meta = bc.load(agent["checkpoint"])
        num_actions = meta["num_actions"]
        act = bc.policy(model, greedy=greedy, seed=seed)
    elif kind == "teacher":
        from understudy.algorithms.teachers import load_teacher_policy

        num_actions = agent["num_actions"]
        act = load_teacher_policy(agent["checkpoint"])
    else:
        raise ValueError(f"agent kind {kind!r}; valid: imitator, teacher, random")
    if num_actions != n:
        raise StageFailed(
            f"{kind} acts with {num_actions} actions but this game has {n} under "
            "the teacher's protocol; teach with protocol.full_action_space: true to play across games")
    return act


@ray.remote(num_cpus=1)
def play(agent: dict, game: str, protocol: dict, episodes: int, max_episode_steps, greedy: bool,
         seed: int) -> list[dict]:
    """Play `episodes` episodes at once, one per env of a vector env, with batched actions;
    return each one's raw return and length."""
    import torch

    from understudy.envs import AtariProtocol, make_atari_vector_env

    torch.set_num_threads(1)
    env = make_atari_vector_env(game, AtariProtocol(**protocol), num_envs=episodes,
                                max_episode_steps=max_episode_steps)
    # Checkpoints on object storage are copied here; the policy holds its weights in memory.
    with storage.local_copy(agent.get("checkpoint")) as checkpoint:
        act = _make_policy(dict(agent, checkpoint=checkpoint), env, greedy, seed)
    obs, _ = env.reset(seed=seed)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, int)
    running = np.ones(episodes, bool)
    truncated_any = np.zeros(episodes, bool)
    while running.any():
        obs, rewards, terminated, truncated, _ = env.step(np.asarray(act(obs)))
        returns += rewards * running
        lengths += running
        truncated_any |= truncated & running
        running &= ~(terminated | truncated)  # each env plays exactly one episode
    env.close()
    return [{"return": float(r), "length": int(n), "truncated": bool(t)}
            for r, n, t in zip(returns, lengths, truncated_any)]


def run_evaluate(cfg: EvaluateConfig, ws: Workspace) -> dict:
    teach = ws.read_stage("teach", cfg.teacher)
    distill = ws.read_stage("distill", cfg.imitator)
    trained_game = distill["game"]
    teacher_run = next(r for r in teach["runs"] if r["game"] == trained_game)
    agents = {
        "imitator": {"kind": "imitator", "checkpoint": distill["checkpoint"]},
        "teacher": {"kind": "teacher", "checkpoint": teacher_run["checkpoint"],
                    "num_actions": distill["num_actions"]},
        "random": {"kind": "random"},
    }
    protocol = dict(teach["protocol"], terminal_on_life_loss=False)  # evaluation: whole games
    started = time.perf_counter()
    futures = {(name, game): play.remote(agents[name], game, protocol, cfg.episodes,
                                         cfg.max_episode_steps, cfg.greedy, cfg.seed)
               for name in cfg.agents for game in cfg.games}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in cfg.agents}
    lengths: dict[tuple, list[int]] = {}
    pending = list(futures.items())
    while pending:
        done, _ = ray.wait([f for _, f in pending], num_returns=1)
        for key, fut in [p for p in pending if p[1] in done]:
            episodes = ray.get(fut)
            results[key[0]][key[1]] = [e["return"] for e in episodes]
            lengths[key] = [e["length"] for e in episodes]
            print(f"[evaluate] {key[0]:>8} on {key[1]:<14} returns {results[key[0]][key[1]]}  "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
        pending = [p for p in pending if p[1] not in done]

    client = tracking.client_for(ws)
    exp = tracking.experiment_id(client, ws, "evaluate")
    rows = []
    for (name, game) in futures:
        returns = results[name][game]
        run = tracking.start_run(client, exp, f"{name}-on-{game}", {
            "stage": cfg.name, "agent": name, "game": game, "trained_on": trained_game,
            "held_out": game != trained_game, "episodes": cfg.episodes,
            "max_episode_steps": cfg.max_episode_steps, "greedy": cfg.greedy, "seed": cfg.seed,
            "checkpoint": agents[name].get("checkpoint", ""), "data_version": distill["data_version"]})
        tracking.log_metric_series(client, run, "episode_return", returns)
        client.log_metric(run, "return_mean", float(np.mean(returns)))
        client.log_metric(run, "return_std", float(np.std(returns)))
        client.log_metric(run, "episode_len_mean", float(np.mean(lengths[(name, game)])))
        client.set_terminated(run, "FINISHED")
        rows.append({"agent": name, "game": game, "trained_on": trained_game,
                     "episodes": len(returns), "return_mean": float(np.mean(returns)),
                     "return_std": float(np.std(returns)), "mlflow_run_id": run})
    table = results_table(rows)
    summary = tracking.start_run(client, exp, f"summary-{cfg.name}", {
        "stage": cfg.name, "imitator_stage": cfg.imitator, "teacher_stage": cfg.teacher,
        "trained_on": trained_game, "games": ",".join(cfg.games), "agents": ",".join(cfg.agents)})
    tracking.log_figure(client, summary, plots.returns_by_agent(
        results, f"Episode returns (imitator trained on {trained_game})"), "returns.png")
    tracking.log_text(client, summary, table, "results.md")
    client.set_terminated(summary, "FINISHED")
    manifest = {"kind": "evaluate", "name": cfg.name, "rows": rows, "summary_run_id": summary,
                "table": table}
    ws.write_stage("evaluate", cfg.name, manifest)
    return manifest


def results_table(rows: list[dict]) -> str:
    lines = ["| agent | game | trained on | episodes | return mean | return std |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['agent']} | {r['game']} | {r['trained_on']} | {r['episodes']} | "
                     f"{r['return_mean']:.2f} | {r['return_std']:.2f} |")
    return "\n".join(lines)
