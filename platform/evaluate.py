"""Stage 3, evaluate: agents play games as parallel Ray tasks; returns go to MLflow."""
from __future__ import annotations

import time

import numpy as np
import ray

from understudy.platform import plots, storage, tracking
from understudy.platform.config import EvaluateConfig
from understudy.platform.teach import StageFailed
from understudy.platform.workspace import Workspace


class _Stateless:
    """A policy of obs alone (random, teacher) behind the players' common act() signature."""

    def __init__(self, fn):
        self.fn = fn

    def act(self, obs, prev_action, prev_reward, new_episode):
        return self.fn(obs)


def _make_policy(agent: dict, num_envs: int, num_actions: int, greedy: bool, seed: int):
    """(policy with act(obs, prev_action, prev_reward, new_episode), frames per observation)."""
    kind = agent["kind"]
    if kind == "random":
        rng = np.random.default_rng(seed)
        return _Stateless(lambda obs: rng.integers(num_actions, size=len(obs))), 1
    if kind == "imitator":
        from understudy.algorithms import imitation

        model, meta = imitation.load(agent["checkpoint"])
        have, stack = meta["num_actions"], meta["stack"]
        player = imitation.policy(model, num_envs, greedy=greedy, seed=seed,
                                  target_return=agent.get("target_return"))
    elif kind == "teacher":
        from understudy.algorithms.teachers import load_teacher_policy

        have, stack = agent["num_actions"], 4
        player = _Stateless(load_teacher_policy(agent["checkpoint"]))
    else:
        raise ValueError(f"agent kind {kind!r}; valid: imitator, teacher, random")
    if have != num_actions:
        raise StageFailed(
            f"{kind} acts with {have} actions but this game has {num_actions} under "
            "the teacher's protocol; teach with protocol.full_action_space: true to play across games")
    return player, stack


def play_episodes(env, player, stack: int, num_actions: int, episodes: int, seed: int) -> list[list[dict]]:
    """Each of the env's N copies plays `episodes` consecutive episodes with the same player,
    which sees the previous action and reward and where episodes start (so a player with
    memory can carry it from one episode to the next). The env resets in the same step an
    episode ends. Returns, per env, each episode's raw return and length, in order."""
    obs, _ = env.reset(seed=seed)
    n = len(obs)
    prev_action, prev_reward = np.full(n, num_actions), np.zeros(n, np.float32)
    new_episode = np.ones(n, bool)
    ret, length = np.zeros(n), np.zeros(n, int)
    played: list[list[dict]] = [[] for _ in range(n)]
    while min(len(p) for p in played) < episodes:
        actions = np.asarray(player.act(obs[..., -stack:], prev_action, prev_reward, new_episode))
        obs, rewards, terminated, truncated, _ = env.step(actions)
        ret, length = ret + rewards, length + 1
        done = terminated | truncated
        for i in np.flatnonzero(done):
            played[i].append({"return": float(ret[i]), "length": int(length[i]), "truncated": bool(truncated[i])})
        ret[done], length[done] = 0.0, 0
        prev_action, prev_reward, new_episode = actions, rewards.astype(np.float32), done
    return [p[:episodes] for p in played]


@ray.remote(num_cpus=1)
def play(agent: dict, game: str, protocol: dict, episodes: int, max_episode_steps, greedy: bool,
         seed: int, num_envs: int | None = None) -> list[list[dict]]:
    """`num_envs` copies of a game (default: one per episode) each play `episodes` consecutive
    episodes (default: 1 when num_envs is not given), actions batched across copies."""
    import torch

    from understudy.envs import AtariProtocol, make_atari_vector_env

    torch.set_num_threads(1)
    per_env = 1 if num_envs is None else episodes
    env = make_atari_vector_env(game, AtariProtocol(**protocol), num_envs=num_envs or episodes,
                                max_episode_steps=max_episode_steps, same_step_reset=True)
    # Checkpoints on object storage are copied here; the policy holds its weights in memory.
    with storage.local_copy(agent.get("checkpoint")) as checkpoint:
        player, stack = _make_policy(dict(agent, checkpoint=checkpoint), env.num_envs,
                                     int(env.single_action_space.n), greedy, seed)
    try:
        return play_episodes(env, player, stack, int(env.single_action_space.n), per_env, seed)
    finally:
        env.close()


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
            episodes = [e for per_env in ray.get(fut) for e in per_env]
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
