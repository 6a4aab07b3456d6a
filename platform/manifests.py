"""What each finished stage leaves in the workspace (`stages/<kind>-<name>.json`), typed.

A manifest names what a stage produced (shard runs, checkpoints, MLflow runs) so later stages
and people can find it. Stages write these models and read them back validated: a later stage
gets attributes it can rely on instead of dict keys it hopes are there. Unknown keys in a file
(from a newer or older version of the platform) are ignored; a missing required field or a
value of the wrong type is an error that names the file and the field.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Reproducibility(_Manifest):
    """What the stage's result depends on besides its config and data (platform/reproducibility.py):
    the seeds it drew from, library versions, the CPU's kernels, and the thread counts of the
    driver and of the workers that did the work (`threads`: where -> their threads)."""
    seeds: dict[str, Any] = {}
    versions: dict[str, str | None] = {}
    cpu: dict[str, Any] = {}
    threads: dict[str, Any] = {}


class _StageManifest(_Manifest):
    config_digest: str | None = None  # platform.config.config_digest of the config it ran
    reproducibility: Reproducibility | None = None  # None: written before it was recorded


class MlflowMissing(_Manifest):
    """What MLflow did not get while it was unreachable (the data itself is safe elsewhere)."""
    artifacts: list[str] = []
    calls_file: str | None = None


class TeachRun(_Manifest):
    """One teacher training run: its recorded learning history and its final checkpoint."""
    run_id: str
    game: str
    seed: int = 0
    checkpoint: str | None = None  # None: the source has no policy to play (Dark Room's Q-tables)
    mlflow_run_id: str | None = None
    final_return_mean: float | None = None
    recorded_episodes: int = 0
    recorded_steps: int = 0
    shards: int = 0
    shard_bytes: int = 0
    goal: list[int] | None = None  # Dark Room: the goal cell this run learned
    # The learning gate (platform/teach.py `learning_verdict`): greedy return vs env steps,
    # and whether the teacher learned. None: teach ran before the gate existed.
    greedy_curve: list[tuple[int, float]] = []
    verdict: dict[str, Any] | None = None


class TeachManifest(_StageManifest):
    kind: Literal["teach"] = "teach"
    name: str
    session: str = ""
    algorithm: str = ""
    shard_root: str
    protocol: dict[str, Any] = {}
    max_episode_steps: int | None = None
    hyperparameters: dict[str, Any] = {}  # the teacher's settings, for baselines that replay them
    env_steps: int | None = None  # each teacher's budget
    runs: list[TeachRun] = []
    mlflow_missing: MlflowMissing | None = None


class DistillTrial(_Manifest):
    checkpoint: str
    mlflow_run_id: str | None = None
    seed: int = 0
    point: dict[str, Any] = {}  # the searched values of this trial (without its seed)
    epochs: int | None = None
    workers: int | None = None
    threads: dict[str, Any] | None = None  # the trial's thread counts, measured in it
    heldout_accuracy: float | None = None
    heldout_loss: float | None = None
    train_loss: float | None = None


class DistillManifest(_StageManifest):
    kind: Literal["distill"] = "distill"
    name: str
    algorithm: str
    game: str
    games: list[str]
    data_games: list[str]
    teacher: str
    data_version: str
    run_ids: list[str]
    data: dict[str, Any] = {}
    config: dict[str, Any] = {}
    skipped_shards: list[str] = []
    shard_root: str
    num_actions: int
    checkpoint: str  # the first of `runs`
    mlflow_run_id: str | None = None
    best_by: str = ""
    trials: list[DistillTrial] = []
    # The imitator: the trials of the best searched point, one per training seed (independent
    # runs, which the evaluation plays and its intervals resample). Older manifests: [checkpoint].
    runs: list[DistillTrial] = []
    data_best_return: float | None = None
    # Per game, the raw return of every episode the imitator was trained on, in training order
    # (evaluation's "exceeds the data" compares against them).
    data_returns: dict[str, list[float]] = {}
    # Per teacher run: the raw returns of the episodes trained on (the training split, after the
    # selection), and of its whole recorded history (what "exceeds the data" is also held against)
    split_returns: dict[str, list[float]] = {}
    history_returns: dict[str, list[float]] = {}
    # AD: the context against the data's episode lengths (distill.context_span)
    context_span: dict[str, Any] = {}
    mlflow_missing: MlflowMissing | None = None

    @property
    def history_length(self) -> float | None:
        """The training histories' length in episodes: episodes per teacher run the imitator saw."""
        lengths = [len(r) for r in self.split_returns.values() if r]
        return sum(lengths) / len(lengths) if lengths else None

    @property
    def imitators(self) -> list[DistillTrial]:
        return self.runs or [DistillTrial(checkpoint=self.checkpoint, mlflow_run_id=self.mlflow_run_id,
                                          seed=int(self.config.get("seed", 0)))]


class EvaluateManifest(_StageManifest):
    kind: Literal["evaluate"] = "evaluate"
    name: str
    rows: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    summary_run_id: str
    table: str
    trained_on: list[str]
    experiment: str | None = None
    stages: dict[str, str | None] = {}  # the teach, distill and ED stages it played
    # raw results: one row per agent, game (Dark Room goal), training run and copy, with every
    # episode's return (report.episode_rows)
    episodes: list[dict[str, Any]] = []


class ExperimentManifest(_Manifest):
    kind: Literal["experiment"] = "experiment"
    name: str
    scale: str
    seconds: float
    stages: dict[str, str | None]
    summary_run_id: str
    table: str


MANIFESTS: dict[str, type[_Manifest]] = {
    "teach": TeachManifest, "distill": DistillManifest, "evaluate": EvaluateManifest,
    "experiment": ExperimentManifest}
