"""Typed, validated configs: one schema per config kind. YAML files in tune_configs/ are what
users edit; they are checked here before Ray starts, and a bad one gets a one-line error that
names the field, the value and what would be valid.

Where things live (workspace, MLflow, shard storage) is not in these files: it comes from the
command line or the environment, so the same file runs on a laptop and on a cluster.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SerializeAsAny,
    ValidationError,
    create_model,
    model_validator,
)

from understudy.algorithms import encoders, imitators, sources, teacher_kinds
from understudy.algorithms.annealed_source import AnnealConfig as _Anneal
from understudy.algorithms.darkroom_source import QLearningConfig as _Q
from understudy.algorithms.presets import PRESETS
from understudy.algorithms.presets import APPOSettings as _APPO
from understudy.algorithms.presets import DQNSettings as _DQN
from understudy.algorithms.presets import PPOSettings as _PPO
from understudy.algorithms.thompson_source import ThompsonConfig as _Thompson
from understudy.envs import families


class ConfigError(ValueError):
    """A config that cannot be run; the message is one line meant for the user."""


def _game(name: str) -> str:
    # Dark Room (Laskin et al.'s grid world), MinAtar ("MinAtar/Breakout") or an ALE game;
    # ValueError names the closest valid games.
    return families.canonical_game(name)


Game = Annotated[str, AfterValidator(_game)]


def _model_fits_games(games: list[str], cnn: str | None, stack: int | None, field: str) -> None:
    """The games of one distill stage share one observation shape (one model reads one), and the
    model's encoder reads it: the encoders ask each game's family (encoders.reads), never its name."""
    found = {}  # frame shape -> (family, first game)
    for game in games:
        family = families.family_of(game)
        found.setdefault(tuple(family.frame_shape), (family, game))
    if len(found) > 1:
        shapes = "; ".join(f"{g} ({f.name}): {encoders.shape_text(s)}" for s, (f, g) in found.items())
        raise ValueError(f"{field}: {games} mix observation shapes ({shapes}); one model reads one "
                         "observation shape: train on games of one shape")
    if cnn is None or not found:  # an imitator without one of the encoders reads observations its own way
        return
    (shape, (family, game)), = found.items()
    if not encoders.reads(cnn, shape):
        raise ValueError(f"model.cnn: {cnn!r} reads {encoders.shape_text(encoders.ENCODERS[cnn].frame)}; "
                         f"{game} is {family.name}, of {encoders.shape_text(shape)}: cnn: {family.encoder} (its "
                         f"family's encoder, what a config that names none gets), or valid: "
                         f"{', '.join(encoders.readers(shape))}")
    if encoders.ENCODERS[cnn].one_frame and stack not in (None, 1):
        raise ValueError(f"model.stack: {stack}; the {cnn} encoder reads one whole observation of {game}, valid: 1")


StageName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Protocol(Strict):
    """The Atari protocol (envs.AtariProtocol), Machado et al. 2018 defaults."""
    sticky_action_prob: float = Field(0.25, ge=0.0, le=1.0)
    frame_skip: PositiveInt = 4
    frame_stack: PositiveInt = 4
    screen_size: Literal[84] = 84
    max_episode_frames: PositiveInt = 108_000
    noop_max: int = Field(30, ge=0)
    full_action_space: bool = False
    terminal_on_life_loss: bool = False


def settings_block(name: str, settings: type, doc: str, leave_out: tuple[str, ...] = (), **own) -> type[Strict]:
    """A teach config's block of hyper-parameters, built from their dataclass: each field's name,
    type, bounds (annotated_types in its annotation) and default are the dataclass's own, declared
    once there, in its order. `own`: fields the block adds ahead of them, as (type, default);
    `leave_out`: the dataclass's fields the stage sets itself (a source's episodes, from its budget)."""
    hints = typing.get_type_hints(settings, include_extras=True)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(settings) if f.name not in leave_out}
    return create_model(name, __base__=Strict, __doc__=doc, __module__=__name__, **own, **fields)


# The family's split of tasks a history source records (e.g. envs/darkroom.py GOAL_SPLITS)
_GOAL_SPLIT = (str, "train")

PPOParams = settings_block("PPOParams", _PPO, "RLlib PPO's settings: algorithms.presets.PPOSettings "
                           "(CleanRL's ppo_atari).")
APPOParams = settings_block("APPOParams", _APPO, "RLlib APPO's settings: algorithms.presets.APPOSettings "
                            "(RLlib's tuned Atari).")
DQNParams = settings_block("DQNParams", _DQN, "RLlib DQN's settings: algorithms.presets.DQNSettings "
                           "(Dopamine/CleanRL).")
DarkRoomParams = settings_block(
    "DarkRoomParams", _Q, "Tabular Q-learning on Dark Room goals (algorithms.darkroom_source.QLearningConfig), "
    "one history per goal.", leave_out=("episodes",), goal_split=_GOAL_SPLIT)
AnnealParams = settings_block(
    "AnnealParams", _Anneal, "An expert played with annealed noise (algorithms.annealed_source.AnnealConfig, "
    "AD-epsilon), one history per task of a per-task family. The episodes per history come from the stage's "
    "env_steps (per task) over the family's episode length.", leave_out=("episodes",), goal_split=_GOAL_SPLIT)
ThompsonParams = settings_block(
    "ThompsonParams", _Thompson, "A learner that finds each minatar_columns task's paying columns by Thompson "
    "sampling on episode returns (algorithms.thompson_source.ThompsonConfig), one history per task. The episodes "
    "per history come from the stage's env_steps (per task).", leave_out=("episodes",), goal_split=_GOAL_SPLIT)


def _teacher_algorithm(name: str) -> str:
    if teacher_kinds.get(name) is not None or sources.local_source(name) is not None:
        return name
    raise ValueError(f"{name!r} is not a teacher; valid: RLlib {', '.join(teacher_kinds.names())} "
                     "(algorithms/teacher_kinds.py), or a history "
                     f"source {', '.join(sources.names())} (algorithms/sources.py)")


class TeachConfig(Strict):
    """Teachers: one Tune trial per (game, seed), each recording its whole learning history."""
    kind: Literal["teach"] = "teach"
    name: StageName = "teach"
    # An RLlib teacher kind as Tune trials (algorithms/teacher_kinds.py: ppo, appo, dqn), or a
    # history source recorded in the driver
    # (algorithms/sources.py: qlearning, Dark Room's source RL; annealed, AD-epsilon's expert;
    # thompson, a column-finding learner on minatar_columns)
    algorithm: Annotated[str, AfterValidator(_teacher_algorithm)]
    games: list[Game] = Field(min_length=1)  # or give `suite`, e.g. "dev5" or "mgdt@1:train"
    suite: str | None = None
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default=[0], min_length=1)
    env_steps: PositiveInt  # budget per trial
    # A named preset (algorithms/presets.py) sets the fields below that the config leaves out
    # to the field's published settings for the algorithm, e.g. `preset: atari`.
    preset: str | None = None
    env_steps_per_iter: PositiveInt = 256  # PPO train batch; DQN: steps per Tune report
    lr: PositiveFloat = 2.5e-4
    cnn: Literal[encoders.CNNS] = "small"  # an encoder that reads the games (algorithms/encoders.py)
    reward: Literal["sign", "clip", "raw"] = "sign"  # what the Learner sees; reports stay raw
    # "vector": ale-py's C++ vector env with batched inference (fast); "rllib": RLlib's own
    # SingleAgentEnvRunner on gymnasium wrappers (the reference).
    runner: Literal["vector", "rllib"] = "vector"
    num_env_runners: int = Field(0, ge=0)  # 0: sample in the trial's own process
    num_envs_per_runner: PositiveInt = 1
    env_threads: PositiveInt = 1  # C++ threads of each vector env
    max_episode_steps: PositiveInt | None = None  # extra truncation for tiny budgets
    eval_interval: int = Field(0, ge=0)  # greedy evaluation every N iterations (0: never)
    eval_episodes: PositiveInt = 2
    checkpoint_interval: int = Field(0, ge=0)  # checkpoint every N iterations (0: at the end)
    # The learning gate: a teacher learned if its final return is at least this far above
    # random play, in human-normalised terms (Dark Room: as a fraction of each goal's optimum).
    learned_margin: float = Field(0.05, ge=0.0)
    protocol: Protocol = Protocol()
    ppo: PPOParams = PPOParams()
    appo: APPOParams = APPOParams()
    dqn: DQNParams = DQNParams()
    darkroom: DarkRoomParams = DarkRoomParams()
    annealed: AnnealParams = AnnealParams()
    thompson: ThompsonParams = ThompsonParams()
    shard_rows: PositiveInt = 20_000  # ~140 MB of frames buffered per env runner, ~3 MB on disk
    # Where the Learner runs (platform/resources.py): auto = a GPU Learner when the cluster has one now.
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # A trial that fails (e.g. its node dies) is restarted from its last checkpoint this many
    # times; the history recorded after that checkpoint is rewound (docs/teachers.md).
    max_failures: int = Field(2, ge=0)
    max_concurrent_trials: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") is not None:
            algorithm, name = data.get("algorithm"), data["preset"]
            known = PRESETS.get(algorithm, {})
            if name not in known:
                raise ValueError(f"preset: {name!r} is not a preset of algorithm {algorithm!r}; valid: "
                                 f"{', '.join(sorted(known)) or 'none (this algorithm has no presets)'}")
            preset = known[name]
            merged = {**preset, **data}
            for block in teacher_kinds.names():  # the config's block refines the preset's
                if isinstance(preset.get(block), dict) and isinstance(data.get(block), dict):
                    merged[block] = {**preset[block], **data[block]}
            data = merged
        return data

    @model_validator(mode="before")
    @classmethod
    def _expand_suite(cls, data):
        if isinstance(data, dict) and data.get("suite") is not None:
            from understudy.envs import resolve_suite

            if data.get("games"):
                raise ValueError("give either games or suite, not both")
            try:
                _, games = resolve_suite(str(data["suite"]))
            except ValueError as err:
                raise ValueError(f"suite: {err}") from None
            data = {**data, "games": games}
        return data

    @model_validator(mode="after")
    def _teacher_kind_learns_games(self):
        """What the RLlib teacher kind learns, on which runner and with which settings is the
        kind's to say (algorithms/teacher_kinds.py). Games of per-task families are left to
        _local_source_fits: RLlib teachers do not record tasks."""
        kind = teacher_kinds.get(self.algorithm)
        found = {}  # family name -> family, of the games a teacher learns as a whole
        for game in self.games:
            family = families.family_of(game)
            if not family.per_goal:
                found.setdefault(family.name, family)
        if len({tuple(f.frame_shape) for f in found.values()}) > 1:
            raise ValueError(f"games: {' and '.join(found)} games cannot share a teach stage (their frames "
                             f"differ); got {self.games}")
        for family in found.values() if kind is not None else []:
            refused = teacher_kinds.refusal(kind, family, self.runner, getattr(self, kind.name))
            if refused is not None:
                raise ValueError(f"{refused[0]}: {refused[1]}")
        return self

    @model_validator(mode="after")
    def _encoder_reads_games(self):  # the RLlib teacher's encoder; a local source has none
        for game in self.games if self.local_source is None else []:
            family = families.family_of(game)
            if not encoders.reads(self.cnn, family.frame_shape):
                raise ValueError(f"cnn: {self.cnn!r} reads {encoders.shape_text(encoders.ENCODERS[self.cnn].frame)}; "
                                 f"{game} is {family.name}, of {encoders.shape_text(family.frame_shape)}: "
                                 f"cnn: {family.encoder}")
        return self

    @property
    def local_source(self) -> sources.LocalSource | None:
        """The history source recording in the driver, or None for an RLlib teacher."""
        return sources.local_source(self.algorithm)

    @property
    def source_block(self) -> BaseModel | None:
        """The local source's settings block (with its goal_split)."""
        return None if self.local_source is None else getattr(self, self.local_source.block)

    @property
    def tasks_per_game(self) -> int:
        """Histories per game and seed: a local source records one per task of its split."""
        if self.local_source is None:
            return 1
        return len(families.family_of(self.games[0]).goals(self.source_block.goal_split))

    @model_validator(mode="after")
    def _local_source_fits(self):
        source = self.local_source
        per_task = [g for g in self.games if families.family_of(g).per_goal]
        if source is None:
            if per_task:
                valid = [s for s in sources.names()
                         if families.family_of(per_task[0]).name in sources.local_source(s).families]
                raise ValueError(f"games: {per_task[0]} is a per-task family's game; RLlib teachers do not record "
                                 f"its tasks yet: algorithm must be one of {', '.join(valid)} (got {self.algorithm!r})")
            return self
        family = families.family_of(self.games[0])
        if len(self.games) > 1 or family.name not in source.families:
            raise ValueError(f"games: algorithm {source.name!r} records one game of family "
                             f"{' or '.join(source.families)} (got {self.games})")
        block = getattr(self, source.block)
        try:
            family.goals(block.goal_split)
        except ValueError as err:
            raise ValueError(f"{source.block}.goal_split: {err}") from None
        episode = family.episode_steps or family.longest_episode
        if self.env_steps < episode:
            raise ValueError(f"env_steps: {self.env_steps} per task is less than one episode of {self.games[0]} "
                             f"({episode} steps); a history is env_steps // {episode} episodes")
        try:  # the source's own rules on its settings
            sources.settings_of(source, block.model_dump(), episodes=self.env_steps // episode)
        except ValueError as err:
            raise ValueError(f"{source.block}: {err}") from None
        return self

    @model_validator(mode="after")
    def _budget_fits(self):  # an RLlib teacher's iterations (a local source has none)
        if self.local_source is None and self.env_steps < self.env_steps_per_iter:
            raise ValueError(f"env_steps ({self.env_steps}) is smaller than env_steps_per_iter "
                             f"({self.env_steps_per_iter}); raise env_steps or lower env_steps_per_iter")
        return self


def teacher_settings(cfg: TeachConfig) -> dict:
    """The teacher's complete settings: every argument of `teacher_config` except the game,
    seed, budget and recording. The manifest records them; the `scratch` baseline replays them."""
    return {"algorithm": cfg.algorithm, "preset": cfg.preset, "lr": cfg.lr, "cnn": cfg.cnn,
            "reward": cfg.reward, "env_steps_per_iter": cfg.env_steps_per_iter,
            "num_envs": cfg.num_envs_per_runner, "num_env_runners": cfg.num_env_runners,
            "runner": cfg.runner, "env_threads": cfg.env_threads,
            # the Atari protocol, where the family's envs take it; others follow their own (envs/families.py)
            "protocol": cfg.protocol.model_dump() if families.family_of(cfg.games[0]).takes_protocol else {},
            "max_episode_steps": cfg.max_episode_steps,
            "settings": getattr(cfg, cfg.algorithm).model_dump()}


class DataParams(Strict):
    """Which parts of the recorded histories an imitator sees (histories.data.Selection and
    StepTransforms), applied in the order listed."""
    games: list[Game] | None = None  # default: the distill stage's games
    suite: str | None = None  # e.g. "mgdt@1:train": the games of a suite split present in the data
    cutoff_env_steps: PositiveInt | None = None  # teacher cutoff: history up to this many env steps
    cutoff_policy_version: int | None = Field(None, ge=0)  # ... or up to this learner update
    # each history up to its first episode whose return exceeds this fraction of its task's
    # optimum (per-task families, Dark Room): data that never reaches that level
    cap_return_fraction: float | None = Field(None, gt=0.0, le=1.0)
    gap: PositiveInt = 1  # every k-th episode (AD's "gap" subsampling)
    expert_last: PositiveInt | None = None  # only the last N episodes per history (ED)
    unified_actions: bool = False  # the 18 ALE actions, so histories of different games mix
    reward: Literal["raw", "clip", "sign"] = "raw"
    gla: bool = False  # per-history random pixel and action permutations (GLA-style)
    heldout_episodes: int = Field(1, ge=0)  # the last N episodes of each history: action accuracy

    @model_validator(mode="after")
    def _exclusive(self):
        if self.expert_last is not None and self.gap != 1:
            raise ValueError("expert_last and gap cannot be combined (expert-only keeps the last "
                             "N episodes as they are)")
        if self.games is not None and self.suite is not None:
            raise ValueError("give either data.games or data.suite, not both")
        if self.suite is not None:
            from understudy.envs import resolve_suite

            try:
                resolve_suite(self.suite)
            except ValueError as err:
                raise ValueError(f"suite: {err}") from None
        return self


class ModelParams(Strict):
    """Constructor arguments of the imitator's model (`model:` in a distill config). Each imitator
    has its own schema (model_params), read from its model's constructor: its parameters, typed
    and bounded as the constructor declares them; None keeps the model's own default."""


def _imitator(name: str) -> str:
    imitators.get(name)  # ValueError naming the valid ones
    return name


@lru_cache(maxsize=None)
def model_params(algorithm: str) -> type[ModelParams]:
    """The `model:` schema of an imitator: one optional field per constructor parameter."""
    fields = {}
    for name, p in imitators.get(algorithm).parameters().items():
        annotation = Any if p.annotation is p.empty or isinstance(p.annotation, str) else p.annotation
        fields[name] = (annotation | None, None)
    return create_model(f"ModelParams_{algorithm}", __base__=ModelParams, **fields)


def _model_of(algorithm: str, given, games: list[str]) -> ModelParams:
    """A distill config's `model:` validated against its imitator's schema; a `cnn` left out is
    the encoder the games' family names (EnvFamily.encoder), else the model's own default,
    recorded either way. ValueError: one line naming each wrong key and the valid ones."""
    schema = model_params(algorithm)
    if isinstance(given, BaseModel):
        given = given.model_dump(exclude_none=True)
    # None is "the model's own default"; configs and manifests older than per-imitator schemas
    # hold every shared key, mostly None.
    given = {k: v for k, v in dict(given or {}).items() if v is not None or k in schema.model_fields}
    if "cnn" in schema.model_fields and given.get("cnn") is None:
        named = {families.family_of(g).encoder for g in games}
        given["cnn"] = named.pop() if len(named) == 1 else imitators.get(algorithm).default("cnn")
    try:
        return schema.model_validate(given)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            loc = ".".join(["model", *map(str, e["loc"])])
            if e["type"] == "extra_forbidden":
                parts.append(f"{loc}: unknown key for algorithm {algorithm!r}; valid keys here: "
                             f"{', '.join(schema.model_fields)}")
            else:
                parts.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
        raise ValueError("; ".join(parts)) from None


class SearchDomain(Strict):
    """One swept value: exactly one of these keys."""
    grid: list | None = None
    choice: list | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, randint (got {given or 'none'})")
        return self


# What a trial reports every epoch that a scheduler or searcher can steer by.
OBJECTIVE_METRICS = ("heldout_loss", "heldout_accuracy", "train_loss", "train_accuracy")
Metric = Annotated[str, AfterValidator(lambda m: _one_of(m, OBJECTIVE_METRICS, "metric"))]


def _one_of(value, valid, what: str):
    if value not in valid:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(valid)}")
    return value


