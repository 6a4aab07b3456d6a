"""Stage 3, evaluate: does the frozen imitator keep learning?

Every agent (platform.players) plays `episodes` consecutive episodes in each of `copies` copies
of every game, carrying whatever memory it has from one episode to the next; each (agent, game)
is a Ray task. A learner from scratch gets the env steps the imitator took on that game, so it
is scheduled when the imitator's task returns. After fine-tuning on a game, `forgetting`
replays the fine-tuned weights on the training games. The controls of in-context learning
(context_reset, reward_blind, warmup) are the imitator's checkpoints with one input changed.
Every agent that plays training run s plays the same env seeds (players.eval_seed), so the rows
of one run are paired. The results go to platform.report.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np
import ray

from understudy.envs import family_of
from understudy.envs.families import is_heldout_split
from understudy.platform import reproducibility, resources, stages, storage
from understudy.platform.config import EvaluateConfig, config_digest
from understudy.platform.manifests import DistillManifest, EvaluateManifest, TeachManifest
from understudy.platform.players import CONTROLS, Agent, eval_seed, learn_from_scratch, play
from understudy.platform.report import report
from understudy.platform.stages import StageFailed
from understudy.platform.workspace import Workspace

# Agents that play the env steps the imitator played on a game (counted in the table), not a
# number of episodes; the teacher plays episodes (it only shows what it learned). The controls
# of in-context learning (players.CONTROLS) are not among them: they play the imitator's
# episodes, `episodes` per copy as it does, so every episode index compares the same point of
# the stream (the warmup control's unscored episodes come before and are not counted).
EQUAL_STEPS = ("random", "noop", "ed", "finetune")
# Agents that are the imitator stage's own checkpoints, one run per imitator seed.
FROM_IMITATOR = ("imitator", "finetune", *CONTROLS)


def _same_episodes(res: dict) -> None:
    """Runs that played an env-step budget (the baselines in EQUAL_STEPS, and scratch, whose
    learners get each imitator run's steps) may have played different numbers of episodes
    (each is cut to its copies' fewest): every run of the agent is cut to the fewest, so each
    episode index averages every run and copy."""
    episodes = min((len(r) for run in res["runs"] for r in run["returns"]), default=0)
    for run in res["runs"]:
        for key in ("returns", "lengths", "episodes_in_context", "truncated"):
            if run.get(key) is not None:
                run[key] = [r[:episodes] for r in run[key]]


def _order_and_cut(results: dict) -> None:
    """Every agent's runs in seed order, cut to the episodes all of them played (a no-op where
    every run played the same episodes)."""
    for res in results.values():
        res["runs"].sort(key=lambda r: (r["seed"] is None, r["seed"]))
        _same_episodes(res)


def step_budget(cfg: EvaluateConfig, game: str) -> int:
    """Env steps of `episodes` full-length episodes in every copy (when no imitator sets it)."""
    family = family_of(game)
    # an episode's length: fixed (Dark Room), else at most the cap or the game's longest
    longest = family.episode_steps or cfg.max_episode_steps or family.longest_episode
    copies = cfg.copies * (len(family.goals(cfg.goal_split)) if family.per_goal else 1)  # per goal
    return cfg.episodes * copies * longest


def _check_checkpoint(path: str, stage: str, algorithm: str) -> None:
    """Load an imitator checkpoint once here, so a wrong one is a clear error before any task;
    it must hold the imitator its distill stage trained (`algorithm`)."""
    from understudy.algorithms import imitation

    try:
        with storage.local_copy(path) as local:
            imitation.load(local, expect=algorithm)
    except (ValueError, OSError) as err:
        raise StageFailed(f"evaluate: the checkpoint of distill stage {stage!r} cannot be used: {err}") from None


def _agents(cfg: EvaluateConfig, ws: Workspace, teach: TeachManifest, distill: DistillManifest) -> dict:
    """Per agent name, per game (None: any game), the runs it plays: one Agent per independent
    training run (imitator seeds, teacher seeds). Random and no-op train nothing but play one
    run per imitator seed, with that seed (run i pairs with imitator run i: the same env seeds,
    players.eval_seed), so their runs are independent draws, not copies of one."""
    if set(FROM_IMITATOR) & set(cfg.agents):
        for run in distill.imitators:
            _check_checkpoint(run.checkpoint, cfg.imitator, distill.algorithm)
    agents: dict[str, dict] = {}
    for name in cfg.agents:
        if name in FROM_IMITATOR:
            runs = [Agent(name, r.checkpoint, cfg.target_return, run_seed=r.seed, algorithm=distill.algorithm)
                    for r in distill.imitators]
            agents[name] = {None: runs}
        elif name == "ed":
            if not cfg.ed:
                raise StageFailed("evaluate.agents: 'ed' needs evaluate.ed, the name of an expert-only "
                                  "distill stage (data.expert_last)")
            ed = ws.read_stage("distill", cfg.ed)
            for run in ed.imitators:
                _check_checkpoint(run.checkpoint, cfg.ed, ed.algorithm)
            agents[name] = {None: [Agent("ed", r.checkpoint, cfg.target_return, run_seed=r.seed, algorithm=ed.algorithm)
                                   for r in ed.imitators]}
        elif name in ("random", "noop"):
            agents[name] = {None: [Agent(name, run_seed=r.seed) for r in distill.imitators] or [Agent(name)]}
        elif name == "scratch":  # one learner per imitator seed, scheduled as the imitator finishes
            agents[name] = {None: [Agent(name, run_seed=r.seed) for r in distill.imitators]}
        elif name == "teacher":  # a teacher plays only a game it learned, from a checkpoint
            by_game: dict[str, list] = {}
            for r in teach.runs:
                if r.checkpoint:
                    by_game.setdefault(r.game, []).append(
                        Agent("teacher", r.checkpoint, num_actions=distill.num_actions, run_seed=r.seed))
            agents[name] = by_game
    return agents


def _check_goals_held_out(cfg: EvaluateConfig, teach: TeachManifest, distill: DistillManifest) -> None:
    """Held-out goals (Dark Room's) must be absent from every run the imitator was trained on."""
    per_goal = [family_of(g) for g in cfg.games if family_of(g).per_goal]
    if not per_goal or not is_heldout_split(cfg.goal_split):
        return
    read = set(distill.run_ids)
    trained = {tuple(r.goal) for r in teach.runs if r.run_id in read and r.goal is not None}
    overlap = sorted(trained & {tuple(int(v) for v in g) for g in per_goal[0].goals(cfg.goal_split)})
    if overlap:
        raise StageFailed(f"evaluate: tasks {overlap[:5]}{' ...' if len(overlap) > 5 else ''} of {cfg.games[0]} are in "
                          f"goal_split {cfg.goal_split!r} but the imitator of distill stage {distill.name!r} was "
                          f"trained on runs of them (teach stage {teach.name!r}); teach on the split's training "
                          "tasks, or evaluate on a split it was trained on")


def _past_the_horizon(cfg: EvaluateConfig, distill: DistillManifest) -> EvaluateConfig:
    """With `horizon`, the episodes to play: that multiple of the training histories' length."""
    if cfg.horizon is None:
        return cfg
    length = distill.history_length
    if length is None:
        raise StageFailed(f"evaluate.horizon: distill stage {distill.name!r} did not record its histories' "
                          "lengths (an older manifest); run distill again, or give episodes instead")
    episodes = int(np.ceil(cfg.horizon * length))
    print(f"[evaluate] horizon {cfg.horizon}x the training histories' {length:.0f} episodes: "
          f"{episodes} episodes per copy (instead of {cfg.episodes})", flush=True)
    return cfg.model_copy(update={"episodes": episodes})


class PlayedTasks:
    """The results of an evaluation's finished tasks (one agent run on one game), kept in the
    workspace until the stage has written its manifest, so that `--resume` after a kill plays
    only the tasks that had not finished: the stage's `.running` marker (platform/stages.py)
    names what they depend on (`config_and_checkpoints`: tasks_key, of the config and the
    manifests of the stages it plays), and `stages/evaluate-<name>.tasks/` holds one JSON file
    per task, written atomically. Every task is a function of its seeds (players.eval_seed), so a
    task played again gives the rows it gave before, and the ones read back are those an
    unbroken evaluation would have."""

    def __init__(self, stage: stages.Stage, key: str):
        self.folder = stage.ws.stage_path("evaluate", stage.name).with_suffix(".tasks")
        self.saved: dict[tuple, dict] = {}
        if stage.interrupted({"config_and_checkpoints": key}) is not None:
            for path in sorted(self.folder.glob("*.json")):
                task = json.loads(path.read_text())
                self.saved[tuple(task["task"])] = task["result"]
            print(f"[evaluate] --resume: {len(self.saved)} task(s) that finished before the interruption are read "
                  f"back from {self.folder}, not played again", flush=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
            stage.start()
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, task: tuple, result: dict) -> None:
        name = hashlib.sha256(json.dumps(task).encode()).hexdigest()[:16]
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:  # numpy values as the Python numbers they hold (JSON has no others)
            json.dump({"task": list(task), "result": result}, f, default=lambda v: np.asarray(v).tolist())
        os.replace(tmp, self.folder / f"{name}.json")

    def done(self) -> None:
        """The stage's manifest is written: nothing is left to resume."""
        shutil.rmtree(self.folder, ignore_errors=True)


def tasks_key(digest: str, cfg: EvaluateConfig, ws: Workspace) -> str:
    """What an evaluation's task results depend on: its config (`digest`) and the manifests of
    the stages whose histories and checkpoints it plays (another run of any of them: other results)."""
    stages = (("teach", cfg.teacher), ("distill", cfg.imitator), ("distill", cfg.ed))
    parts = [digest] + [ws.stage_path(kind, name).read_text() for kind, name in stages
                        if name and ws.stage_path(kind, name).exists()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def run_evaluate(cfg: EvaluateConfig, ws: Workspace, experiment: str | None = None,
                 progress_s: float = 30.0, resume: bool = False) -> EvaluateManifest:
    """Play every agent; one MLflow run for the stage (the summary, which `report` finds), a
    run per agent and game nested under it, with the times its tasks really played. With
    `resume`, the tasks an interrupted run of this evaluation finished are read back
    (PlayedTasks), the others played."""
    tags = {"understudy.summary": "true", **({"understudy.experiment": experiment} if experiment else {})}
    # the env seeds are added to the record as they are drawn
    with stages.running(ws, "evaluate", cfg, resume, {}, seeds={"evaluation": cfg.seed}, tags=tags) as stage:
        return _run_evaluate(cfg, ws, stage, experiment, progress_s)


def _run_evaluate(cfg: EvaluateConfig, ws: Workspace, stage: stages.Stage, experiment: str | None,
                  progress_s: float) -> EvaluateManifest:
    digest = config_digest(cfg)  # of the config as given (before the horizon sets episodes)
    teach = ws.read_stage("teach", cfg.teacher)
    distill = ws.read_stage("distill", cfg.imitator)
    trained = distill.data_games or [distill.game]
    overlap = sorted(set(cfg.heldout_games) & set(trained))
    if overlap:
        raise StageFailed(f"evaluate.heldout_games: {overlap} appear in the imitator's training data "
                          f"(distill stage {cfg.imitator!r}, data {distill.data_version}, games {trained})")
    _check_goals_held_out(cfg, teach, distill)
    from understudy.algorithms import imitators

    in_context = imitators.cross_episode()  # the imitators the finetune agent and the controls apply to
    if "finetune" in cfg.agents and not imitators.get(distill.algorithm).cross_episode:
        raise StageFailed(f"evaluate.agents: finetune fine-tunes an in-context learner ({', '.join(in_context)}); "
                          f"the imitator of distill stage {cfg.imitator!r} is {distill.algorithm!r}: "
                          "leave finetune out")
    controls = [a for a in cfg.agents if a in CONTROLS]
    if controls and not imitators.get(distill.algorithm).cross_episode:
        what = ("is a control", "needs", "it") if len(controls) == 1 else ("are controls", "need", "them")
        raise StageFailed(f"evaluate.agents: {', '.join(controls)} {what[0]} of in-context learning and {what[1]} "
                          f"an imitator that reads across episodes ({' or '.join(in_context)}); the imitator of "
                          f"distill stage {cfg.imitator!r} is {distill.algorithm!r}: leave {what[2]} out")
    cfg = _past_the_horizon(cfg, distill)
    agents = _agents(cfg, ws, teach, distill)
    played = PlayedTasks(stage, tasks_key(digest, cfg, ws))
    repro = stage.repro
    protocol = dict(teach.protocol, terminal_on_life_loss=False)  # evaluation: whole games
    started = time.perf_counter()
    finetune = cfg.finetune.model_dump()
    gpus = resources.stage_gpus(cfg.device, "evaluate.device")
    pending, deferred = {}, {}

    def launch(name, game, agent, env_steps=None):
        replay = tuple(g for g in trained if g != game) if name == "finetune" and cfg.forgetting else ()
        # a control runs the imitator's network: it is placed as the imitator is
        task = resources.evaluation_task_resources("imitator" if name in CONTROLS else name, gpus)
        submit((name, game, agent.run_seed), lambda: play.options(**task).remote(
            agent, game, protocol, cfg.episodes, cfg.copies, cfg.max_episode_steps, cfg.greedy,
            eval_seed(cfg.seed, agent.run_seed), cfg.goal_split, finetune, replay, progress_s, task["num_gpus"],
            env_steps, warmup_episodes=cfg.warmup_episodes))

    def submit(key, start):
        """A task's result read back from an interrupted run of this evaluation, else the task started."""
        pending[key] = ray.put(played.saved.pop(key)) if key in played.saved else start()

    for name, by_game in agents.items():
        if name == "scratch":
            continue
        for game in cfg.games:
            for agent in by_game.get(None, by_game.get(game, [])):
                if name in EQUAL_STEPS and "imitator" in agents:
                    deferred.setdefault(game, []).append((name, agent))  # once the imitator has played
                else:
                    launch(name, game, agent)
    imitator_runs = {game: len(agents["imitator"].get(None, agents["imitator"].get(game, [])))
                     for game in cfg.games} if "imitator" in agents else {}
    imitator_steps: dict[str, dict] = {}  # game -> {run seed: env steps the imitator took}

    budget: dict[tuple, int] = {}  # (game, seed) -> env steps a learner from scratch was given

    def from_scratch(game, steps, seed):
        budget[(game, seed)] = steps
        submit(("scratch", game, seed), lambda: learn_from_scratch.remote(
            teach, game, steps, cfg.copies, cfg.max_episode_steps, seed, cfg.goal_split))

    scratch_seeds = [a.run_seed for a in agents.get("scratch", {}).get(None, [])]
    if scratch_seeds and "imitator" not in agents:
        for g in cfg.games:
            for s in scratch_seeds:
                from_scratch(g, step_budget(cfg, g), s)
    total = (len(pending) + sum(len(v) for v in deferred.values())
             + (len(cfg.games) * len(scratch_seeds) if "imitator" in agents else 0))
    results: dict[tuple, dict] = {}
    done_tasks = 0
    while pending:
        done, _ = ray.wait(list(pending.values()), num_returns=1)
        for key in [k for k, f in pending.items() if f in done]:
            value = ray.get(pending.pop(key))
            played.save(key, value)
            name, game, seed = key
            if name == "scratch":
                value = {"returns": [r[:cfg.episodes] for r in value["returns"]], "lengths": [],
                         "env_steps": budget[(game, seed)], "gradient_steps": 0, "replays": {},
                         "started": value["started"], "ended": value["ended"], "threads": value.get("threads")}
            results.setdefault((name, game), {"runs": []})["runs"].append({**value, "seed": seed})
            done_tasks += 1
            r = np.array(value["returns"], float)
            if r.size:
                print(f"[evaluate] {done_tasks}/{total} done: {name:>9} on {game:<14} (run seed {seed}) first "
                      f"{r[:, 0].mean():.2f} -> last {r[:, -1].mean():.2f} over {r.shape[1]} episodes x "
                      f"{r.shape[0]} copies ({time.perf_counter() - started:.0f}s)", flush=True)
            if name == "imitator" and seed in scratch_seeds:
                # A learner from scratch gets the env steps this imitator run took on that game.
                from_scratch(game, int(np.sum(value["lengths"])), seed)
            if name == "imitator":
                steps = imitator_steps.setdefault(game, {})
                steps[seed] = int(np.sum(value["lengths"]))
                if len(steps) == imitator_runs[game]:
                    # Baselines play the env steps the imitator played: those of the imitator
                    # run with their run seed (random and no-op runs are paired with imitator
                    # runs), else (ed of other seeds) their mean.
                    mean = int(np.mean(list(steps.values())))
                    for other, agent in deferred.pop(game, []):
                        launch(other, game, agent, steps.get(agent.run_seed, mean))
    if deferred:  # cannot happen unless an imitator run went missing: say so, never drop rows
        raise StageFailed(f"evaluate: baselines {sorted({n for v in deferred.values() for n, _ in v})} on "
                          f"{sorted(deferred)} never started: not every imitator run of those games finished")
    _order_and_cut(results)
    # every run's env seed (players.eval_seed), and the threads its tasks played with
    runs = [run for res in results.values() for run in res["runs"]]
    repro["seeds"]["env_seeds"] = {str(s): eval_seed(cfg.seed, s) for s in sorted(
        {r["seed"] for r in runs}, key=lambda s: (s is None, s))}
    tasks: dict[str, list] = {}  # play or learn_from_scratch -> the threads each of its tasks reported
    for (name, _), res in results.items():
        tasks.setdefault("scratch" if name == "scratch" else "play", []).extend(r.get("threads") for r in res["runs"])
    repro["threads"].update({kind: reproducibility.worker_threads(reported) for kind, reported in tasks.items()})
    manifest = stage.finish(report(cfg, ws, stage.mlflow, teach, distill, trained, results, experiment, repro))
    played.done()
    return manifest
