"""Stage 3, evaluate: does the frozen imitator keep learning?

Every agent (platform.players) plays `episodes` consecutive episodes in each of `copies` copies
of every game, carrying whatever memory it has from one episode to the next; each (agent, game)
is a Ray task. A learner from scratch gets the env steps the imitator took on that game, so it
is scheduled when the imitator's task returns. After fine-tuning on a game, `forgetting`
replays the fine-tuned weights on the training games. The results go to platform.report.
"""
from __future__ import annotations

import time

import numpy as np
import ray

from understudy.platform import storage
from understudy.platform.config import EvaluateConfig
from understudy.platform.manifests import DistillManifest, EvaluateManifest
from understudy.platform.players import DARKROOM, Agent, learn_from_scratch, play
from understudy.platform.report import report
from understudy.platform.teach import StageFailed
from understudy.platform.workspace import Workspace


def _step_budget(cfg: EvaluateConfig, game: str) -> int:
    """Env steps of `episodes` full-length episodes in every copy (when no imitator sets it)."""
    if game == DARKROOM:
        from understudy.envs.darkroom import EPISODE_STEPS, darkroom_goals

        return cfg.episodes * cfg.copies * len(darkroom_goals(cfg.goal_split)) * EPISODE_STEPS
    return cfg.episodes * cfg.copies * (cfg.max_episode_steps or 27_000)


def _check_checkpoint(path: str, stage: str) -> None:
    """Load an imitator checkpoint once here, so a wrong one is a clear error before any task."""
    from understudy.algorithms import imitation

    try:
        with storage.local_copy(path) as local:
            imitation.load(local)
    except (ValueError, OSError) as err:
        raise StageFailed(f"evaluate: the checkpoint of distill stage {stage!r} cannot be used: {err}") from None


def _agents(cfg: EvaluateConfig, ws: Workspace, distill: DistillManifest) -> dict[str, Agent]:
    if {"imitator", "finetune"} & set(cfg.agents):
        _check_checkpoint(distill.checkpoint, cfg.imitator)
    agents = {}
    for name in cfg.agents:
        if name in ("imitator", "finetune"):
            agents[name] = Agent(name, distill.checkpoint, cfg.target_return)
        elif name == "ed":
            if not cfg.ed:
                raise StageFailed("evaluate.agents: 'ed' needs evaluate.ed, the name of an expert-only "
                                  "distill stage (data.expert_last)")
            checkpoint = ws.read_stage("distill", cfg.ed).checkpoint
            _check_checkpoint(checkpoint, cfg.ed)
            agents[name] = Agent("ed", checkpoint, cfg.target_return)
        elif name in ("random", "noop", "scratch"):
            agents[name] = Agent(name)
        elif name == "teacher":
            agents[name] = Agent("teacher", num_actions=distill.num_actions)
    return agents


def run_evaluate(cfg: EvaluateConfig, ws: Workspace, experiment: str | None = None,
                 progress_s: float = 30.0) -> EvaluateManifest:
    teach = ws.read_stage("teach", cfg.teacher)
    distill = ws.read_stage("distill", cfg.imitator)
    trained = distill.data_games or [distill.game]
    overlap = sorted(set(cfg.heldout_games) & set(trained))
    if overlap:
        raise StageFailed(f"evaluate.heldout_games: {overlap} appear in the imitator's training data "
                          f"(distill stage {cfg.imitator!r}, data {distill.data_version}, games {trained})")
    teacher_checkpoints = {r.game: r.checkpoint for r in teach.runs if r.checkpoint}
    agents = _agents(cfg, ws, distill)
    protocol = dict(teach.protocol, terminal_on_life_loss=False)  # evaluation: whole games
    started = time.perf_counter()
    finetune = cfg.finetune.model_dump()
    pending = {}
    for name, agent in agents.items():
        for game in cfg.games:
            if name == "scratch":
                continue
            if name == "teacher":
                if game not in teacher_checkpoints:
                    continue  # a teacher plays only a game it learned, from a checkpoint
                agent = Agent("teacher", teacher_checkpoints[game], num_actions=distill.num_actions)
            replay = tuple(g for g in trained if g != game) if name == "finetune" and cfg.forgetting else ()
            pending[(name, game)] = play.remote(agent, game, protocol, cfg.episodes, cfg.copies,
                                                cfg.max_episode_steps, cfg.greedy, cfg.seed,
                                                cfg.goal_split, finetune, replay, progress_s)

    def from_scratch(game, steps):
        return learn_from_scratch.remote(teach, game, steps, cfg.copies, cfg.max_episode_steps,
                                         cfg.seed, cfg.goal_split)

    if "scratch" in agents and "imitator" not in agents:
        pending.update({("scratch", g): from_scratch(g, _step_budget(cfg, g)) for g in cfg.games})
    total = len(pending) + (len(cfg.games) if "scratch" in agents and "imitator" in agents else 0)
    results: dict[tuple, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending.values()), num_returns=1)
        for key in [k for k, f in pending.items() if f in done]:
            value = ray.get(pending.pop(key))
            if key[0] == "scratch":
                value = {"returns": [r[:cfg.episodes] for r in value], "lengths": [],
                         "gradient_steps": 0, "replays": {}}
            results[key] = value
            r = np.array(value["returns"], float)
            if r.size:
                print(f"[evaluate] {len(results)}/{total} done: {key[0]:>9} on {key[1]:<14} first "
                      f"{r[:, 0].mean():.2f} -> last {r[:, -1].mean():.2f} over {r.shape[1]} episodes x "
                      f"{r.shape[0]} copies ({time.perf_counter() - started:.0f}s)", flush=True)
            if key[0] == "imitator" and "scratch" in agents:
                # A learner from scratch gets the env steps the imitator took on that game.
                pending[("scratch", key[1])] = from_scratch(key[1], int(np.sum(value["lengths"])))
    return report(cfg, ws, teach, distill, trained, results, experiment)