class AshaParams(Strict):
    metric: Metric = "heldout_loss"
    mode: Literal["min", "max"] = "min"
    grace_period: PositiveInt = 1  # epochs before a trial can be stopped
    reduction_factor: float = Field(2.0, gt=1.0)


# What Population Based Training may change in a running trial: a perturbed trial goes on from a
# checkpoint (of itself or of a better trial), so nothing that shapes the weights may change.
PBT_MUTABLE = ("lr", "weight_decay", "batch_size", "model.dropout", "model.attention_dropout")


class PbtParams(Strict):
    """Tune's PopulationBasedTraining: every `perturbation_interval` epochs a trial in the bottom
    `quantile_fraction` of the population by `metric` continues from a top trial's checkpoint
    with its hyper-parameters perturbed: each key of `mutations` resampled from its domain with
    `resample_probability`, else moved (x0.8 or x1.2 for a continuous one, a neighbour in a
    `choice` list)."""
    metric: Metric = "heldout_loss"
    mode: Literal["min", "max"] = "min"
    perturbation_interval: PositiveInt = 1  # epochs
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5)
    resample_probability: float = Field(0.25, ge=0.0, le=1.0)
    synch: bool = False  # perturb only when the whole population has reached the interval
    mutations: dict[str, SearchDomain] = Field(default_factory=dict)  # keys of PBT_MUTABLE


class SearcherParams(Strict):
    """How `search` points are chosen. basic: Tune's BasicVariantGenerator (grid points, random
    draws for the other domains; `seed` seeds the draws); optuna: Tune's OptunaSearch, Optuna's
    TPE sampler (seeded by `seed`) proposing each next point from the trials finished so far by
    `metric`."""
    algorithm: Literal["basic", "optuna"] = "basic"
    seed: int | None = Field(None, ge=0)
    metric: Metric = "heldout_loss"  # optuna only
    mode: Literal["min", "max"] = "min"


class DistillConfig(Strict):
    """An imitator (or a Tune sweep of them) trained on recorded learning histories."""
    kind: Literal["distill"] = "distill"
    name: StageName = "distill"
    teacher: StageName  # the teach stage whose shards to read
    game: Game | None = None  # one game, or give `games`
    games: list[Game] = Field(default_factory=list)
    # a registered imitator (algorithms/imitators.py: bc, dt, ad, ad_gru, installed plug-ins) or
    # a plug-in's "module:attribute" (docs/extending.md)
    algorithm: Annotated[str, AfterValidator(_imitator)] = "bc"
    model: SerializeAsAny[ModelParams] = ModelParams()  # the imitator's own schema (model_params)
    data: DataParams = DataParams()
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(0.0, ge=0.0)
    max_batches_per_epoch: PositiveInt | None = None  # cap an epoch on huge data
    # Small data (e.g. Dark Room): an epoch is exactly max_batches_per_epoch batches, drawn from
    # as many reshuffled passes over the data as that takes, so the per-epoch checkpoint and
    # report come every N steps instead of after every short pass.
    cycle_data: bool = False
    seed: int = Field(0, ge=0)
    # Independent training runs: one trial per seed (of each searched point). They are the runs
    # the evaluation's intervals resample; the best searched point keeps all of its seeds.
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)
    cpus_per_trial: PositiveInt = 1
    workers: PositiveInt = 1  # >1: data-parallel training with Ray Train inside the trial
    block_steps: PositiveInt = 20_000  # rows of consecutive episodes the loader reads at once
    blocks_in_memory: PositiveInt = 2
    search: dict[str, SearchDomain] = Field(default_factory=dict)  # dotted keys, e.g. model.d_model
    num_samples: PositiveInt = 1  # samples of the random domains (grids multiply it)
    searcher: SearcherParams = SearcherParams()
    scheduler: Literal["none", "asha", "pbt"] = "none"
    asha: AshaParams = AshaParams()
    pbt: PbtParams = PbtParams()
    max_concurrent_trials: PositiveInt | None = None
    max_failures: int = Field(2, ge=0)  # a failed trial restarts from its last checkpoint
    verify_shards: bool = True  # re-hash every shard before training on it
    skip_corrupt_shards: bool = False  # train without corrupted shards (logged) instead of refusing
    # AD reads a context across episodes; one shorter than 2x the data's 95th-percentile episode
    # length cannot hold a previous episode, and distill refuses it unless this says otherwise.
    allow_short_context: bool = False
    # A cross-episode learner can only copy learning its training windows show: distill refuses
    # data whose median history gains less than half of one episode's spread across a context
    # (platform/distill.context_span) unless this says otherwise (logged).
    allow_flat_windows: bool = False
    allow_unlearned: bool = False  # distil histories of teachers that did not learn (logged)
    # Where the trial (each Ray Train worker) trains (platform/resources.py): auto = a GPU when the cluster has one now.
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # The forward pass's arithmetic (algorithms.imitation.autocast): bfloat16 mixed precision is
    # about 1.2x faster on a CPU with AVX-512 bf16 (docs/benchmarks.md), slower on one without.
    precision: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _imitator_model(cls, data):
        if not isinstance(data, dict):
            return data
        algorithm = data.get("algorithm", cls.model_fields["algorithm"].default)
        try:
            imitators.get(algorithm)
        except ValueError:
            return data  # the field says what is wrong with it
        games = ([data["game"]] if data.get("game") else []) + list(data.get("games") or [])
        return {**data, "model": _model_of(algorithm, data.get("model"), [str(g) for g in games])}

    @model_validator(mode="after")
    def _games_can_be_imitated(self):
        _model_fits_games(([self.game] if self.game else []) + self.games, getattr(self.model, "cnn", None),
                          getattr(self.model, "stack", None), "games")
        return self

    @model_validator(mode="after")
    def _check(self):
        if self.cycle_data and self.max_batches_per_epoch is None:
            raise ValueError("cycle_data: true needs max_batches_per_epoch (the size of an epoch)")
        if not self.game and not self.games:
            raise ValueError("give game (one) or games (several) to train on")
        if self.game and self.games:
            raise ValueError("give either game or games, not both")
        if self.seeds is not None:
            if "seed" in self.search:
                raise ValueError("give seeds (independent training runs) or search.seed, not both")
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds {self.seeds}: repeated seeds are not independent runs")
        for key in self.search:
            if key not in _sweepable(type(self.model)):
                raise ValueError(f"search.{key}: not a sweepable key; valid: {', '.join(_sweepable(type(self.model)))}")
        self._check_sweep()
        return self

    def _check_sweep(self) -> None:
        """The searcher and scheduler options fit each other and the config: each refusal names
        the field and what would be valid."""
        if self.searcher.algorithm == "optuna":
            grids = [k for k, d in self.search.items() if d.grid is not None]
            if grids:
                raise ValueError(f"search.{grids[0]}: grid is not a domain searcher.algorithm optuna samples; "
                                 "valid: choice, uniform, loguniform, randint (or searcher.algorithm: basic)")
            if not self.search:
                raise ValueError("searcher.algorithm: optuna needs a search space; give search (e.g. "
                                 "lr: {loguniform: [1e-4, 1e-2]})")
            if self.seeds is not None:
                raise ValueError("seeds: optuna proposes one point per trial and cannot repeat a point once per "
                                 "seed; give seed (one run per point), or searcher.algorithm: basic")
        if self.scheduler == "pbt":
            if self.searcher.algorithm != "basic":
                raise ValueError(f"scheduler: pbt explores by itself; valid with searcher.algorithm basic only "
                                 f"(got {self.searcher.algorithm!r})")
            if self.seeds is not None:
                raise ValueError("seeds: PBT's trials copy each other's weights and settings, so they are not "
                                 "independent runs; give num_samples (the population) and seed")
            if not self.pbt.mutations:
                raise ValueError(f"pbt.mutations: empty; scheduler pbt needs at least one key to perturb, "
                                 f"valid: {', '.join(PBT_MUTABLE)}")
            for key, domain in self.pbt.mutations.items():
                if key not in PBT_MUTABLE:
                    raise ValueError(f"pbt.mutations.{key}: not a key PBT can change in a running trial; valid: "
                                     f"{', '.join(PBT_MUTABLE)} (the rest shape the weights a trial continues from)")
                if domain.grid is not None:
                    raise ValueError(f"pbt.mutations.{key}: grid is not a mutation domain; valid: choice, "
                                     "uniform, loguniform, randint")
            if self.pbt.perturbation_interval >= self.epochs:
                raise ValueError(f"pbt.perturbation_interval: {self.pbt.perturbation_interval} epochs leaves no "
                                 f"perturbation within epochs: {self.epochs}; valid: 1..{self.epochs - 1}")
            if self.workers > 1:
                raise ValueError("scheduler: pbt continues trials from Tune checkpoints; valid with workers: 1 "
                                 f"only (got workers: {self.workers}, Ray Train's checkpoints)")
            population = self.num_samples * len(self.run_seeds) * math.prod(
                len(d.grid) for d in self.search.values() if d.grid is not None)
            if population < 2:
                raise ValueError("num_samples: scheduler pbt needs a population of at least 2 trials (num_samples "
                                 f"x seeds x grid points); got {population}")
        objectives = {"asha": (self.asha.metric, self.asha.mode), "pbt": (self.pbt.metric, self.pbt.mode)}
        if self.searcher.algorithm == "optuna" and self.scheduler in objectives and \
                objectives[self.scheduler] != (self.searcher.metric, self.searcher.mode):
            raise ValueError(f"searcher.metric/mode {self.searcher.metric}/{self.searcher.mode} and "
                             f"{self.scheduler}.metric/mode {'/'.join(objectives[self.scheduler])} differ; valid: "
                             "the same objective for both")
        metric, _ = self.objective
        if metric.startswith("heldout_") and self.data.heldout_episodes == 0 and \
                (self.scheduler != "none" or self.searcher.algorithm == "optuna"):
            raise ValueError(f"data.heldout_episodes: 0 holds no episodes out, yet the sweep steers by {metric}; "
                             "valid: heldout_episodes >= 1, or metric train_loss / train_accuracy")

    @property
    def objective(self) -> tuple[str, str]:
        """(metric, mode) the sweep steers by and the best point is chosen by."""
        if self.scheduler == "pbt":
            return self.pbt.metric, self.pbt.mode
        if self.scheduler == "asha":
            return self.asha.metric, self.asha.mode
        if self.searcher.algorithm == "optuna":
            return self.searcher.metric, self.searcher.mode
        return self.asha.metric, self.asha.mode

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    @property
    def train_games(self) -> list[str]:
        return [self.game] if self.game else list(self.games)


