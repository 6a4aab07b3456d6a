"""MLflow tracking: one experiment per stage, one MLflow run per Tune trial or evaluation.

MlflowClient is used directly (no global "active run"), so the driver can keep many runs open
at once while Tune trials report.
"""
from __future__ import annotations

import io
import os
import subprocess
import tempfile
import time

from mlflow.tracking import MlflowClient
from ray import tune

from understudy.platform.workspace import Workspace

EXPERIMENTS = {"teach": "understudy-teach", "distill": "understudy-distill",
               "evaluate": "understudy-evaluate"}


def client_for(ws: Workspace) -> MlflowClient:
    return MlflowClient(tracking_uri=ws.tracking_uri)


def experiment_id(client: MlflowClient, ws: Workspace, stage: str) -> str:
    name = EXPERIMENTS[stage]
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # An explicit artifact location: the default would be ./mlruns under whatever the cwd is.
    # With a tracking server, the server's artifact destination is the right default.
    root = ws.artifact_root
    return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)


def code_version() -> str:
    """The git commit of the code that ran, '+dirty' if it had uncommitted changes.

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


def start_run(client: MlflowClient, exp_id: str, name: str, params: dict, tags: dict | None = None) -> str:
    run = client.create_run(exp_id, run_name=name,
                            tags={"understudy.code_version": code_version(), **(tags or {})})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


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


class TuneToMlflow(tune.Callback):
    """Logs each Tune trial as an MLflow run while it trains: params at start, chosen metrics
    at every result, status at the end. `runs` maps trial id -> MLflow run id afterwards."""

    def __init__(self, ws: Workspace, stage: str, params_of, metrics: dict, step_key: str,
                 name_of=lambda trial: str(trial), total: float | None = None,
                 experiment: str = ""):
        self.ws, self.stage = ws, stage
        self.params_of, self.metrics, self.step_key, self.name_of = params_of, metrics, step_key, name_of
        self.total = total  # the step_key value at which a trial ends, for progress lines
        self.experiment = experiment  # Tune experiment name: finds a trial's run again on resume
        self.runs: dict[str, str] = {}
        self.started = time.perf_counter()

    def setup(self, **info):
        self.client = client_for(self.ws)
        self.exp_id = experiment_id(self.client, self.ws, self.stage)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            return
        tags = {"tune.trial_id": trial.trial_id, "tune.experiment": self.experiment}
        found = self.client.search_runs(
            [self.exp_id], " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items()))
        if found:  # a resumed experiment: keep logging into the trial's run
            self.runs[trial.trial_id] = found[0].info.run_id
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return
        self.runs[trial.trial_id] = start_run(self.client, self.exp_id, self.name_of(trial),
                                              self.params_of(trial.config), tags)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        step = int(_lookup(result, self.step_key) or 0)
        now = int(time.time() * 1000)
        metrics = []
        for name, key in self.metrics.items():
            value = _lookup(result, key)
            if isinstance(value, (int, float)) and value == value:  # skip None and NaN
                metrics.append(Metric(name, float(value), now, step))
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        # One short progress line per result (Tune's own tables are too verbose to follow).
        shown = ", ".join(f"{m.key} {m.value:.4g}" for m in metrics if m.key != self.step_key)
        of = f"/{self.total:g}" if self.total else ""
        print(f"[{self.stage}] {self.name_of(trial)}: {self.step_key.rsplit('/', 1)[-1]} {step}{of}"
              f"  {shown}  ({time.perf_counter() - self.started:.0f}s)", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            self.client.set_terminated(self.runs[trial.trial_id], "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            self.client.set_terminated(self.runs[trial.trial_id], "FAILED")


def _lookup(result: dict, key: str):
    value = result
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
