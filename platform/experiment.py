"""Ready experiments: teach -> distill (imitator, and optionally an expert-only `ed` imitator)
-> evaluate, from one file in tune_configs/experiments/ at any scale (`scales:` holds the
overrides a scale applies), and `report`, which prints an experiment's latest results table
back from MLflow.
"""
from __future__ import annotations

import time
from pathlib import Path

from understudy.platform import tracking
from understudy.platform.config import ConfigError, ExperimentConfig, load_experiment
from understudy.platform.manifests import ExperimentManifest
from understudy.platform.workspace import Workspace

EXPERIMENTS = Path(__file__).resolve().parent.parent / "tune_configs" / "experiments"


def experiment_path(name_or_path: str) -> Path:
    """A path to an experiment file, or the name of one in tune_configs/experiments/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    candidate = EXPERIMENTS / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise ConfigError(f"experiment {name_or_path!r}: no such file or ready experiment; "
                          f"ready ones: {', '.join(available())}")
    return candidate


def available() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def load(name_or_path: str, scale: str | None = None) -> ExperimentConfig:
    return load_experiment(experiment_path(name_or_path), scale)


def run_experiment(cfg: ExperimentConfig, ws: Workspace, stages: dict, resume: bool = False) -> ExperimentManifest:
    """Run every stage in order with the CLI's stage runners (`stages`: name -> fn(cfg, ws, ...)),
    then tag the evaluation with the experiment's name so `report` finds it."""
    started = time.perf_counter()
    for kind, stage_cfg in (("teach", cfg.teach), ("distill", cfg.distill), ("distill", cfg.ed)):
        if stage_cfg is None:
            continue
        if resume and _finished(ws, kind, stage_cfg):
            print(f"[experiment] --resume: {kind} stage {stage_cfg.name!r} finished earlier with this "
                  f"config ({ws.stage_path(kind, stage_cfg.name)}); not run again", flush=True)
            continue
        stages[kind](stage_cfg, ws, resume=resume and _interrupted(ws, kind, stage_cfg.name))
    evaluation = stages["evaluate"](cfg.evaluate, ws, experiment=cfg.name)
    manifest = ExperimentManifest(
        name=cfg.name, scale=cfg.scale, seconds=time.perf_counter() - started,
        stages={"teach": cfg.teach.name, "distill": cfg.distill.name,
                "ed": cfg.ed.name if cfg.ed else None, "evaluate": cfg.evaluate.name},
        summary_run_id=evaluation.summary_run_id, table=evaluation.table)
    ws.write_stage("experiment", cfg.name, manifest)
    path = write_results(ws, cfg.name, evaluation.episodes)
    print(f"[experiment] raw results (every episode of every agent, run and copy): {path}", flush=True)
    if any(r["goal"] is not None for r in evaluation.episodes):
        from understudy.platform.report import per_goal, per_goal_table

        k = max(1, min(cfg.evaluate.window, cfg.evaluate.episodes // 2))
        table = per_goal_table(per_goal(evaluation.episodes, k))
        (path.parent / f"{cfg.name}-per-goal.md").write_text(table + "\n")
        print(f"[experiment] per goal (late fraction of the optimum [95% CI over runs] / episodes to 0.9):\n"
              f"{table}", flush=True)
    return manifest


def write_results(ws: Workspace, name: str, episodes: list[dict]) -> Path:
    """`<workspace>/results/<name>.json`: the evaluation's raw rows, written atomically."""
    import json
    import os
    import tempfile

    folder = ws.root / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(episodes, f)
    os.replace(tmp, path)
    return path


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
    return ws.stage_path(kind, name).with_suffix(".running.json").exists()


def find_report(ws: Workspace, experiment: str):
    """The newest finished evaluation summary run tagged with `experiment`, in the experiment's
    study (its MLflow experiment of the same name), or None."""
    client = tracking.client_for(ws)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, None
    runs = client.search_runs(
        [exp.experiment_id],
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
    header = (f"Experiment {experiment}: evaluation {params.get('stage')} of {started} "
              f"(MLflow run {run.info.run_id})\n"
              f"imitator {params.get('imitator_stage')} trained on {params.get('trained_on')} "
              f"(data {params.get('data_version')}); teacher {params.get('teacher_stage')}; "
              f"{params.get('episodes')} episodes x {params.get('copies')} copies per agent and game\n"
              f"plot: returns_per_episode.png in that run's artifacts\n")
    return header + "\n" + table
