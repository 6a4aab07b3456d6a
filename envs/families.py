"""Env families behind one interface: ALE, MinAtar and Dark Room each say how their games are
named, what an observation and an action are, how to make a vector env, what random and
reference play score, which protocol they follow, and which teacher learns them. Stages,
evaluation and metrics ask `family_of(game)` instead of testing game names.

Families register themselves (`register`): the built-in ones below, and a user's own from outside
the package, found through the entry point group `understudy.env_families` of an installed
package or a `module:attribute` in the environment variable UNDERSTUDY_ENV_FAMILIES
(docs/extending.md). `family_of` asks them in order of precedence, the more specific first, and
ALE, whose games are any name ale-py has a ROM for, answers last for every name no other family
claims.
Pure Python: no Ray here.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

from understudy.envs import atari, darkroom, minatar, minatar_columns, scores


@dataclass(frozen=True)
class EnvFamily:
    name: str
    # (game, num_envs, *, same_step_reset, max_episode_steps, **options) -> a vector env with
    # reset(seed) -> (obs, info) and step(actions) -> (obs, rewards, terminated, truncated,
    # info); obs (num_envs, *frame_shape[, stack]) uint8; rewards the raw score.
    make_vector_env: Callable
    games: Callable[[], list[str]]
    canonical: Callable[[str], str]  # any spelling -> the one name; ValueError naming valid ones
    frame_shape: tuple[int, ...]  # what one step's observation frame is (stacks are of these)
    num_actions: Callable[[str], int]  # of a game, under the family's default protocol
    shared_actions: int  # the action space every game of the family maps into
    # (random score, reference score) of a game: human for ALE, the published DQN at 5M frames
    # for MinAtar, the goal's optimum for Dark Room (per goal, so None here); None: unknown.
    reference: Callable[[str], tuple[float, float] | None]
    protocol: dict = field(default_factory=dict)  # the family's environment settings, as logged
    teacher: tuple[str, str | None] = ("ppo", None)  # default (algorithm, preset)
    # The observation encoder its models read with when a config names none: a name in
    # algorithms/encoders.py (that layer is above this one; tests/test_families.py checks that
    # it reads frame_shape).
    encoder: str = "small"
    reference_source: str = ""
    # The one frame of an observation that a shard records (stacks are rebuilt on read).
    newest_frame: Callable = atari.newest_frame
    # What identifies a game's environment in run.json and MLflow (ALE: version, ROM digest).
    metadata: Callable[[str], dict] = lambda game: {}
    # Tasks inside a game: Dark Room's goals, each a task of its own with its own optimum
    # (`goals(split)` -> (n, 2) cells, `optimum(goal)` -> the best return). None: a game is one task.
    goals: Callable[[str], object] | None = None
    optimum: Callable[[object], float] | None = None
    # Every episode is exactly this long (Dark Room): the game itself, never a cut one.
    episode_steps: int | None = None
    # The most steps an episode can last under the protocol (ALE: 108,000 frames at frame skip
    # 4; MinAtar: its clock): budgets that must cover whole episodes are sized by it.
    longest_episode: int = 27_000
    # Whether a name is meant as one of its games, spelt right or not (MinAtar: any name with its
    # "MinAtar/" prefix), so that a misspelt one is refused with this family's closest names
    # instead of another's. None: the names `canonical` accepts.
    claims: Callable[[str], bool] | None = None

    @property
    def takes_protocol(self) -> bool:
        """Whether its envs follow a teach config's `protocol:` (the Atari protocol,
        envs.AtariProtocol): its make_vector_env takes one."""
        import inspect

        return "protocol" in inspect.signature(self.make_vector_env).parameters

    @property
    def per_goal(self) -> bool:
        return self.goals is not None

    @property
    def stacked(self) -> bool:
        """Whether an observation is a stack of frames on its last axis (ALE, Dark Room), or
        one frame is the whole observation (MinAtar's 10x10x10)."""
        return len(self.frame_shape) == 2

    def model_obs(self, obs, stack: int):
        """What a model reading `stack` frames sees of a batch of observations: the newest
        `stack` frames of a stack, or the observation itself."""
        return obs[..., -stack:] if self.stacked else obs

    def owns(self, game: str) -> bool:
        try:
            self.canonical(game)
            return True
        except ValueError:
            return False

    def claimed(self, game: str) -> bool:
        """Whether `game` is meant as one of this family's games (`claims`, else `owns`)."""
        return self.claims(game) if self.claims is not None else self.owns(game)


def _ale_reference(game: str):
    return tuple(scores.reference_scores(game)) if scores.has_reference(game) else None


def _ale_num_actions(game: str) -> int:
    return len(atari.action_set(game))


def _ale_vector_env(game: str, num_envs: int, *, same_step_reset: bool = False,
                    max_episode_steps: int | None = None, protocol: dict | None = None, num_threads: int = 1,
                    batch_size: int = 0):
    return atari.make_atari_vector_env(game, atari.AtariProtocol(**(protocol or {})), num_envs=num_envs,
                                       num_threads=num_threads, max_episode_steps=max_episode_steps,
                                       same_step_reset=same_step_reset, batch_size=batch_size)


def make_play_env(game: str, copies: int, *, protocol: dict | None = None, max_episode_steps: int | None = None,
                  goal_split: str = "heldout"):
    """The env an evaluation plays `game` in: `copies` copies resetting in the step an episode
    ends, under the game's family's protocol (ALE: `protocol`; Dark Room: `copies` rooms per
    goal of `goal_split`, goal by goal)."""
    family = family_of(game)
    if family.per_goal:
        import numpy as np

        goals = np.repeat(family.goals(goal_split), copies, axis=0)
        return family.make_vector_env(game, len(goals), goals=goals)
    options = {"protocol": protocol or {}} if family.takes_protocol else {}
    return family.make_vector_env(game, copies, same_step_reset=True, max_episode_steps=max_episode_steps,
                                  **options)


def _minatar_vector_env(game: str, num_envs: int, *, same_step_reset: bool = False,
                        max_episode_steps: int | None = None, sticky_action_prob: float = 0.1,
                        difficulty_ramping: bool = True):
    return minatar.MinAtarVectorEnv(game, num_envs, same_step_reset=same_step_reset,
                                    max_episode_steps=max_episode_steps, sticky_action_prob=sticky_action_prob,
                                    difficulty_ramping=difficulty_ramping)


def _darkroom_vector_env(game: str, num_envs: int, *, same_step_reset: bool = True,
                         max_episode_steps: int | None = None, goals=None):
    """Rooms with `goals` (default: the training goals, in turn); episodes are always
    EPISODE_STEPS long and the rooms restart together as soon as they end."""
    import numpy as np

    if not same_step_reset or max_episode_steps not in (None, darkroom.EPISODE_STEPS):
        raise ValueError(f"Dark Room episodes are exactly {darkroom.EPISODE_STEPS} steps and restart at once")
    if goals is None:
        train = darkroom.darkroom_goals("train")
        goals = train[np.arange(num_envs) % len(train)]
    return darkroom.DarkRoomFrames(goals)


def _darkroom_canonical(name: str) -> str:
    if str(name).lower().replace("_", "").replace("-", "") == "darkroom":
        return "DarkRoom"
    raise ValueError(f"{name!r} is not Dark Room; valid: DarkRoom")


# Random play measured here (bench/minatar_reference.py, 1,000 episodes per game under the
# authors' protocol); the reference is the DQN return the MinAtar authors published at 5M frames
# (Young & Tian 2019, the repository's learning curves, read from the figure: approximate).
MINATAR_SCORES: dict[str, tuple[float, float]] = {
    "Asterix": (0.49, 17.0), "Breakout": (0.46, 10.0), "Freeway": (0.13, 50.0),
    "Seaquest": (0.07, 20.0), "SpaceInvaders": (2.77, 43.0),
}


MINATAR_PROTOCOL = {"minatar.sticky_action_prob": 0.1, "minatar.difficulty_ramping": True,
                    "minatar.episode_clock": minatar.EPISODE_CLOCK,
                    "minatar.channels": ",".join(minatar.CHANNELS)}


def random_returns(env, episodes: int, seed: int = 0) -> list[float]:
    """Raw returns of uniformly random play in a vector env of any family (same-step reset)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    running, returns = np.zeros(env.num_envs), []
    while len(returns) < episodes:
        _, reward, terminated, truncated, _ = env.step(rng.integers(env.single_action_space.n, size=env.num_envs))
        running += reward
        for i in np.flatnonzero(np.logical_or(terminated, truncated)):
            returns.append(float(running[i]))
            running[i] = 0.0
    return returns[:episodes]


ALE = EnvFamily(
    name="ale", make_vector_env=_ale_vector_env, games=atari.all_games, canonical=atari.canonical_game,
    frame_shape=atari.FRAME_SHAPE, num_actions=_ale_num_actions, shared_actions=18, reference=_ale_reference,
    protocol=atari.AtariProtocol().as_params(), teacher=("dqn", "atari"), metadata=atari.game_metadata,
    reference_source="Atari-57 random and human scores (envs/scores.py)")

MINATAR = EnvFamily(
    name="minatar", make_vector_env=_minatar_vector_env, games=lambda: [minatar.PREFIX + g for g in minatar.GAMES],
    canonical=minatar.canonical_game, frame_shape=minatar.OBS_SHAPE,
    num_actions=lambda game: minatar.NUM_ACTIONS, shared_actions=minatar.NUM_ACTIONS,
    reference=lambda game: MINATAR_SCORES[minatar.game_of(game)],
    protocol=MINATAR_PROTOCOL, encoder="minatar",
    teacher=("ppo", "minatar"), newest_frame=lambda obs: obs,  # no stacking: the frame is the observation
    metadata=lambda game: {"family": "minatar", **MINATAR_PROTOCOL}, longest_episode=minatar.EPISODE_CLOCK,
    claims=minatar.is_minatar,
    reference_source="random play measured here; DQN at 5M frames as published by Young & Tian (2019)")

DARKROOM = EnvFamily(
    name="darkroom", make_vector_env=_darkroom_vector_env, games=lambda: ["DarkRoom"], canonical=_darkroom_canonical,
    frame_shape=(darkroom.FRAME_SIZE, darkroom.FRAME_SIZE),
    num_actions=lambda game: darkroom.NUM_ACTIONS, shared_actions=darkroom.NUM_ACTIONS,
    reference=lambda game: None, protocol=darkroom.protocol(), teacher=("qlearning", None), encoder="grid",
    reference_source="each goal's optimal return (envs/darkroom.py optimal_return)",
    goals=darkroom.darkroom_goals, optimum=darkroom.optimal_return, episode_steps=darkroom.EPISODE_STEPS,
    longest_episode=darkroom.EPISODE_STEPS)

# MinAtar Space Invaders with hidden paying columns (envs/minatar_columns.py): a task is 3
# paying columns of 10, only rewards reveal it, as Dark Room's goal; MinAtar's observations.
MINATAR_COLUMNS = EnvFamily(
    name="minatar_columns", make_vector_env=minatar_columns.make_vector_env,
    games=lambda: [minatar_columns.GAME], canonical=minatar_columns.canonical_game,
    frame_shape=minatar.OBS_SHAPE, num_actions=lambda game: minatar.NUM_ACTIONS,
    shared_actions=minatar.NUM_ACTIONS, reference=lambda game: None,  # per task: optimum
    protocol=minatar_columns.protocol(), teacher=("ppo", "minatar"), encoder="minatar",
    # A shard keeps the blind frame even of a teacher that was shown its task (reveal_task).
    newest_frame=minatar_columns.hide_task,
    metadata=lambda game: {"family": "minatar_columns", **minatar_columns.protocol()},
    reference_source="each task's scripted task-aware return, measured (envs/data/minatar_columns_reference.csv)",
    goals=minatar_columns.task_goals, optimum=minatar_columns.optimum,
    episode_steps=None, longest_episode=minatar_columns.EPISODE_CAP)

# ---- the registry -----------------------------------------------------------------------------

ENTRY_POINTS = "understudy.env_families"  # installed packages name their EnvFamily objects in this group
PLACES = "UNDERSTUDY_ENV_FAMILIES"  # or this variable names them: "module:attribute[,module:attribute]"

_FAMILIES: dict[str, tuple[int, int, EnvFamily]] = {}  # name -> (precedence, registration order, family)
_CATCH_ALL: list[EnvFamily] = []  # at most one: the family of every name no other family claims
_PLUGINS_LOADED: list[bool] = []


def register(family: EnvFamily, *, precedence: int = 0, catch_all: bool = False) -> EnvFamily:
    """Add an env family. `family_of` asks the families whether a game is theirs
    (`EnvFamily.claimed`) in order of `precedence`, highest first, and in the order they were
    registered among equals: a family whose names lie inside another's (MinAtar's columns game
    inside MinAtar's prefix) takes a higher precedence. The `catch_all` family (ALE) is asked
    last and answers for every name no other family claims, so a misspelt name gets its closest
    valid games. A second family under a taken name is refused (two modules would fight)."""
    known = _FAMILIES.get(family.name)
    taken = known[2] if known is not None else next((f for f in _CATCH_ALL if f.name == family.name), None)
    if taken is not None and taken is not family or _is_catch_all(family) and not catch_all:
        raise ValueError(f"env family {family.name!r} is already registered; choose another name")
    if catch_all:
        if _CATCH_ALL and _CATCH_ALL[0] is not family:
            raise ValueError(f"env family {family.name!r}: {_CATCH_ALL[0].name!r} is already the catch-all")
        _CATCH_ALL[:] = [family]
        _FAMILIES.pop(family.name, None)
    elif known is None:
        _FAMILIES[family.name] = (precedence, len(_FAMILIES), family)
    return family


def _is_catch_all(family: EnvFamily) -> bool:
    return bool(_CATCH_ALL) and family is _CATCH_ALL[0]


def load(place: str) -> EnvFamily:
    """Import the EnvFamily at `module:attribute` and register it (precedence 0); ValueError
    saying what is wrong with the place."""
    module, _, attribute = place.partition(":")
    if not module or not attribute:
        raise ValueError(f"{place!r}: an env family is named as 'module:attribute'")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"env family {place!r}: module {module!r} cannot be imported ({err}); is its "
                         "package installed?") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"env family {place!r}: module {module!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return register(_as_family(obj, place))


def _as_family(obj, where: str) -> EnvFamily:
    if not isinstance(obj, EnvFamily):
        what = obj.__name__ if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise ValueError(f"env family {where}: {what} is not an EnvFamily "
                         "(understudy.envs.families.EnvFamily)")
    return obj


def _load_plugins() -> None:
    """Register the families installed packages declare (entry points) and those the
    environment names (PLACES), once per process. Installed packages and the environment are
    the user's own: a game name read from data never makes code run."""
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED.append(True)  # first: a plug-in that asks for a family while it loads finds the rest
    from importlib.metadata import entry_points

    try:
        for ep in entry_points(group=ENTRY_POINTS):
            try:
                found = ep.load()
            except Exception as err:  # noqa: BLE001 (whatever the plug-in's import raises)
                raise ValueError(f"env family entry point {ep.name} = {ep.value} cannot be loaded: {err}") from err
            register(_as_family(found, f"entry point {ep.value}"))
        for place in filter(None, (p.strip() for p in os.environ.get(PLACES, "").split(","))):
            load(place)
    except ValueError:
        _PLUGINS_LOADED.clear()  # every later lookup says so too, not only the first
        raise


def registered() -> tuple[EnvFamily, ...]:
    """Every family, in the order `family_of` asks them (the catch-all last)."""
    _load_plugins()
    ordered = sorted(_FAMILIES.values(), key=lambda entry: (-entry[0], entry[1]))
    return tuple(family for _, _, family in ordered) + tuple(_CATCH_ALL)


def family_of(game: str) -> EnvFamily:
    """The family a game belongs to: the first registered family that claims it
    ('DarkRoom', 'MinAtar/SpaceInvaders-columns', 'MinAtar/...', a plug-in's), else the
    catch-all's (an ALE game)."""
    for family in registered():
        if _is_catch_all(family) or family.claimed(game):
            return family
    raise ValueError(f"{game!r} is no registered env family's game, and no family is the catch-all")


# MinAtar's columns game has MinAtar's prefix: asked before MinAtar, which claims every name with
# it. ALE's names are the catch-all.
register(DARKROOM)
register(MINATAR_COLUMNS, precedence=20)
register(MINATAR, precedence=10)
register(ALE, catch_all=True)


def is_heldout_split(split: str) -> bool:
    """Whether a per-task family's split holds tasks out of training: every family names its
    held-out splits "heldout" (version 1) or "heldout_v<N>"."""
    return split == "heldout" or split.startswith("heldout_v")


def canonical_game(name: str) -> str:
    """Any family's game name, canonical; ValueError naming the closest valid names."""
    return family_of(name).canonical(name)
