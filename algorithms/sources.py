"""History sources that record in the calling process, without RLlib: Dark Room's tabular
Q-learning (darkroom_source) and the annealed expert of AD-epsilon (annealed_source). Each
module registers its source here; a teach stage, `plan` and the `scratch` baseline ask the
registry what the source does instead of testing its name.

A source records one history per task of a per-task family (Dark Room goals, minatar_columns
tasks), `episodes` consecutive episodes each, into a shard root, and returns the run ids in
the order of the tasks. Its hyper-parameters are one dataclass (`settings`) whose defaults are
declared there; the teach config's block named `block` holds them, plus `goal_split`, the
family's split of tasks to record.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

# Modules that register a built-in source when imported (imported on first lookup, so that
# importing this registry stays cheap and cycle-free).
BUILTIN = ("understudy.algorithms.darkroom_source", "understudy.algorithms.annealed_source",
           "understudy.algorithms.thompson_source")


@dataclass(frozen=True)
class LocalSource:
    name: str  # the teach config's `algorithm`
    description: str  # one line, for plan and logs
    block: str  # the teach config's field holding its settings and goal_split
    settings: type  # dataclass of hyper-parameters (its defaults are the source's)
    families: tuple[str, ...]  # the env families (EnvFamily.name) whose tasks it records
    # (root, game, tasks, episodes, seed, settings: dict, *, session, goal_split, progress) -> run ids
    record: Callable[..., list[str]]
    # Measured recording speed on this machine (env steps per second, all tasks together), for
    # plan; None where a stage takes seconds whatever its size.
    steps_per_s: float | None = None
    # (game, tasks, episodes, settings: dict, seed) -> returns, shape (len(tasks), episodes): the
    # source learning each task from scratch, the `scratch` baseline. None: the source is not a
    # learner (an annealed expert), so there is no from-scratch run to compare with.
    from_scratch: Callable | None = None


_SOURCES: dict[str, LocalSource] = {}


def register(source: LocalSource) -> LocalSource:
    """Add a source; a second source under a taken name is refused (two modules would fight)."""
    known = _SOURCES.get(source.name)
    if known is not None and known.record is not source.record:
        raise ValueError(f"history source {source.name!r} is already registered (by "
                         f"{known.record.__module__}); choose another name")
    _SOURCES[source.name] = source
    return source


def _load_builtin() -> None:
    for module in BUILTIN:
        importlib.import_module(module)


def names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(sorted(_SOURCES))


def local_source(algorithm: str) -> LocalSource | None:
    """The registered source named `algorithm`, or None (an RLlib teacher)."""
    _load_builtin()
    return _SOURCES.get(algorithm)


def settings_of(source: LocalSource, block: dict, episodes: int | None = None):
    """The source's settings dataclass from a config block (its goal_split dropped; `episodes`,
    where the settings have it, set from the stage's budget)."""
    fields = source.settings.__dataclass_fields__
    values = {k: v for k, v in block.items() if k in fields}
    if episodes is not None and "episodes" in fields:
        values["episodes"] = episodes
    return source.settings(**values)
