"""Where a pipeline's outputs live, and how stages find each other's results.

A workspace is a folder (default ./workspace) holding the MLflow store, Tune's results and
small JSON manifests, one per finished stage, that name what the stage produced (shard runs,
checkpoints, MLflow run ids). Bulky outputs may live elsewhere: `storage` (a folder or any
pyarrow.fs URI such as s3://bucket/prefix) holds Tune's checkpoints, MLflow artifacts of a local
MLflow store and, unless the shard root is set on its own, the shards.
Everything can be moved by flags or environment variables, never by the YAML configs; object
storage credentials come only from the environment (AWS_ACCESS_KEY_ID and friends).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from understudy.algorithms import rllib_compat
from understudy.platform.manifests import MANIFESTS


def write_json_atomic(path, data, **dump_args) -> Path:
    """Write JSON to `path` through a temporary name in the same folder, then rename: a reader
    sees the old file or the whole new one, never half of it. Mode 0644, as a plain file gets
    (mkstemp's own is owner-only, which hid results from other readers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, **dump_args)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class StageMissing(RuntimeError):
    pass


class StageInvalid(RuntimeError):
    """A stage manifest that does not hold what its kind must (hand-edited, or truncated)."""


def keep_tune_state_current() -> None:
    """Before a Tune run under the workspace's ray_results: Tune snapshots its experiment state
    at most every 10 s but deletes a checkpoint beyond num_to_keep at once, so a SIGKILL in
    between could leave a state that names a deleted checkpoint, and a resume then failed (seen
    in test_faults). A snapshot after every result closes that window: one small JSON write
    per result. A value the user set is kept."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")


def repair_tune_state(experiment_path: str, temp_root: str | None = None) -> list[str]:
    """Before resuming a Tune run: Tune writes its experiment and searcher state atomically in
    the driver's staging folder, then copies them to the storage folder with plain copies; a
    SIGKILL during a copy leaves a truncated file there, and a resume then fails to read it and
    silently starts the whole experiment over ("Failed to restore the run state", seen in
    test_faults). Each unreadable state file is replaced, atomically, by the newest readable
    staging copy of the same name still on this machine (under Ray's temp folder). Returns the
    state files it could not repair (the caller then starts the stage afresh, saying so)."""
    import glob
    import shutil

    def readable(path: str) -> bool:
        try:
            with open(path, "rb") as f:
                if os.path.basename(path).startswith("experiment_state-"):
                    json.loads(f.read())
                else:
                    import ray.cloudpickle as cloudpickle

                    cloudpickle.load(f)
            return True
        except Exception:  # noqa: BLE001  (truncated or garbled: any failure to read)
            return False

    root = temp_root or os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    experiment = os.path.basename(experiment_path.rstrip("/"))
    unrepaired = []
    # Tune's own file names and staging folders: rllib_compat checks them against the installed Tune
    staging = [part.format(experiment=experiment) for part in rllib_compat.TUNE_STAGING]
    for path in sorted(p for pattern in rllib_compat.TUNE_STATE_FILES
                       for p in glob.glob(os.path.join(experiment_path, pattern))):
        if readable(path):
            continue
        copies = glob.glob(os.path.join(root, *staging, os.path.basename(path)))
        good = [c for c in sorted(copies, key=os.path.getmtime, reverse=True) if readable(c)]
        if not good:
            unrepaired.append(path)
            continue
        tmp = path + ".repair"
        shutil.copyfile(good[0], tmp)
        os.replace(tmp, path)
        print(f"[resume] {path} was cut short (the process was killed while Tune copied it); "
              f"restored from Tune's own copy {good[0]}", flush=True)
    return unrepaired


def tune_state_usable(kind: str, experiment_path: str) -> bool:
    """Whether an interrupted stage's Tune run can be resumed: its state files readable, after
    repair_tune_state; if not, one line says so and the caller starts the stage afresh."""
    unreadable = repair_tune_state(experiment_path)
    if unreadable:
        print(f"[{kind}] --resume: Tune's state {unreadable[0]} is unreadable and no intact copy is left on "
              "this machine; starting the stage afresh", flush=True)
    return not unreadable


@dataclass(frozen=True)
class Study:
    """What one invocation logs to MLflow under (platform.tracking.study): the study's MLflow
    experiment and the invocation's parent run, under which every stage run is nested."""
    name: str  # the experiment or pipeline name; `understudy-<stage>` for a lone stage command
    experiment_id: str
    run_id: str  # the parent run
    session: str  # when the invocation started: part of every run name, unique within the study
    source: str  # the command that ran (MLflow's Source column)


@dataclass(frozen=True)
class Workspace:
    root: Path
    tracking_uri: str
    shard_root: str
    storage: str = ""  # a folder or URI for checkpoints and artifacts; "" means `root`
    study: Study | None = None  # set for the length of an invocation (tracking.study)

    @classmethod
    def resolve(cls, root: str | None = None, tracking_uri: str | None = None,
                shard_root: str | None = None, storage: str | None = None) -> "Workspace":
        base = Path(root or os.environ.get("UNDERSTUDY_WORKSPACE") or "workspace").resolve()
        store = _location(storage or os.environ.get("UNDERSTUDY_STORAGE") or str(base))
        return cls(
            root=base,
            tracking_uri=(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                          or f"sqlite:///{base / 'mlflow.db'}"),
            shard_root=_location(shard_root or os.environ.get("UNDERSTUDY_SHARD_ROOT")
                                 or f"{store}/shards"),
            storage=store,
        )

    @property
    def storage_root(self) -> str:
        return self.storage or str(self.root)

    @property
    def ray_results(self) -> str:
        """Tune's storage_path: a local folder or a URI (Tune writes through pyarrow.fs)."""
        return f"{self.storage_root}/ray_results"

    @property
    def artifact_root(self) -> str | None:
        """Where new MLflow experiments keep artifacts; None lets a tracking server decide
        (its --artifacts-destination), so clients need no object-storage access for MLflow."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        if "://" in self.storage_root:
            return f"{self.storage_root}/mlartifacts"
        return (Path(self.storage_root) / "mlartifacts").as_uri()

    def ensure(self) -> "Workspace":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "stages").mkdir(exist_ok=True)
        return self

    def stage_path(self, kind: str, name: str) -> Path:
        return self.root / "stages" / f"{kind}-{name}.json"

    def running_path(self, kind: str, name: str) -> Path:
        """The `.running` marker of a stage: there while a run of it has not finished (platform/stages.py)."""
        return self.stage_path(kind, name).with_suffix(".running.json")

    def write_stage(self, kind: str, name: str, manifest) -> Path:
        """A finished stage's manifest (a platform.manifests model, validated here if given as
        a dict), or a `<name>.running` marker (a plain dict), written atomically."""
        if not name.endswith(".running") and kind in MANIFESTS:
            manifest = MANIFESTS[kind].model_validate(manifest)
        if isinstance(manifest, BaseModel):
            manifest = manifest.model_dump(mode="json", exclude_none=True)  # absent = None on reading
        return write_json_atomic(self.stage_path(kind, name), manifest, indent=2, sort_keys=True)

    def interrupted(self, kind: str, name: str, config: dict) -> dict | None:
        """The `.running` marker of an interrupted stage, if it can be resumed: started with
        `config`, and its Tune state, where it has one, readable (tune_state_usable). None,
        with one line saying why, otherwise: the stage then starts afresh instead of resuming
        trials built from an old config, or letting Tune silently restart them."""
        path = self.running_path(kind, name)
        marker = json.loads(path.read_text())
        changed = config_changes(marker.get("config"), config)
        if not changed:  # an evaluation's marker names no Tune experiment: it keeps its own tasks
            return marker if "experiment" not in marker or tune_state_usable(kind, marker["experiment"]) else None
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        print(f"[{kind}] --resume: the interrupted stage {name!r} ({path}) was started with another config "
              f"({shown}); starting it afresh", flush=True)
        return None

    def read_stage(self, kind: str, name: str):
        """The finished stage's manifest as its platform.manifests model."""
        path = self.stage_path(kind, name)
        if not path.is_file():
            have = sorted(p.stem.split("-", 1)[1] for p in (self.root / "stages").glob(f"{kind}-*.json")
                          if not p.name.endswith(".running.json"))
            raise StageMissing(
                f"no finished {kind} stage named {name!r} in workspace {self.root} "
                f"(finished {kind} stages: {', '.join(have) or 'none'}); run `understudy {kind}` first")
        try:
            return MANIFESTS[kind].model_validate_json(path.read_text())
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(the whole file)"
            got = "" if first["type"] == "missing" else f" (got {str(first.get('input'))[:80]!r})"
            raise StageInvalid(f"{path}: not a valid {kind} manifest: {field}: {first['msg']}{got}; "
                               f"run `understudy {kind}` again to rewrite it") from None

    def remote_locations(self) -> dict[str, str]:
        """URI -> the setting it came from, for every output not on a local path."""
        found = {}
        for uri, setting in ((self.storage_root, "--storage / UNDERSTUDY_STORAGE"),
                             (self.shard_root, "--shard-root / UNDERSTUDY_SHARD_ROOT")):
            if "://" in uri:
                found.setdefault(uri, setting)
        return found

    def mlflow_ui_command(self) -> str:
        if self.tracking_uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.tracking_uri} --port 5000"
        return f"open {self.tracking_uri} in a browser"


def _location(value: str) -> str:
    """URIs as given (without a trailing slash); local paths made absolute, so Ray workers
    that run in another folder write to the same place."""
    value = value.rstrip("/") or "/"
    return value if "://" in value else str(Path(value).resolve())


def config_changes(started: dict | None, now: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs (as JSON-like dicts); a config
    that was not recorded differs in every key ("config not recorded")."""
    if started is None:
        return ["config not recorded"]
    changed = []
    for key in sorted(set(started) | set(now)):
        a, b = started.get(key, "(absent)"), now.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed
