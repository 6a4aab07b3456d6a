"""The files understudy ships inside its package, found through the import system wherever it
is installed, never relative to the current directory or to this file's place in a checkout:

- `understudy.tune_configs`: the ready experiments, pipelines and stage configs (`tune_configs/`);
- `understudy.bench_results`: the benchmarks' measured speeds that `plan` reads (`docs/bench/*.json`);
- `understudy.k8s`: the RayCluster that `plan` sizes runs for (`k8s/raycluster.yaml`).

pyproject.toml maps those repo folders into the package as package data: an editable install
(./dev setup) finds them where users and benchmarks edit them, a wheel (the Docker image,
`pip install understudy-icrl`) inside site-packages.

They are namespace packages (no __init__.py in a folder of YAML files), which
importlib.resources.files() on Python 3.11 and 3.12 cannot open under an editable install:
the editable finder puts a path hook, not a folder, on their __path__. So the folder is taken
from the package's import spec, whose search locations hold the real folder in both cases.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CONFIGS = "understudy.tune_configs"
BENCH_RESULTS = "understudy.bench_results"
K8S = "understudy.k8s"


def folder(package: str) -> Path:
    """The folder holding a shipped package's files."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isdir(location):
            return Path(location)
    raise FileNotFoundError(f"{package}: not installed with understudy; reinstall it "
                            "(./dev setup, or pip install understudy-icrl)")


def config_path(path: str | os.PathLike) -> Path:
    """A config file named on the command line: the file itself where it exists (a user's own
    YAML, relative to the current directory or absolute); else a path that starts with
    `tune_configs/`, as the README writes them, is the shipped config at that place (so the
    README's commands work from any directory). Anything else comes back as given, for the
    loader to report as missing."""
    given = Path(path)
    if given.exists() or given.is_absolute() or given.parts[:1] != ("tune_configs",):
        return given
    shipped = folder(CONFIGS).joinpath(*given.parts[1:])
    return shipped if shipped.exists() else given


def experiments_folder() -> Path:
    """The ready experiments: tune_configs/experiments/ as shipped."""
    return folder(CONFIGS) / "experiments"


def experiment_file(name_or_path: str) -> Path | None:
    """A path to an experiment file (a user's own, or `tune_configs/...` as shipped), or the
    ready experiment of that bare name in tune_configs/experiments/; None where neither exists."""
    path = config_path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    candidate = experiments_folder() / f"{name_or_path}.yaml"
    return candidate if candidate.exists() else None
