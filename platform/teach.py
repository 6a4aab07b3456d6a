"""Stage 1, teach: RLlib teachers as Tune trials (games x seeds), histories recorded to shards."""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
from ray import tune

from understudy.algorithms import sources
from understudy.envs import AtariProtocol, family_of
from understudy.histories import shards
from understudy.platform import plots, reproducibility, resources, stages, storage, tracking
from understudy.platform.config import TeachConfig, teacher_settings
from understudy.platform.manifests import TeachManifest
from understudy.platform.workspace import Workspace

STEPS_KEY = "env_runners/num_env_steps_sampled_lifetime"
THREADS_KEY = "understudy_threads"  # a teacher trial's thread counts (teachers.recording_algorithm)


def env_params(game: str, protocol: dict) -> dict:
    """What identifies the environment a teacher learned in, as MLflow params."""
    atari = AtariProtocol(**protocol).as_params() if protocol else {}  # other families: their own
    return {**atari, **{f"env.{k}": v for k, v in family_of(game).metadata(game).items()}}


def verdict_line(verdict: dict | None) -> str:
    if not verdict:
        return "no learning verdict (recorded before the learning gate)"
    if verdict["learned"] is None:
        return f"learned: unknown ({verdict['why']}; final return {verdict['final_return']:.4g})"
    if "normalised" not in verdict:
        return f"learned: False ({verdict['basis']})"
    return (f"learned: {verdict['learned']} (final return {verdict['final_return']:.4g} by "
            f"{verdict['basis']}; random {verdict['random_score']:.4g}, normalised "
            f"{verdict['normalised']:.3f}, needs >= {verdict['margin']:g})")


GREEDY_KEY = "evaluation/env_runners/episode_return_mean"


def learning_verdict(game: str, greedy_curve: list, training_returns: list[float], margin: float,
                     reference: tuple[float, float] | None = None, capped_at: int | None = None) -> dict:
    """Did the teacher learn? Its final return (the last greedy evaluation, or without one the
    mean of its last 100 training episodes) against random play, normalised as
    (final - random) / (reference - random) with the game's family's references (Atari:
    human; MinAtar: the authors' DQN; Dark Room: each goal's optimum, given as `reference`).
    Learned if that is at least `margin`; None if the game has no reference scores, or if its
    episodes were cut at `capped_at` steps (a cut Pong episode scores about 0, far above
    random's -20.7 over a whole game: the references do not apply)."""
    if greedy_curve:
        final, basis = float(greedy_curve[-1][1]), "greedy evaluation"
    elif training_returns:
        final, basis = float(np.mean(training_returns[-100:])), "last 100 training episodes"
    else:
        return {"learned": False, "basis": "no finished episode", "margin": margin}
    if capped_at is not None:
        return {"learned": None, "final_return": final, "basis": basis, "margin": margin,
                "why": f"episodes cut at {capped_at} steps (max_episode_steps): the reference scores "
                       "are over whole games"}
    reference = reference or family_of(game).reference(game)
    if reference is None:
        return {"learned": None, "final_return": final, "basis": basis, "margin": margin,
                "why": f"no random/reference scores for {game}"}
    random, best = reference
    normalised = (final - random) / (best - random)
    return {"learned": bool(normalised >= margin), "final_return": final, "basis": basis,
            "random_score": random, "reference_score": best, "normalised": float(normalised),
            "margin": margin}


def greedy_curve_of(result) -> list[tuple[int, float]]:
    """(env steps, greedy return) at each evaluation a Tune result's trial reported."""
    frame = result.metrics_dataframe
    if frame is None or GREEDY_KEY not in frame or STEPS_KEY not in frame:
        return []
    rows = frame[[STEPS_KEY, GREEDY_KEY]].dropna()
    return [(int(s), float(r)) for s, r in zip(rows[STEPS_KEY], rows[GREEDY_KEY])]


def run_teach(cfg: TeachConfig, ws: Workspace, resume: bool = False) -> TeachManifest:
    """Run the teachers; with `resume`, continue this config's interrupted run from its last
    checkpoints (the history recorded after them is rewound, see recording_algorithm). One
    MLflow run for the stage; a run per teacher nested under it."""
    # RLlib seeds a trial's torch, numpy and envs from its seed; a history source its tasks
    with stages.running(ws, "teach", cfg, resume, {"algorithm": cfg.algorithm, "games": ",".join(cfg.games),
                                                   "seeds": str(cfg.seeds), "env_steps": cfg.env_steps},
                        seeds={"teachers": list(cfg.seeds)}) as stage:
        if cfg.local_source is not None:
            return run_teach_local(cfg, stage)
        return _run_teach(cfg, stage)


