"""The skeleton every stage (teach, distill, evaluate) runs in, written once: its MLflow stage run
and reproducibility record, the `.running` marker that lets `--resume` continue an interrupted
run, the Tune run with its trials logged to MLflow (tracking.TuneToMlflow), and the manifest
that says the stage finished. A stage function holds only its own work between these steps:

    with stages.running(ws, "distill", cfg, resume, params, seeds) as stage:
        resumed = stage.interrupted()          # the marker of the run to continue, or None
        grid = stage.fit(trainable, space, experiment_path, to_mlflow, ...)
        return stage.finish(manifest)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel
from ray import tune

from understudy.platform import reproducibility, tracking
from understudy.platform.config import config_digest
from understudy.platform.manifests import MANIFESTS
from understudy.platform.workspace import Study, Workspace, keep_tune_state_current


class StageFailed(RuntimeError):
    """A stage that cannot go on (a refused input, failed trials); the message says what to do."""


@dataclass
class Stage:
    """One stage while it runs."""
    ws: Workspace
    kind: str  # teach, distill or evaluate: its manifest's kind
    cfg: BaseModel  # its config, as given (its digest goes in the manifest)
    resume: bool  # --resume: continue the interrupted run of this stage, if it can be
    mlflow: Study  # its MLflow run (tracking.stage_run), the parent of its trials' and agents' runs
    repro: dict  # its reproducibility record, completed as its workers report
    # What its results depend on, as its marker records it under `config` and a --resume must
    # match: its config as JSON, unless interrupted() is told otherwise
    started_with: dict
    resumed: dict | None = None  # the marker of the interrupted run it continues (interrupted())
    to_mlflow: tracking.TuneToMlflow | None = None  # its Tune callback, once fit() ran

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def marker(self) -> Path:
        """`stages/<kind>-<name>.running.json`: there while a run of the stage has not finished."""
        return self.ws.running_path(self.kind, self.name)

    def interrupted(self, started_with: dict | None = None) -> dict | None:
        """With --resume, the marker of the interrupted run to continue (also kept as `resumed`):
        one started with `started_with` (what the stage's results depend on; default: its
        config) whose Tune state, if it has one, is readable (Workspace.interrupted). None,
        saying why, starts the stage afresh; --resume with no interrupted run is refused."""
        if started_with is not None:
            self.started_with = started_with
        if not self.resume:
            return None
        if not self.marker.exists():
            raise StageFailed(f"--resume: no interrupted {self.kind} stage named {self.name!r} in "
                              f"{self.ws.root} (nothing at {self.marker})")
        self.resumed = self.ws.interrupted(self.kind, self.name, self.started_with)
        return self.resumed

    def start(self, **facts) -> None:
        """Marks a fresh run as started: the marker holds `facts` (where its Tune run lives, its
        session) and what it started with, which a later --resume must match."""
        self.ws.write_stage(self.kind, self.name + ".running", {**facts, "config": self.started_with})

    def fit(self, trainable, param_space, experiment_path: str, to_mlflow: tracking.TuneToMlflow,
            tune_config: tune.TuneConfig | None = None, marker: dict | None = None, **run_config) -> tune.ResultGrid:
        """Runs the stage's Tune experiment at `experiment_path` (under the workspace's
        ray_results), its trials logged by `to_mlflow`: restored from its last checkpoints when
        it continues an interrupted run (`resumed`) and Tune can restore it, else started afresh
        and marked (with `marker`'s facts besides the path). `run_config`: the stage's own
        tune.RunConfig settings. StageFailed if a trial failed."""
        self.to_mlflow = to_mlflow
        experiment = experiment_path.rsplit("/", 1)[1]
        keep_tune_state_current()
        if self.resumed is not None and tune.Tuner.can_restore(experiment_path):
            print(f"[{self.kind}] resuming {experiment} from its last checkpoints", flush=True)
            tuner = tune.Tuner.restore(experiment_path, trainable=trainable, param_space=param_space,
                                       resume_unfinished=True, resume_errored=True)
        else:
            self.start(**(marker or {}), experiment=experiment_path)
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config or tune.TuneConfig(),
                               run_config=tune.RunConfig(
                                   name=experiment, storage_path=self.ws.ray_results, callbacks=[to_mlflow],
                                   verbose=0,  # progress comes from TuneToMlflow, one line per result
                                   **run_config))
        grid = tuner.fit()
        errors = [str(r.error).splitlines()[0] for r in grid if r.error]
        if errors:
            raise StageFailed(f"{self.kind}: {len(errors)} of {len(grid)} trials failed: {errors[0]}")
        return grid

    def log_worker_threads(self, reported: list[dict | None]) -> None:
        """The threads its Tune trials reported, into its record and onto its MLflow run."""
        workers = {"trials": reproducibility.worker_threads(reported)}
        self.repro["threads"].update(workers)
        self.to_mlflow.after_fit("the trials' thread counts", lambda: tracking.log_params(
            tracking.client_for(self.ws), self.mlflow.run_id, reproducibility.params({"threads": workers})))

    def finish(self, manifest: dict, safe_in: str = "") -> BaseModel:
        """Writes the manifest that says the stage finished (with its kind, name, config digest
        and reproducibility record, and what MLflow did not get, which is `safe_in` elsewhere)
        and drops the marker: nothing is left to resume."""
        manifest = {**manifest, "kind": self.kind, "name": self.name, "config_digest": config_digest(self.cfg),
                    "reproducibility": self.repro}
        if self.to_mlflow is not None:
            self.to_mlflow.report_missing(manifest, self.kind, safe_in)
        manifest = MANIFESTS[self.kind].model_validate(manifest)
        self.ws.write_stage(self.kind, self.name, manifest)
        self.marker.unlink(missing_ok=True)
        return manifest


@contextlib.contextmanager
def running(ws: Workspace, kind: str, cfg: BaseModel, resume: bool, params: dict, seeds: dict,
            tags: dict | None = None) -> Iterator[Stage]:
    """A stage of `kind` running `cfg`: its reproducibility record (`seeds`: the seeds it draws
    from) and its MLflow run with `params` (the stage's own, besides its name and the record),
    FINISHED when the body returns, FAILED when it raises (the marker then stays for --resume)."""
    repro = reproducibility.record(seeds=seeds)
    with tracking.stage_run(ws, kind, cfg.name, {"stage": cfg.name, **params, **reproducibility.params(repro)},
                            tags) as study:
        yield Stage(ws, kind, cfg, resume, study, repro, started_with=cfg.model_dump(mode="json"))
