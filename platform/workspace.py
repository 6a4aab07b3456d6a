"""Where a pipeline's outputs live, and how stages find each other's results.

A workspace is a folder (default ./workspace) holding the MLflow store, Tune's results and
small JSON manifests, one per finished stage, that name what the stage produced (shard runs,
checkpoints, MLflow run ids). Shards may live elsewhere (any pyarrow.fs URI, e.g. s3://).
Everything can be moved by flags or environment variables, never by the YAML configs.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


class StageMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Workspace:
    root: Path
    tracking_uri: str
    shard_root: str

    @classmethod
    def resolve(cls, root: str | None = None, tracking_uri: str | None = None,
                shard_root: str | None = None) -> "Workspace":
        base = Path(root or os.environ.get("UNDERSTUDY_WORKSPACE") or "workspace").resolve()
        return cls(
            root=base,
            tracking_uri=(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                          or f"sqlite:///{base / 'mlflow.db'}"),
            shard_root=shard_root or os.environ.get("UNDERSTUDY_SHARD_ROOT") or str(base / "shards"),
        )

    @property
    def ray_results(self) -> Path:
        return self.root / "ray_results"

    @property
    def artifact_root(self) -> str:
        return (self.root / "mlartifacts").as_uri()

    def ensure(self) -> "Workspace":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "stages").mkdir(exist_ok=True)
        return self

    def stage_path(self, kind: str, name: str) -> Path:
        return self.root / "stages" / f"{kind}-{name}.json"

    def write_stage(self, kind: str, name: str, manifest: dict) -> Path:
        path = self.stage_path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        return path

    def read_stage(self, kind: str, name: str) -> dict:
        path = self.stage_path(kind, name)
        if not path.is_file():
            have = sorted(p.stem.split("-", 1)[1] for p in (self.root / "stages").glob(f"{kind}-*.json")
                          if not p.name.endswith(".running.json"))
            raise StageMissing(
                f"no finished {kind} stage named {name!r} in workspace {self.root} "
                f"(finished {kind} stages: {', '.join(have) or 'none'}); run `understudy {kind}` first")
        return json.loads(path.read_text())

    def mlflow_ui_command(self) -> str:
        if self.tracking_uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.tracking_uri} --port 5000"
        return f"open {self.tracking_uri} in a browser"
