"""Ready experiments: teach -> distill (imitator, and optionally an expert-only `ed` imitator)
-> evaluate, from one file in tune_configs/experiments/ at any scale (`scales:` holds the
overrides a scale applies), and `report`, which prints an experiment's latest results table
back from MLflow.
"""
from __future__ import annotations

import time
from pathlib import Path

from understudy.platform import shipped, tracking
from understudy.platform.config import ConfigError, ExperimentConfig, load_experiment
from understudy.platform.manifests import ExperimentManifest
from understudy.platform.workspace import Workspace, write_json_atomic

# The ready experiments shipped with the package (platform/shipped.py): tune_configs/experiments/
# in a checkout, inside site-packages when installed from a wheel.
EXPERIMENTS = shipped.experiments_folder()


def experiment_path(name_or_path: str) -> Path:
    """A path to an experiment file (a user's own, or `tune_configs/...` as shipped), or the
    bare name of a ready one in tune_configs/experiments/."""
    path = shipped.experiment_file(name_or_path)
    if path is None:
        raise ConfigError(f"experiment {name_or_path!r}: no such file or ready experiment; "
                          f"ready ones: {', '.join(available())}")
    return path


def available() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def load(name_or_path: str, scale: str | None = None) -> ExperimentConfig:
    return load_experiment(experiment_path(name_or_path), scale)


