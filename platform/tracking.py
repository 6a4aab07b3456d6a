"""MLflow tracking, by study: each ready experiment or pipeline (a lone stage command:
`understudy-<stage>`) is its own MLflow experiment, with its description; each invocation is one
parent run, its stage runs nested under it, Tune trials and evaluation agents nested under
their stage run. Run names are unique within the study (each ends with the invocation's time).

MlflowClient is used directly (no global "active run"), so the driver can keep many runs open
at once while Tune trials report; which run is whose parent is passed down explicitly
(Workspace.study; a stage gets the study with its own run as `run_id`).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import tempfile
import time
from dataclasses import replace

from mlflow.tracking import MlflowClient
from ray import tune

from understudy.histories import settings
from understudy.platform.workspace import Study, Workspace

DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as a description
PARENT_TAG = "mlflow.parentRunId"
WORKSPACE_TAG = "understudy.workspace"  # on an invocation's parent run: the workspace it ran in
# Which view MLflow 3's UI opens an experiment in. Without it the UI guesses, and a study opens
# in the GenAI view (traces, "Detect issues"); this value is its training-runs view, the one
# MLflow's own UI sets when a user picks "machine learning" for an experiment.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def client_for(ws: Workspace) -> MlflowClient:
    return MlflowClient(tracking_uri=ws.tracking_uri)


def lone_study(stage: str) -> str:
    """The study of a stage run on its own (`understudy teach ...`)."""
    return f"understudy-{stage}"


def experiment_id(client: MlflowClient, ws: Workspace, name: str, description: str | None = None) -> str:
    """The MLflow experiment of study `name`, created if missing; its description kept current."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if description and exp.tags.get(DESCRIPTION_TAG) != description:
            client.set_experiment_tag(exp.experiment_id, DESCRIPTION_TAG, description)
        if EXPERIMENT_KIND_TAG not in exp.tags:  # a study made before the tag; a kind chosen in the UI stays
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    # An explicit artifact location: the default would be ./mlruns under whatever the cwd is.
    # With a tracking server, the server's artifact destination is the right default.
    root = ws.artifact_root
    tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, **({DESCRIPTION_TAG: description} if description else {})}
    return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None, tags=tags)