def _sweepable(params: type[ModelParams]) -> list[str]:
    """The keys a distill search may sweep, for an imitator of `model:` schema `params`."""
    keys = []
    for name in ("lr", "batch_size", "weight_decay", "epochs", "seed"):
        keys.append(name)
    for section, sub in (("model", params), ("data", DataParams)):
        keys += [f"{section}.{k}" for k in sub.model_fields if k not in ("games", "suite")]
    return keys


class FinetuneParams(Strict):
    """The `finetune` agent: the imitator updating its weights by policy gradient on its own
    returns as it plays (algorithms/policy_gradient_finetune.py). On the Dark Room demo AD,
    lr 1e-5, 3e-5 and 1e-4 all learn without collapse (docs/evaluation.md); 3e-5 is the middle."""
    lr: PositiveFloat = 3e-5
    updates: PositiveInt = 1  # Adam steps after each finished episode of a copy
    advantage_clip: PositiveFloat = 3.0  # |advantage| at most this many (std + 1) of its earlier returns


class EvaluateConfig(Strict):
    """Agents play `episodes` consecutive episodes in `copies` copies of each game."""
    kind: Literal["evaluate"] = "evaluate"
    name: StageName = "evaluate"
    imitator: StageName  # the distill stage whose checkpoint plays
    teacher: StageName  # the teach stage whose final policy plays
    ed: StageName | None = None  # an expert-only distill stage, for the `ed` agent
    # context_reset, reward_blind, warmup: controls of in-context learning, the imitator's own
    # checkpoints with one input changed (platform/players.py); only for an imitator that reads
    # across episodes (ad, ad_gru).
    agents: list[Literal["imitator", "ed", "teacher", "random", "noop", "finetune", "scratch",
                         "context_reset", "reward_blind", "warmup"]] = ["imitator", "teacher", "random"]
    games: list[Game] = Field(min_length=1)
    heldout_games: list[Game] = Field(default_factory=list)  # must not be in the training data
    episodes: PositiveInt = 3  # consecutive episodes per copy, memory carried across them
    # Past the horizon: play this multiple of the training histories' length in episodes (the
    # episodes per history the imitator was trained on) instead of `episodes`.
    horizon: PositiveFloat | None = None
    copies: PositiveInt = 1  # independent copies per agent and game (Dark Room: per held-out goal)
    max_episode_steps: PositiveInt | None = None
    greedy: bool = True
    # Env seeds derive from it and each run's training seed (players.eval_seed): every agent of
    # one training run plays the same env seeds, and runs of different seeds different ones.
    seed: int = Field(0, ge=0)
    target_return: float | None = None  # what a Decision Transformer is asked for
    window: PositiveInt = 5  # episodes in the early and late means of the metrics
    goal_split: str = "heldout"  # the tasks to play of a per-task family (Dark Room goals): its split
    finetune: FinetuneParams = FinetuneParams()
    forgetting: bool = False  # after fine-tuning on a game, replay the training games
    # The warmup control's unscored episodes per copy on a foreign task before the scored ones
    # (Dark Room: another goal; else random play of the game). 4 fill most of the Dark Room AD
    # context (120 steps = 6 episodes), so the first scored episodes are read after foreign ones.
    warmup_episodes: PositiveInt = 4
    # Where imitators play (their network's inference) (platform/resources.py): auto = a GPU when
    # the cluster has one now.
    device: Literal["auto", "cpu", "gpu"] = "auto"

    @model_validator(mode="after")
    def _split_exists(self):
        for game in self.games:
            family = families.family_of(game)
            if family.per_goal:
                try:
                    family.goals(self.goal_split)
                except ValueError as err:
                    raise ValueError(f"goal_split: {err}") from None
        return self

    @model_validator(mode="after")
    def _heldout_played(self):
        missing = [g for g in self.heldout_games if g not in self.games]
        if missing:
            raise ValueError(f"heldout_games {missing} are not among games {self.games}")
        return self