def _run_teach(cfg: TeachConfig, stage: stages.Stage) -> TeachManifest:
    from understudy.algorithms.teachers import recording_algorithm, run_id_for, teacher_config_from

    ws = stage.ws
    resumed = stage.interrupted()
    session = resumed["session"] if resumed else time.strftime("%Y%m%d-%H%M%S")
    protocol = cfg.protocol.model_dump()
    record = {"root": ws.shard_root, "session": session, "algorithm": cfg.algorithm,
              "shard_rows": cfg.shard_rows}
    settings = teacher_settings(cfg)
    config = teacher_config_from(settings, game=tune.grid_search(cfg.games), seed=tune.grid_search(cfg.seeds),
                                 env_steps=cfg.env_steps, record=record,
                                 num_gpus_per_learner=resources.stage_gpus(cfg.device, "teach.device"))
    if cfg.eval_interval:
        # Greedy play on separate env runners that never record: the teacher's learning curve.
        config.evaluation(evaluation_interval=cfg.eval_interval, evaluation_duration=cfg.eval_episodes,
                          evaluation_duration_unit="episodes", evaluation_num_env_runners=0,
                          evaluation_config={"explore": False,
                                             "num_envs_per_env_runner": cfg.eval_episodes})

    def identity(trial_config):
        game, seed = trial_config["env_config"]["game"], trial_config["seed"]
        return game, seed, run_id_for(session, cfg.algorithm, game, seed)

    def params_of(trial_config):
        game, seed, run_id = identity(trial_config)
        return {"stage": cfg.name, "game": game, "seed": seed,
                "shard_run_id": run_id, "shard_root": ws.shard_root, "env_steps": cfg.env_steps,
                **{k: v for k, v in settings.items() if k not in ("settings", "protocol")},
                **{f"{cfg.algorithm}.{k}": v for k, v in settings["settings"].items()},
                **env_params(game, protocol)}

    experiment = f"teach-{cfg.name}-{session}"
    to_mlflow = tracking.TuneToMlflow(
        ws, "teach", stage.mlflow, params_of,
        metrics={"episode_return_mean": "env_runners/episode_return_mean",
                 "episode_len_mean": "env_runners/episode_len_mean",
                 "greedy_return_mean": GREEDY_KEY,
                 "env_steps_per_s": tracking.env_steps_per_s},
        step_key=STEPS_KEY, total=cfg.env_steps, experiment=experiment,
        name_of=lambda t: "{}-{}-s{}".format(identity(t.config)[0], cfg.algorithm, identity(t.config)[1]))
    trainable = recording_algorithm(config.algo_class, extra_results=lambda: {THREADS_KEY: reproducibility.threads()})
    grid = stage.fit(
        trainable, config, f"{ws.ray_results}/{experiment}", to_mlflow, marker={"session": session},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent_trials),
        stop={STEPS_KEY: cfg.env_steps},
        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True, num_to_keep=2,
                                                checkpoint_frequency=cfg.checkpoint_interval),
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures))

    client = tracking.client_for(ws)
    runs = []
    for result in grid:
        game, seed, run_id = identity(result.config)
        mlflow_run = [None]
        episodes = shards.episode_returns(ws.shard_root, run_id)
        returns = [e["return"] for e in episodes]
        catalog = shards.read_catalog(ws.shard_root, run_id)
        summary = {"recorded_episodes": len(episodes),
                   "recorded_steps": sum(e["rows"] for e in catalog),
                   "shards": len(catalog), "shard_bytes": sum(e["bytes"] for e in catalog)}
        checkpoint = storage.checkpoint_uri(result.checkpoint)
        curve = greedy_curve_of(result)
        verdict = learning_verdict(game, curve, returns, cfg.learned_margin, capped_at=cfg.max_episode_steps)
        shards.write_run_verdict(ws.shard_root, run_id, verdict)
        print(f"[teach] {run_id}: {verdict_line(verdict)}", flush=True)

        def log_results():  # the history is safe in the shards, the teacher in `checkpoint`
            run = mlflow_run[0] = to_mlflow.run_for(result, client)
            # Per-episode returns as counted by the env itself; tests re-add them from the shards.
            tracking.log_metric_series(client, run, "episode_return", returns)
            for k, v in summary.items():
                client.log_metric(run, k, v)
            client.set_tag(run, "understudy.learned", str(verdict["learned"]))
            client.set_tag(run, "understudy.data_version", shards.data_version(ws.shard_root, [run_id]))
            client.set_tag(run, "understudy.checkpoint", checkpoint)
            fig = plots.learning_curve([e["last_global_step"] + 1 for e in episodes], returns,
                                       f"{cfg.algorithm.upper()} teacher on {game} (seed {seed}): every episode played")
            tracking.log_figure(client, run, fig, "learning_curve.png")

        to_mlflow.after_fit(f"{run_id}: episode returns, summary, tags and learning curve", log_results)
        runs.append({"run_id": run_id, "game": game, "seed": seed,
                     "checkpoint": checkpoint, "mlflow_run_id": mlflow_run[0],
                     "final_return_mean": result.metrics.get("env_runners", {}).get("episode_return_mean"),
                     "greedy_curve": curve, "verdict": verdict, **summary})
    # the threads of the trial processes, where the teachers sampled and learned
    stage.log_worker_threads([r.metrics.get(THREADS_KEY) for r in grid])
    return stage.finish({"session": session, "algorithm": cfg.algorithm, "shard_root": ws.shard_root,
                         "protocol": protocol, "max_episode_steps": cfg.max_episode_steps,
                         "hyperparameters": settings, "env_steps": cfg.env_steps, "runs": runs},
                        safe_in="the histories are in the shards, the teachers in their checkpoints (this stage's "
                                "manifest)")