def rotations(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """The parts an experiment runs after its teach stage: itself, or with `leave_one_out` one
    per game of the suite, that game held out: the imitator (and ED) distilled from the other
    games' histories, evaluated on the held-out game alone. Stage names carry the held-out game
    (`<name>-no-<game>-imitator`), so every rotation's stages live side by side."""
    if cfg.leave_one_out is None:
        return [cfg]
    from understudy.envs import resolve_suite
    from understudy.platform.config import DistillConfig, EvaluateConfig

    games = resolve_suite(cfg.leave_one_out)[1]
    parts = []
    for held in games:
        others = [g for g in games if g != held]
        tag = f"{cfg.name}-no-{held.split('/')[-1].lower()}"

        def narrowed(stage: DistillConfig, name: str) -> DistillConfig:
            data = {**stage.data.model_dump(), "games": None, "suite": None}
            return DistillConfig.model_validate({**stage.model_dump(), "name": name, "game": None,
                                                 "games": others, "data": data})

        distill = narrowed(cfg.distill, f"{tag}-imitator")
        ed = narrowed(cfg.ed, f"{tag}-ed") if cfg.ed is not None else None
        evaluate = EvaluateConfig.model_validate({
            **cfg.evaluate.model_dump(), "name": f"{tag}-evaluate", "imitator": distill.name,
            "ed": ed.name if ed else None, "games": [held], "heldout_games": [held]})
        parts.append(cfg.model_copy(update={"distill": distill, "ed": ed, "evaluate": evaluate,
                                            "leave_one_out": None}))
    return parts


def run_experiment(cfg: ExperimentConfig, ws: Workspace, stages: dict, resume: bool = False) -> ExperimentManifest:
    """Run every stage in order with the CLI's stage runners (`stages`: name -> fn(cfg, ws, ...)),
    then tag the evaluation with the experiment's name so `report` finds it. With `--resume`,
    a stage that finished earlier with the same config is not run again (evaluations too), and
    an interrupted one continues (an evaluation from the tasks it had finished)."""
    started = time.perf_counter()
    parts = rotations(cfg)
    taught = _run_stage(ws, stages, "teach", cfg.teach, resume)
    _check_distill_stages(ws, parts, resume)
    evaluations = []
    for i, part in enumerate(parts):
        if len(parts) > 1:
            print(f"[experiment] rotation {i + 1}/{len(parts)}: {part.evaluate.heldout_games[0]} held out, "
                  f"imitator trained on {', '.join(part.distill.train_games)}", flush=True)
        upstream_ran = taught
        for stage_cfg in (part.distill, part.ed):
            if stage_cfg is not None:
                upstream_ran |= _run_stage(ws, stages, "distill", stage_cfg, resume)
        # an evaluation is read back only if nothing it plays was trained again
        if resume and not upstream_ran and _finished(ws, "evaluate", part.evaluate):
            print(f"[experiment] --resume: evaluate stage {part.evaluate.name!r} finished earlier with this "
                  "config; its results are read back, not played again", flush=True)
            evaluations.append(ws.read_stage("evaluate", part.evaluate.name))
            continue
        # an evaluation interrupted with these stages' outputs plays only the tasks it had not finished
        evaluations.append(stages["evaluate"](part.evaluate, ws, experiment=cfg.name,
                                              resume=resume and _interrupted(ws, "evaluate", part.evaluate.name)))
    episodes = [row for e in evaluations for row in e.episodes]
    if len(evaluations) == 1:
        summary_run_id, table = evaluations[0].summary_run_id, evaluations[0].table
    else:
        summary_run_id, table = _log_rotations(cfg, ws, evaluations)
        print(f"[experiment] all {len(evaluations)} rotations, each game held out once:\n{table}", flush=True)
    joined = lambda names: ",".join(n for n in names if n) or None  # noqa: E731
    manifest = ExperimentManifest(
        name=cfg.name, scale=cfg.scale, seconds=time.perf_counter() - started,
        stages={"teach": cfg.teach.name, "distill": joined(p.distill.name for p in parts),
                "ed": joined(p.ed.name if p.ed else None for p in parts),
                "evaluate": joined(p.evaluate.name for p in parts)},
        summary_run_id=summary_run_id, table=table)
    ws.write_stage("experiment", cfg.name, manifest)
    path = write_results(ws, cfg.name, episodes)
    print(f"[experiment] raw results (every episode of every agent, run and copy): {path}", flush=True)
    if len(evaluations) > 1:
        (path.parent / f"{cfg.name}-table.md").write_text(table + "\n")
    if any(r["goal"] is not None for r in episodes):
        from understudy.platform.report import late_window, per_goal, per_goal_table

        k = late_window(cfg.evaluate)
        table = per_goal_table(per_goal(episodes, k))
        (path.parent / f"{cfg.name}-per-goal.md").write_text(table + "\n")
        print(f"[experiment] per goal (late fraction of the optimum [95% CI over runs] / episodes to 0.9):\n"
              f"{table}", flush=True)
    return manifest


def _check_distill_stages(ws: Workspace, parts: list[ExperimentConfig], resume: bool) -> None:
    """Every distill stage still to run, checked against its data before the first one trains:
    a stage its data refuses (a context too short for its episodes, teachers that did not
    learn) stops the experiment now, naming the stage, not after the stages before it trained."""
    from understudy.platform.distill import check_before_training
    from understudy.platform.stages import StageFailed

    for part in parts:
        for stage_cfg in (part.distill, part.ed):
            if stage_cfg is None or (resume and _finished(ws, "distill", stage_cfg)):
                continue
            try:
                check_before_training(stage_cfg, ws)
            except StageFailed as err:
                raise StageFailed(f"distill stage {stage_cfg.name!r}, checked before any distill stage trains: "
                                  f"{err}") from None


def _run_stage(ws: Workspace, stages: dict, kind: str, stage_cfg, resume: bool) -> bool:
    """Runs the stage unless `resume` finds it finished with this config; whether it ran."""
    if resume and _finished(ws, kind, stage_cfg):
        print(f"[experiment] --resume: {kind} stage {stage_cfg.name!r} finished earlier with this "
              f"config ({ws.stage_path(kind, stage_cfg.name)}); not run again", flush=True)
        return False
    stages[kind](stage_cfg, ws, resume=resume and _interrupted(ws, kind, stage_cfg.name))
    return True


def _log_rotations(cfg: ExperimentConfig, ws: Workspace, evaluations: list) -> tuple[str, str]:
    """The answer over every rotation: each held-out game's rows, and per agent the IQM over
    held-out games x training runs; logged as an evaluation summary run (what `report` shows),
    with every held-out game's return per episode in one figure, and as metrics of the study's
    parent run."""
    from understudy.platform import plots
    from understudy.platform.report import (
        episode_curves,
        headline_metrics,
        improvement_by_run,
        improvement_table,
        late_window,
        log_metrics,
        results_table,
        rotations_aggregate,
    )

    k = late_window(cfg.evaluate)
    rows = [row for e in evaluations for row in e.rows]
    episodes = [r for e in evaluations for r in e.episodes]
    aggregate = rotations_aggregate(episodes, k,
                                    cut={(r["agent"], r["game"]) for r in rows if r.get("truncated_episodes")})
    table = results_table(rows, aggregate)
    gains = improvement_table(improvement_by_run(episodes, k), k)
    if gains:
        table += "\n\n" + gains
    tags = {"understudy.summary": "true", "understudy.experiment": cfg.name}
    params = {"stage": f"{cfg.name}: {len(evaluations)} rotations ({cfg.leave_one_out}, one game held out each)",
              "imitator_stage": ",".join(e.name.removesuffix("-evaluate") + "-imitator" for e in evaluations),
              "teacher_stage": cfg.teach.name, "trained_on": f"{cfg.leave_one_out} minus the held-out game",
              "episodes": cfg.evaluate.episodes, "copies": cfg.evaluate.copies,
              "data_version": "one per rotation (see each rotation's evaluation run)"}
    with tracking.stage_run(ws, "evaluate", f"{cfg.name}-rotations", params, tags) as stage:
        client = tracking.client_for(ws)
        headline = headline_metrics([], aggregate)
        for run in {stage.run_id, *([ws.study.run_id] if ws.study else [])}:
            log_metrics(client, run, headline)
        tracking.log_text(client, stage.run_id, table, "results.md")
        tracking.log_figure(client, stage.run_id, plots.returns_per_episode(
            episode_curves(episodes), f"{cfg.name}: return per episode on each held-out game, frozen agents "
                                      f"trained without it ({cfg.evaluate.copies} copies per run)"),
            "returns_per_episode.png")
    return stage.run_id, table


def write_results(ws: Workspace, name: str, episodes: list[dict]) -> Path:
    """`<workspace>/results/<name>.json`: the evaluation's raw rows, written atomically."""
    return write_json_atomic(ws.root / "results" / f"{name}.json", episodes)


def _finished(ws: Workspace, kind: str, stage_cfg) -> bool:
    """The stage's manifest exists, no run of it is interrupted, and it ran this config."""
    from understudy.platform.config import config_digest

    if _interrupted(ws, kind, stage_cfg.name) or not ws.stage_path(kind, stage_cfg.name).exists():
        return False
    try:
        manifest = ws.read_stage(kind, stage_cfg.name)
    except Exception:  # noqa: BLE001  (unreadable: run the stage again)
        return False
    return getattr(manifest, "config_digest", None) == config_digest(stage_cfg)


def _interrupted(ws: Workspace, kind: str, name: str) -> bool:
    return ws.running_path(kind, name).exists()


def find_report(ws: Workspace, experiment: str):
    """The newest finished evaluation summary run tagged with `experiment`, in any study of the
    workspace (the experiment's own, or one that ran it inside, as the demo does), or None."""
    client = tracking.client_for(ws)
    studies = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if not studies:
        return client, None
    runs = client.search_runs(
        studies,
        filter_string=(f"tags.`understudy.summary` = 'true' and "
                       f"tags.`understudy.experiment` = '{experiment}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    return client, (runs[0] if runs else None)


def reported_experiments(ws: Workspace) -> list[str]:
    client = tracking.client_for(ws)
    studies = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if not studies:
        return []
    runs = client.search_runs(studies, filter_string="tags.`understudy.summary` = 'true'")
    return sorted({r.data.tags["understudy.experiment"] for r in runs if "understudy.experiment" in r.data.tags})


def report(ws: Workspace, experiment: str) -> str:
    """The results table of an experiment's latest evaluation, read back from MLflow."""
    import tempfile

    client, run = find_report(ws, experiment)
    if run is None:
        known = reported_experiments(ws)
        raise LookupError(f"no finished evaluation of experiment {experiment!r} in {ws.tracking_uri}; "
                          f"experiments with results: {', '.join(known) or 'none yet'} "
                          f"(run `understudy experiment {experiment}` first)")
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run.info.run_id, "results.md", tmp)
        table = Path(path).read_text()
    params = run.data.params
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
    study = client.get_experiment(run.info.experiment_id).name
    header = (f"Experiment {experiment}: evaluation {params.get('stage')} of {started} "
              f"(MLflow run {run.info.run_id} in study {study!r})\n"
              f"imitator {params.get('imitator_stage')} trained on {params.get('trained_on')} "
              f"(data {params.get('data_version')}); teacher {params.get('teacher_stage')}; "
              f"{params.get('episodes')} episodes x {params.get('copies')} copies per agent and game\n"
              f"plot: returns_per_episode.png in that run's artifacts\n")
    return header + "\n" + table