# Controls of in-context learning: evaluation agents that are the imitator's own checkpoints
# with one input changed (platform/players.py).
CONTROLS = ("context_reset", "reward_blind", "warmup")


def _controls_read_across_episodes(agents: list[str], algorithm: str) -> None:
    """The controls of in-context learning change what an imitator reads across episodes: an
    imitator that reads one episode (bc, dt) has nothing for them to change."""
    controls = [a for a in agents if a in CONTROLS]
    if not controls:
        return
    if not imitators.get(algorithm).cross_episode:
        what = ("is a control", "needs", "it") if len(controls) == 1 else ("are controls", "need", "them")
        raise ValueError(f"evaluate.agents: {', '.join(controls)} {what[0]} of in-context learning and {what[1]} an "
                         f"imitator that reads across episodes (distill.algorithm "
                         f"{' or '.join(imitators.cross_episode())}); distill.algorithm is {algorithm!r}: "
                         f"leave {what[2]} out")


class PipelineConfig(Strict):
    """teach -> distill -> evaluate, one command. Stage links default to the stage names here."""
    kind: Literal["pipeline"] = "pipeline"
    name: StageName = "pipeline"
    teach: TeachConfig
    distill: DistillConfig
    evaluate: EvaluateConfig

    @model_validator(mode="before")
    @classmethod
    def _link(cls, data):
        if isinstance(data, dict):
            teach, distill, evaluate = (dict(data.get(k) or {}) for k in ("teach", "distill", "evaluate"))
            teach_name = teach.get("name", "teach")
            distill.setdefault("teacher", teach_name)
            evaluate.setdefault("teacher", teach_name)
            evaluate.setdefault("imitator", distill.get("name", "distill"))
            data = {**data, "teach": teach, "distill": distill, "evaluate": evaluate}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.distill.teacher != self.teach.name:
            raise ValueError(f"distill.teacher is {self.distill.teacher!r} but the teach stage is "
                             f"named {self.teach.name!r}")
        missing = [g for g in self.distill.train_games if g not in self.teach.games]
        if missing:
            raise ValueError(f"distill.game(s) {missing} are not among teach.games {self.teach.games}")
        _controls_read_across_episodes(self.evaluate.agents, self.distill.algorithm)
        source = self.teach.local_source
        if "scratch" in self.evaluate.agents and source is not None and source.from_scratch is None:
            raise ValueError(f"evaluate.agents: 'scratch' learns with the teacher's algorithm from scratch, but "
                             f"teach.algorithm {source.name!r} ({source.description}) is not a learner; drop scratch")
        return self