def run_teach_local(cfg: TeachConfig, stage: stages.Stage) -> TeachManifest:
    """A history source that records in the driver (algorithms/sources.py: Dark Room's
    Q-learning, the annealed expert): one history per task of the configured split and seed,
    through the same shard path as the RLlib teachers, into a shard root of its own so the stage
    can be run again. One MLflow run per seed: the mean curve over tasks, as raw return and as a
    fraction of each task's optimum, and its figure."""
    ws, study = stage.ws, stage.mlflow
    source = cfg.local_source
    game = cfg.games[0]
    family = family_of(game)
    block = cfg.source_block
    session = time.strftime("%Y%m%d-%H%M%S")
    root = f"{ws.shard_root}/{cfg.name}-{session}"
    episode_steps = family.episode_steps or family.longest_episode
    episodes = cfg.env_steps // episode_steps
    settings = asdict(sources.settings_of(source, block.model_dump(), episodes=episodes))
    goals = np.asarray(family.goals(block.goal_split))
    optimal = np.array([family.optimum(g) for g in goals], np.float64)
    label = game.replace("/", "_")
    client = tracking.client_for(ws)
    runs = []
    for seed in cfg.seeds:
        started, began = time.perf_counter(), time.time()
        run_ids = source.record(root, game, goals, episodes, seed, settings, session=session,
                                goal_split=block.goal_split,
                                progress=lambda m: print(f"[teach] {game} {source.name} seed {seed}: {m}", flush=True))
        ended = time.time()
        # logged once the histories are recorded, with the time their recording started
        run_name = tracking.run_name(study, f"{label}-{source.name}-s{seed}")
        mlflow_run = tracking.start_run(client, study.experiment_id, run_name, {
            "stage": cfg.name, "algorithm": source.name, "game": game, "seed": seed,
            "goals": len(goals), "goal_split": block.goal_split, "episodes_per_goal": episodes,
            "shard_root": root, **{f"{source.name}.{k}": v for k, v in settings.items()},
            **{f"env.{k}": v for k, v in family.protocol.items()}},
            parent=study.run_id, start_time=began, source=study.source)
        curves = [np.array([e["return"] for e in shards.episode_returns(root, r)]) for r in run_ids]
        shortest = min(len(c) for c in curves)
        mean = np.mean([c[:shortest] for c in curves], 0)
        fraction = np.mean([c[:shortest] / best for c, best in zip(curves, optimal)], 0)
        tracking.log_metric_series(client, mlflow_run, "episode_return_mean", mean)
        tracking.log_metric_series(client, mlflow_run, "fraction_of_optimal", fraction)
        fig = plots.learning_curve(np.arange(1, shortest + 1), mean,
                                   f"{source.name} on {len(goals)} {game} tasks (seed {seed}): mean return "
                                   "by episode")
        tracking.log_figure(client, mlflow_run, fig, "learning_curve.png")
        client.set_tag(mlflow_run, "understudy.data_version", shards.data_version(root, run_ids))
        tracking.end_run(client, mlflow_run, "FINISHED", end_time=ended)
        print(f"[teach] {game} {source.name} seed {seed}: {len(run_ids)} tasks x {episodes} episodes in "
              f"{time.perf_counter() - started:.0f}s; first-10 return {mean[:10].mean():.2f}, last-10 "
              f"{mean[-10:].mean():.2f} of optimal {optimal.mean():.2f}", flush=True)
        for run_id, goal, curve, best in zip(run_ids, goals, curves, optimal):
            catalog = shards.read_catalog(root, run_id)
            # The source's last 10 episodes against the task's optimum, random play counted as 0
            # (Dark Room's random play scores about 0 in 20 steps; minatar_columns' 0.8 of 12.9).
            verdict = learning_verdict(game, [], curve[-10:].tolist(), cfg.learned_margin,
                                       reference=(0.0, float(best)))
            verdict["basis"] = "last 10 episodes of the history"
            shards.write_run_verdict(root, run_id, verdict)
            runs.append({"run_id": run_id, "game": game, "seed": seed, "goal": np.asarray(goal).tolist(),
                         "checkpoint": None, "mlflow_run_id": mlflow_run, "verdict": verdict,
                         "final_return_mean": float(curve[-10:].mean()),
                         "recorded_episodes": len(curve), "recorded_steps": sum(e["rows"] for e in catalog),
                         "shards": len(catalog), "shard_bytes": sum(e["bytes"] for e in catalog)})
    # its reproducibility record is the driver's: the histories were recorded here
    return stage.finish({"session": session, "algorithm": source.name, "shard_root": root,
                         "protocol": family.protocol, "max_episode_steps": episode_steps,
                         "hyperparameters": settings, "runs": runs})