@functools.cache
def code_version() -> str:
    """The git commit of the code that ran, '+dirty' if it had uncommitted changes (once per
    process: every run of an invocation ran the same code).

    An image has no .git: its build sets UNDERSTUDY_CODE_VERSION (see Dockerfile)."""
    if os.environ.get("UNDERSTUDY_CODE_VERSION"):
        return os.environ["UNDERSTUDY_CODE_VERSION"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def source_tags(source: str) -> dict:
    """The code version in MLflow's own source tags (its UI's Source and Version columns) and
    in ours (which also says '+dirty')."""
    version = code_version()
    tags = {"understudy.code_version": version, "mlflow.source.type": "LOCAL",
            "mlflow.source.name": source}
    if version != "unknown":
        tags["mlflow.source.git.commit"] = version.removesuffix("+dirty")
    return tags


def start_run(client: MlflowClient, exp_id: str, name: str, params: dict, tags: dict | None = None,
              parent: str | None = None, start_time: float | None = None, source: str = "understudy") -> str:
    """A run that starts now, or at `start_time` (seconds since the epoch) when the work it
    records started earlier; nested under `parent`."""
    tags = {**source_tags(source), **({PARENT_TAG: parent} if parent else {}), **(tags or {})}
    run = client.create_run(exp_id, start_time=int(start_time * 1000) if start_time else None,
                            run_name=name, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED", end_time: float | None = None) -> None:
    client.set_terminated(run_id, status, end_time=int(end_time * 1000) if end_time else None)


def run_name(study: Study, what: str) -> str:
    """A run name unique within the study: what it is, then when the invocation started."""
    return f"{what} @{study.session}"


def open_study(ws: Workspace, name: str, description: str, command: str, params: dict) -> Workspace:
    """The study's experiment (created, or its description updated) and this invocation's
    parent run; returns the workspace that carries them to the stages."""
    client = client_for(ws)
    exp = experiment_id(client, ws, name, description)
    session = time.strftime("%Y%m%d-%H%M%S")
    run = start_run(client, exp, f"{command} {name} @{session}", params,
                    {"understudy.study": name, "understudy.command": command, WORKSPACE_TAG: str(ws.root)},
                    source=command)
    return replace(ws, study=Study(name, exp, run, session, command))


def close_interrupted_runs(ws: Workspace) -> list[str]:
    """`--resume` says the invocation before it was interrupted: every run its tree left RUNNING
    in the study (its parent run, stage runs, trials and agents under them) is ended as KILLED,
    so that MLflow shows no run as running that is not. A run is of an interrupted invocation
    when the top of its chain of parents is a parent run of this workspace (WORKSPACE_TAG) other
    than this invocation's. A trial the resumed stage continues is set RUNNING again by its
    callback and ends FINISHED, in its own run (TuneToMlflow._start). Returns the runs ended."""
    client = client_for(ws)
    running = client.search_runs([ws.study.experiment_id], "attributes.status = 'RUNNING'", max_results=50000)

    from mlflow.exceptions import MlflowException

    def top_of(run):
        for _ in range(10):  # parent run > stage > trial or agent: a few levels at most
            if PARENT_TAG not in run.data.tags:
                break
            try:
                run = client.get_run(run.data.tags[PARENT_TAG])
            except MlflowException as err:
                if is_outage(err):
                    raise
                break  # a deleted parent: not known to be this workspace's
        return run

    ended = []
    for run in running:
        top = top_of(run)
        if top.info.run_id == ws.study.run_id or top.data.tags.get(WORKSPACE_TAG) != str(ws.root):
            continue
        end_run(client, run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    if ended:
        print(f"[mlflow] --resume: {len(ended)} run(s) an interrupted invocation left RUNNING are ended as KILLED",
              flush=True)
    return ended


def run_url(ws: Workspace) -> str:
    """Where to see the study's parent run: its page on a tracking server, else its ids and
    the command that opens the UI on the local store."""
    study = ws.study
    page = f"#/experiments/{study.experiment_id}/runs/{study.run_id}"
    if ws.tracking_uri.startswith(("http://", "https://")):
        return f"{ws.tracking_uri.rstrip('/')}/{page}"
    ui = ws.mlflow_ui_command()
    shown = f"; to see it: {ui}, then http://127.0.0.1:5000/{page}" if ui.startswith("mlflow ui") else ""
    return f"run {study.run_id} of experiment {study.name!r} (id {study.experiment_id}) in {ws.tracking_uri}{shown}"


@contextlib.contextmanager
def study(ws: Workspace, name: str, description: str, command: str, params: dict):
    """One parent run for the invocation: FINISHED when the body returns, FAILED when it raises.
    Yields the workspace that carries the study to the stages."""
    ws = open_study(ws, name, description, command, params)
    print(f"[mlflow] study {name!r}, this run: {run_url(ws)}", flush=True)
    status = "FAILED"
    try:
        yield ws
        status = "FINISHED"
    finally:
        tolerant(ws, f"the end of parent run {ws.study.run_id}",
                 lambda: end_run(client_for(ws), ws.study.run_id, status))


@contextlib.contextmanager
def stage_run(ws: Workspace, stage: str, name: str, params: dict, tags: dict | None = None):
    """The stage's run, nested under the study's parent run (a library call without a study:
    a top-level run in `understudy-<stage>`), FINISHED or FAILED with the stage."""
    client = client_for(ws)
    if ws.study is not None:
        study_name, exp, parent = ws.study.name, ws.study.experiment_id, ws.study.run_id
        session, source = ws.study.session, ws.study.source
    else:
        study_name, parent = lone_study(stage), None
        exp = experiment_id(client, ws, study_name)
        session, source = time.strftime("%Y%m%d-%H%M%S"), f"understudy {stage}"
    stage_run = Study(study_name, exp, "", session, source)
    run = start_run(client, exp, run_name(stage_run, f"{stage} {name}"), params,
                    {"understudy.stage": stage, **(tags or {})}, parent=parent, source=source)
    stage_run = replace(stage_run, run_id=run)  # the stage's run is its trials' parent
    status = "FAILED"
    try:
        yield stage_run
        status = "FINISHED"
    finally:
        tolerant(ws, f"the end of {stage} stage run {run}", lambda: end_run(client, run, status))


def outage_of(fn) -> Exception | None:
    """Runs MLflow calls with quick retries: None when they went through, the error when the
    store is unreachable; any other error (a bug, a refused call) is raised, not hidden as one."""
    try:
        with _quick_retries():
            fn()
        return None
    except Exception as err:  # noqa: BLE001
        if not is_outage(err):
            raise
        return err


def tolerant(ws: Workspace, what: str, fn) -> bool:
    """An MLflow call whose loss costs a note, not the invocation (the work it records is done
    and safe elsewhere): an unreachable store is announced, any other error raised."""
    err = outage_of(fn)
    if err is not None:
        print(f"[tracking] MISSING FROM MLFLOW ({ws.tracking_uri} unreachable): {what} "
              f"({type(err).__name__})", flush=True)
    return err is None


def log_imitator_model(client: MlflowClient, exp_id: str, run_id: str, checkpoint_dir: str,
                       registered_name: str, data_version: str) -> str:
    """The trained imitator as an MLflow logged model of `run_id` (its UI's Model column),
    saved in a form that loads without unpickling (platform.imitator_model), registered as a
    new version of `registered_name` tagged with the data version. Returns the version."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.exceptions import MlflowException

    from understudy.platform import imitator_model

    tags = {"understudy.data_version": data_version}
    model = client.create_logged_model(exp_id, name="imitator", source_run_id=run_id, tags=tags,
                                       model_type="imitator")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model")
        imitator_model.save(checkpoint_dir, path)
        client.log_model_artifacts(model.model_id, path)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    try:
        client.create_registered_model(registered_name, description="Imitators trained by understudy "
                                       "distill; one version per trained run, tagged with its data version")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # The model's own location as the source: a `models:/<id>` source is resolved through the
    # process-global tracking URI by MLflow's SQL registry store, not this client's.
    version = client.create_model_version(registered_name, model.artifact_location, run_id=run_id,
                                          tags=tags, model_id=model.model_id)
    return version.version


def shards_dataset(name: str, data_version: str, shard_root: str, profile: dict):
    """The shards a run read, as an MLflow dataset input (its UI's Dataset column): named after
    the teach stage, the data version as digest, the shard root as source."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_type = shard_root.split("://", 1)[0] if "://" in shard_root else "local"
    dataset = Dataset(name=name, digest=data_version, source_type=source_type,
                      source=json.dumps({"uri": shard_root}),
                      profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metric_series(client: MlflowClient, run_id: str, key: str, values, steps=None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    steps = range(len(values)) if steps is None else steps
    metrics = [Metric(key, float(v), now, int(s)) for v, s in zip(values, steps)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def log_figure(client: MlflowClient, run_id: str, fig, filename: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, filename)
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        client.log_artifact(run_id, path)


def log_text(client: MlflowClient, run_id: str, text: str, filename: str) -> None:
    client.log_text(run_id, text, filename)


def _unreachable_errors() -> tuple:
    """What an MLflow call raises when its store cannot be reached (HTTP or database)."""
    import requests
    from mlflow.exceptions import MlflowException

    errors = [MlflowException, requests.exceptions.RequestException, OSError]
    try:
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.OperationalError)
    except ImportError:
        pass
    return tuple(errors)


UNREACHABLE = _unreachable_errors()


def is_outage(err: Exception) -> bool:
    """The store could not be reached (or failed on its side), as opposed to refusing a call."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    return isinstance(err, UNREACHABLE)


class TuneToMlflow(tune.Callback):
    """Logs each Tune trial as an MLflow run while it trains, nested under the stage's run
    (`parent`): params (and the `datasets` it reads) at start, chosen metrics at every result,
    status at the end. `runs` maps trial id -> MLflow run id afterwards.

    If the tracking server goes away, training goes on: every MLflow call is queued in order
    and retried at the next result; whatever still cannot be logged when the experiment ends is
    written to `missing_file` (JSON lines) and announced, never silently dropped."""

    def __init__(self, ws: Workspace, stage: str, parent: Study, params_of, metrics: dict, step_key: str,
                 name_of=lambda trial: str(trial), total: float | None = None,
                 experiment: str = "", datasets: tuple = ()):
        self.ws, self.stage, self.parent, self.datasets = ws, stage, parent, list(datasets)
        self.exp_id = parent.experiment_id
        self.params_of, self.metrics, self.step_key, self.name_of = params_of, metrics, step_key, name_of
        # The step_key value at which a trial ends, for progress lines: a number, or a function
        # of the trial's config (an estimate: shown with "~").
        self.total = total
        self.experiment = experiment  # Tune experiment name: finds a trial's run again on resume
        self.runs: dict[str, str] = {}
        self.started = time.perf_counter()
        self.pending: list[tuple[dict, object]] = []  # (what, call) not yet accepted by MLflow
        self.outage_since: float | None = None
        self.retried = 0  # calls that failed at first and went through later
        self.missing_file: str | None = None
        self.missing_after_fit: list[str] = []  # what after_fit could not log
        self.rejected: list[dict] = []  # calls that failed for another reason than an outage
        self.last_step: dict[str, int] = {}  # per trial: the highest step sent to MLflow

    def setup(self, **info):
        self.client = client_for(self.ws)

    def _call(self, what: dict, fn) -> None:
        self.pending.append((what, fn))
        self._drain()

    def _drain(self) -> bool:
        while self.pending:
            what, fn = self.pending[0]
            try:
                with _quick_retries():
                    fn()
            except Exception as err:  # noqa: BLE001
                if not is_outage(err):  # a rejected call: retrying it would block the queue
                    self.rejected.append(what)
                    print(f"[tracking] MLFLOW REJECTED {what}: {type(err).__name__}: {err}", flush=True)
                    self.pending.pop(0)
                    continue
                if self.outage_since is None:
                    self.outage_since = time.perf_counter()
                    print(f"[tracking] MLflow at {self.ws.tracking_uri} is unreachable "
                          f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}); "
                          "training goes on, its MLflow calls are queued and retried", flush=True)
                return False
            self.pending.pop(0)
            if self.outage_since is not None:
                self.retried += 1
        if self.outage_since is not None:
            print(f"[tracking] MLflow is back after {time.perf_counter() - self.outage_since:.0f}s; "
                  f"{self.retried} queued call(s) logged", flush=True)
            self.outage_since = None
        return True

    def _start(self, trial) -> None:
        tags = {"tune.trial_id": trial.trial_id, "tune.experiment": self.experiment}
        found = self.client.search_runs(
            [self.exp_id], " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items()))
        if found:  # a resumed experiment, or a retry after create_run went through
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            # A retry after the params failed to log: log what is missing (params are write-once).
            params = self.params_of(trial.config)
            logged = found[0].data.params
            log_params(self.client, run_id, {k: v for k, v in params.items() if k not in logged})
            if self.datasets and not found[0].inputs.dataset_inputs:
                self.client.log_inputs(run_id, self.datasets)
            self.runs[trial.trial_id] = run_id
        else:
            run_id = start_run(self.client, self.exp_id, run_name(self.parent, self.name_of(trial)),
                               self.params_of(trial.config), tags, parent=self.parent.run_id,
                               source=self.parent.source)
            if self.datasets:
                self.client.log_inputs(run_id, self.datasets)
            self.runs[trial.trial_id] = run_id

    def run_for(self, result, client) -> str:
        """The MLflow run of a Tune Result. After `Tuner.restore` (`--resume`) Tune drives the
        callbacks it pickled with the experiment, not this instance, so the run is looked up
        by the trial's tags then."""
        trial_id = result.metrics.get("trial_id")
        if trial_id in self.runs:
            return self.runs[trial_id]
        found = client.search_runs([self.exp_id], f"tags.`tune.trial_id` = '{trial_id}' and "
                                             f"tags.`tune.experiment` = '{self.experiment}'")
        if not found:
            from mlflow.exceptions import MlflowException

            raise MlflowException(f"no MLflow run of trial {trial_id} in experiment {self.experiment}")
        return found[0].info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._ensure_run(trial)

    def _ensure_run(self, trial) -> None:
        # Also from results and ends: a trial Tune restores after `--resume` may report
        # without a start event in this process.
        if trial.trial_id in self.runs or any(w.get("start") == trial.trial_id for w, _ in self.pending):
            return
        self._call({"trial": self.name_of(trial), "start": trial.trial_id}, lambda: self._start(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        step = int(_lookup(result, self.step_key) or 0)
        now = int(time.time() * 1000)
        metrics = []
        for name, key in self.metrics.items():
            value = key(result) if callable(key) else _lookup(result, key)
            if isinstance(value, (int, float)) and value == value:  # skip None and NaN
                metrics.append(Metric(name, float(value), now, step))
        shown = ", ".join(f"{m.key} {m.value:.4g}" for m in metrics if m.key != self.step_key)
        self._ensure_run(trial)
        trial_id = trial.trial_id
        if metrics and step <= self.last_step.get(trial_id, -1):
            # Tune restarted the trial from before this step (its checkpoint came too late,
            # or none): these steps are in MLflow already, from the first attempt.
            print(f"[tracking] {self.name_of(trial)} was restarted: step {step} is in MLflow "
                  "already and is not logged again", flush=True)
            metrics = []
        if metrics:
            self.last_step[trial_id] = step
            what = {"trial": self.name_of(trial), "step": step,
                    "metrics": {m.key: m.value for m in metrics}}
            self._call(what, lambda: self.client.log_batch(self.runs[trial_id], metrics=metrics))
        # One short progress line per result (Tune's own tables are too verbose to follow).
        total = self.total(trial.config) if callable(self.total) else self.total
        of = f"/{'~' if callable(self.total) else ''}{total:g}" if total else ""
        elapsed = _lookup(result, "time_total_s")  # the trial's own time, across restores
        if total and step and elapsed:
            of += f" (ETA {max(0.0, total - step) * elapsed / step / 60:.0f} min)"
        done = sum(t.status == "TERMINATED" for t in trials)
        queued = f"  [{len(self.pending)} MLflow call(s) queued]" if self.pending else ""
        print(f"[{self.stage}] {self.name_of(trial)}: {self.step_key.rsplit('/', 1)[-1]} {step}{of}"
              f"  {shown}  [{done}/{len(trials)} trials done]  ({time.perf_counter() - self.started:.0f}s)"
              f"{queued}", flush=True)

    def _end(self, trial, status: str) -> None:
        self._ensure_run(trial)
        trial_id = trial.trial_id
        self._call({"trial": self.name_of(trial), "status": status},
                   lambda: self.client.set_terminated(self.runs[trial_id], status))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def on_experiment_end(self, trials, **info):
        deadline = time.perf_counter() + settings.MLFLOW_WAIT_S.get()
        while not self._drain() and time.perf_counter() < deadline:
            time.sleep(2)
        if self.pending or self.rejected:
            self.missing_file = self._missing_path()
            os.makedirs(os.path.dirname(self.missing_file), exist_ok=True)
            with open(self.missing_file, "w") as f:
                for what in [w for w, _ in self.pending] + self.rejected:
                    f.write(json.dumps(what) + "\n")
            print(f"[tracking] MISSING FROM MLFLOW: {len(self.pending) + len(self.rejected)} call(s) could not be "
                  f"logged to {self.ws.tracking_uri}; what they held is in {self.missing_file}", flush=True)


    def _missing_path(self) -> str:
        # Named after the Tune experiment, so that the stage finds the file even when Tune drove
        # another copy of this callback (after `--resume` it drives the one it pickled).
        name = self.experiment or time.strftime("%Y%m%d-%H%M%S")
        return os.path.join(self.ws.root, "mlflow-missing", f"{self.stage}-{name}.jsonl")

    def after_fit(self, what: str, fn) -> bool:
        """Runs `fn` (the MLflow calls a stage makes once Tune is done: plots, tags, artifacts).
        What they log is already safe elsewhere (shards, checkpoints), so an unreachable server
        costs a note, not the stage: once MLflow is known to be away (the experiment ended with
        calls pending, or one of these failed), later ones are skipped instead of each waiting
        out its own retries."""
        if self.missing_file is None and not self.missing_after_fit:
            err = outage_of(fn)
            if err is None:
                return True
            what = f"{what} ({type(err).__name__})"
        self.missing_after_fit.append(what)
        return False

    def report_missing(self, manifest: dict, stage: str, safe_in: str) -> None:
        """Notes in the stage manifest, and announces, what MLflow did not get."""
        calls_file = self.missing_file
        if calls_file is None and self.experiment and os.path.exists(self._missing_path()):
            calls_file = self._missing_path()  # written by the copy of this callback Tune drove
        if not (self.missing_after_fit or calls_file):
            return
        manifest["mlflow_missing"] = {"artifacts": self.missing_after_fit, "calls_file": calls_file}
        print(f"[{stage}] MISSING FROM MLFLOW ({self.ws.tracking_uri} unreachable): "
              f"{'; '.join(self.missing_after_fit)} {calls_file or ''}; {safe_in}", flush=True)


@contextlib.contextmanager
def _quick_retries():
    """A few short retries per call instead of MLflow's default of minutes of backoff: the
    queue above retries across results, and Tune's driver loop must not stall."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in keys}
    for k, v in keys.items():
        if saved[k] is None:  # a user's own setting wins
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def env_steps_per_s(result: dict) -> float | None:
    """Env steps sampled per second of this iteration's wall time (RLlib 2.60 reports its own
    throughput as a dict of stats, not a number)."""
    steps = _lookup(result, "env_runners/num_env_steps_sampled")
    seconds = result.get("time_this_iter_s")
    if isinstance(steps, (int, float)) and isinstance(seconds, (int, float)) and seconds > 0:
        return float(steps) / seconds
    return None


def _lookup(result: dict, key: str):
    value = result
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