class ExperimentConfig(Strict):
    """A ready experiment: teach -> distill (the imitator, and optionally an expert-only `ed`
    imitator) -> evaluate, one file for every scale: `scales` holds per-scale overrides that
    are merged in before validation (`understudy experiment NAME --scale full`)."""
    kind: Literal["experiment"] = "experiment"
    name: StageName
    description: str = ""
    scale: str = "demo"  # which entry of `scales` was applied
    scales: dict[str, dict] = Field(default_factory=dict)
    # Leave one out (e.g. "minatar5@1"): each game of the suite is held out in turn. One teach
    # stage covers them all; each rotation distils the imitator (and ED) from the other games'
    # histories and evaluates it on the game it never saw (platform.experiment.rotations).
    leave_one_out: str | None = None
    teach: TeachConfig
    distill: DistillConfig
    ed: DistillConfig | None = None
    evaluate: EvaluateConfig

    @model_validator(mode="before")
    @classmethod
    def _link(cls, data):
        if not isinstance(data, dict):
            return data
        from understudy.envs import resolve_suite

        def suite_games(value):  # "mgdt@1:heldout" -> its games; a list stays as it is
            if isinstance(value, str):
                try:
                    return resolve_suite(value)[1]
                except ValueError as err:
                    raise ValueError(f"{value!r}: {err}") from None
            return value

        name = data.get("name", "experiment")
        teach = {"name": f"{name}-teach", **(data.get("teach") or {})}
        teach_games = suite_games(teach.get("games") or teach.get("suite"))
        distill = {"name": f"{name}-imitator", "teacher": teach["name"], **(data.get("distill") or {})}
        if not distill.get("game") and not distill.get("games") and teach_games:
            distill["games"] = teach_games  # data.games / data.suite narrow it
        out = {**data, "teach": teach, "distill": distill}
        evaluate = {"name": f"{name}-evaluate", "teacher": teach["name"], "imitator": distill["name"],
                    **(data.get("evaluate") or {})}
        if "heldout_games" in evaluate:
            evaluate["heldout_games"] = suite_games(evaluate["heldout_games"])
        if "games" in evaluate:
            evaluate["games"] = suite_games(evaluate["games"])
        if data.get("ed") is not None:
            base = {k: v for k, v in distill.items() if k not in ("name", "data", "search")}
            out["ed"] = {**base, "name": f"{name}-ed", **data["ed"]}
            evaluate.setdefault("ed", out["ed"]["name"])
        out["evaluate"] = evaluate
        return out

    @model_validator(mode="after")
    def _consistent(self):
        if self.leave_one_out is not None:
            from understudy.envs import family_of, resolve_suite

            try:
                games = resolve_suite(self.leave_one_out)[1]
            except ValueError as err:
                raise ValueError(f"leave_one_out: {err}") from None
            absent = [g for g in games if g not in self.teach.games]
            if len(games) < 2 or absent:
                raise ValueError(f"leave_one_out: {self.leave_one_out!r} has games {games}; each must be "
                                 f"among teach.games {self.teach.games} and there must be at least 2"
                                 + (f" (missing: {absent})" if absent else ""))
            if any(family_of(g).per_goal for g in games):
                raise ValueError(f"leave_one_out: {self.leave_one_out!r}: a game with goals (Dark Room) "
                                 "holds its tasks out by goal (evaluate.goal_split), not by game")
            if self.evaluate.heldout_games:
                raise ValueError("evaluate.heldout_games: leave it out with leave_one_out; each rotation "
                                 "holds out its own game")
        missing = [g for g in self.distill.train_games if g not in self.teach.games]
        if missing:
            raise ValueError(f"distill.game(s) {missing} are not among teach.games {self.teach.games}")
        trained = set(self.distill.data.games or self.distill.train_games)
        if self.distill.data.suite:
            from understudy.envs import resolve_suite

            trained &= set(resolve_suite(self.distill.data.suite)[1])
        overlap = sorted(set(self.evaluate.heldout_games) & trained)
        if overlap:
            raise ValueError(f"evaluate.heldout_games {overlap} are also training games of the "
                             f"imitator {sorted(trained)}; a held-out game must never be trained on")
        if "ed" in self.evaluate.agents and self.ed is None:
            raise ValueError("evaluate.agents has 'ed' but there is no `ed` section (an expert-only "
                             "imitator, e.g. ed: {data: {expert_last: 50}})")
        _controls_read_across_episodes(self.evaluate.agents, self.distill.algorithm)
        source = self.teach.local_source
        if "scratch" in self.evaluate.agents and source is not None and source.from_scratch is None:
            raise ValueError(f"evaluate.agents: 'scratch' learns with the teacher's algorithm from scratch, but "
                             f"teach.algorithm {source.name!r} ({source.description}) is not a learner; drop scratch")
        return self


