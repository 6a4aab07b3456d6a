"""RLlib teacher kinds register themselves here, as history sources do in sources.py: what each
RLlib algorithm that a teach stage runs as Tune trials supports (env families, env runners, the
settings a family needs) and what it costs for `plan`. Config validation and `plan` ask the
registry instead of testing the algorithm's name; teachers.py builds each kind's RLlib config.

A kind's hyper-parameters are its dataclass in presets.py (`settings`), held in the teach
config's block of its name. Pure data and small functions: no Ray here, so a config is checked
without loading RLlib.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from understudy.algorithms.presets import SETTINGS
from understudy.envs.families import EnvFamily


@dataclass(frozen=True)
class EnvRunner:
    """A teach config's `runner`: how a teacher trial steps its envs."""
    name: str
    description: str
    # The env families whose envs it can make (EnvFamily.name); None: any family, through the
    # family's own vector env (EnvFamily.make_vector_env).
    families: tuple[str, ...] | None = None

    def runs(self, family: EnvFamily) -> bool:
        return self.families is None or family.name in self.families


RUNNERS = {r.name: r for r in (
    EnvRunner("vector", "the family's vector env with batched inference (algorithms/atari_runner.py)"),
    # teachers.py's env creator makes ALE envs (envs/atari.py's gymnasium wrappers) only
    EnvRunner("rllib", "RLlib's own SingleAgentEnvRunner on gymnasium wrappers, the reference", ("ale",)),
)}


@dataclass(frozen=True)
class TeacherKind:
    name: str  # the teach config's `algorithm`, and its block of settings
    description: str  # one line, for plan and messages
    # (settings, env_steps, env_steps_per_iter) -> the gradient updates of one trial, for plan;
    # settings has the fields of the kind's presets dataclass
    updates: Callable[[Any, int, int], int]
    # The env families it learns (EnvFamily.name); None: any family whose games are not tasks
    # (per-task families are recorded by the history sources of sources.py).
    families: tuple[str, ...] | None = None
    # (family, settings) -> why these settings cannot learn the family (a message for the
    # config's block of this kind), or None
    needs: Callable[[EnvFamily, Any], str | None] = lambda family, settings: None
    # A trial's measured speed, per env family: a docs/bench file of bench/learning.py's
    # interleaved wall-clock runs (its teacher_wall_s and speed_env_steps), for plan
    speeds: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> type:
        """Its hyper-parameters: a dataclass of presets.py, each default declared there."""
        return SETTINGS[self.name]

    def learns(self, family: EnvFamily) -> bool:
        return self.families is None or family.name in self.families


_KINDS: dict[str, TeacherKind] = {}


def register(kind: TeacherKind) -> TeacherKind:
    """Add a kind; another kind under a taken name is refused. Its settings must be in presets.py."""
    known = _KINDS.get(kind.name)
    if known is not None and known is not kind:
        raise ValueError(f"teacher kind {kind.name!r} is already registered; choose another name")
    if kind.name not in SETTINGS:
        raise ValueError(f"teacher kind {kind.name!r} has no settings in algorithms/presets.py SETTINGS")
    _KINDS[kind.name] = kind
    return kind


def names() -> tuple[str, ...]:
    """The RLlib teacher kinds, in the order registered."""
    return tuple(_KINDS)


def get(algorithm: str) -> TeacherKind | None:
    """The kind named `algorithm`, or None (a history source, or nothing)."""
    return _KINDS.get(algorithm)


def refusal(kind: TeacherKind, family: EnvFamily, runner: str, settings) -> tuple[str, str] | None:
    """Why a teacher of `kind` on `runner` with `settings` cannot learn `family`'s games, as
    (the teach config's field, a one-line message), or None if it can."""
    if not kind.learns(family) or not RUNNERS[runner].runs(family):
        kinds = [k.name for k in _KINDS.values() if k.learns(family)]
        runners = [r.name for r in RUNNERS.values() if r.runs(family)]
        got = f"(got algorithm {kind.name!r}, runner {runner!r})"
        if not kinds or not runners:
            return "games", f"no RLlib teacher learns {family.name} games {got}"
        return "games", (f"{family.name} teachers are algorithm {' or '.join(kinds)} on runner: "
                         f"{' or '.join(runners)} {got}")
    need = kind.needs(family, settings)
    return None if need is None else (kind.name, need)


def _iterations(env_steps: int, env_steps_per_iter: int) -> int:
    return math.ceil(env_steps / env_steps_per_iter)


def _dqn_needs(family: EnvFamily, settings) -> str | None:
    # DQNTeacher's uniform replay stores each 84x84 frame of a stack once (dqn_teacher.py)
    if settings.prioritized or (family.stacked and tuple(family.frame_shape) == (84, 84)):
        return None
    return (f"{family.name} DQN needs prioritized: true (RLlib's episode replay); the frame replay stores "
            "84x84 Atari frame stacks")


register(TeacherKind(
    "ppo", "RLlib PPO (new API stack)",
    updates=lambda s, env_steps, per_iter: _iterations(env_steps, per_iter) * s.num_epochs * s.num_minibatches,
    speeds={"ale": "learning_ppo_breakout.json", "minatar": "learning_ppo_minatar_breakout.json"}))
register(TeacherKind(
    "appo", "RLlib APPO (new API stack); run on ALE only here, with RLlib's tuned Atari settings",
    updates=lambda s, env_steps, per_iter: _iterations(env_steps, per_iter) * s.circular_buffer_iterations_per_batch,
    families=("ale",)))
register(TeacherKind(
    "dqn", "RLlib DQN (new API stack); uniform replay through DQNTeacher's frame replay",
    updates=lambda s, env_steps, per_iter: int(max(0, env_steps - s.learning_starts) * s.training_intensity
                                               / s.batch_size),
    needs=_dqn_needs, speeds={"ale": "learning_dqn_breakout.json"}))