class DemoConfig(Strict):
    """`understudy demo`: a short real Atari teach-and-record stage (the Atari path: ALE, RLlib,
    the recording EnvRunner, shards), then a ready experiment at one of its scales (Dark Room,
    where the answer is known), whose in-context learning curve the demo ends with."""
    kind: Literal["demo"] = "demo"
    name: StageName = "demo"
    description: str = ""
    atari: TeachConfig
    experiment: str  # a ready experiment's name, or a path to an experiment file
    scale: str = "demo"  # which of the experiment's scales
    # The agents the curve compares (each must play in the experiment's evaluation)
    curve_agents: list[str] = Field(default_factory=lambda: ["imitator", "ed", "random"], min_length=1)

    @model_validator(mode="after")
    def _experiment_exists(self):
        from understudy.platform import shipped

        path = shipped.experiment_file(self.experiment)
        if path is None:
            raise ValueError(f"experiment {self.experiment!r}: no such file or ready experiment "
                             "(tune_configs/experiments/)")
        cfg = load_experiment(path, self.scale)  # ConfigError: a ValueError, named
        missing = [a for a in self.curve_agents if a not in cfg.evaluate.agents]
        if missing:
            raise ValueError(f"curve_agents: {missing} do not play in experiment {cfg.name!r} at scale "
                             f"{self.scale!r} (its agents: {', '.join(cfg.evaluate.agents)})")
        return self


def config_digest(cfg: BaseModel) -> str:
    """A stage config's fingerprint: its manifest records it, so `experiment --resume` knows a
    finished stage ran this very config."""
    import hashlib

    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def merge(base: dict, override: dict) -> dict:
    """Deep merge of mappings; lists and scalars in `override` replace those in `base`."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_experiment(path: str | Path, scale: str | None = None) -> "ExperimentConfig":
    """An experiment file with one of its `scales` merged in (default: its own `scale`)."""
    path = Path(path)
    data = read_yaml(path, "experiment file")
    if not isinstance(data, dict) or data.get("kind") != "experiment":
        raise ConfigError(f"{path}: kind: {data.get('kind') if isinstance(data, dict) else data!r} "
                          "is not 'experiment'")
    scale = scale or data.get("scale", "demo")
    scales = data.get("scales") or {}
    if scale not in scales and scale != "demo":
        raise ConfigError(f"{path}: scale {scale!r} is not defined; valid: {', '.join(scales) or 'demo'}")
    override = scales.get(scale, {})
    teach = override.get("teach") if isinstance(override, dict) else None
    if isinstance(teach, dict) and teach.get("preset") is not None and isinstance(data.get("teach"), dict):
        # A scale that names a preset takes the preset's settings whole: the base's values of
        # those fields and its algorithm block (sized for the demo) do not carry over.
        algorithm = teach.get("algorithm", data["teach"].get("algorithm"))
        dropped = set(PRESETS.get(algorithm, {}).get(teach["preset"], {})) | set(teacher_kinds.names())
        data = {**data, "teach": {k: v for k, v in data["teach"].items() if k not in dropped}}
    data = merge(data, override)
    data["scale"] = scale
    return parse_config(data, f"{path} (scale {scale})", expect=("experiment",))


KINDS = {"teach": TeachConfig, "distill": DistillConfig, "evaluate": EvaluateConfig,
         "pipeline": PipelineConfig, "experiment": ExperimentConfig, "demo": DemoConfig}
AnyConfig = Union[TeachConfig, DistillConfig, EvaluateConfig, PipelineConfig, ExperimentConfig, DemoConfig]


def _format_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in e["loc"]).replace(".[", "[")
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, e["loc"][:-1])
            parts.append(f"{loc}: unknown key; valid keys here: {', '.join(valid)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        shown = e.get("input")
        got = "" if isinstance(shown, dict) or shown is None else f" (got {shown!r})"
        if e["type"] == "missing":
            got = ""
        parts.append(f"{loc}: {msg}{got}" if loc else f"{msg}")
    return f"{source}: " + "; ".join(parts)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def parse_config(data, source: str = "config", expect: tuple[str, ...] | None = None) -> AnyConfig:
    """Validate a mapping as the config kind it names in `kind`; ConfigError on anything wrong."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping with a 'kind' key, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{source}: kind: {kind!r} is not a config kind; valid: {', '.join(KINDS)}")
    if expect and kind not in expect:
        raise ConfigError(f"{source}: kind: {kind!r} cannot be used here; expected one of: {', '.join(expect)}")
    model = KINDS[kind]
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, model, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with the same key twice (PyYAML keeps the last
    value silently, so a repeated `env_steps` would change a run without a word)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first at line {seen[key] + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path, what: str = "config file"):
    """The parsed contents of a YAML file; ConfigError if it is missing, not UTF-8 text,
    malformed, or repeats a key."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not a UTF-8 text {what}: byte 0x{raw[err.start]:02x} at position "
                          f"{err.start} (line {line}); give a YAML file saved as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None


def load_config(path: str | Path, expect: tuple[str, ...] | None = None) -> AnyConfig:
    path = Path(path)
    return parse_config(read_yaml(path), str(path), expect)


def stage_config(path: str | Path, stage: str):
    """The config of one stage from either a file of that kind or a pipeline file."""
    cfg = load_config(path, expect=(stage, "pipeline"))
    return getattr(cfg, stage) if isinstance(cfg, PipelineConfig) else cfg
