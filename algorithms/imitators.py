"""Imitators register themselves here: each module (bc.py, dt.py, ad.py, ad_gru.py, or one in a
user's own package) declares its model class, the player that plays a frozen one, and whether
its context runs across episodes. Config validation, distill, evaluate and plan ask the registry
what an imitator does instead of testing its name.

A distill config's `algorithm` finds an imitator by
  - its registered name: a built-in (BUILTIN, imported on first lookup) or one registered by a
    module already imported;
  - the name of an entry point in the group `understudy.imitators` of an installed package;
  - `module:attribute`, an `Imitator` in an importable module (docs/extending.md).

Its hyper-parameters are its model's constructor arguments after `num_actions` (Dopamine's way:
each default is declared there and nowhere else). Config validation reads their names, types and
bounds from the signature, so annotate them: `Positive`, `PositiveFloat`, `Rate` below, or an
encoder name (`nets.EncoderName`) for the parameter `cnn`, which config fills with the games'
family's encoder when the config leaves it out.

A checkpoint names its imitator (model.json `algorithm`) but never makes code run: `known()`
looks only among imitators registered or installed (entry points), and a `module:attribute` is
imported only when a caller names it itself (`get`, imitation.load's `expect`).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable

# The bounds imitators annotate their constructor arguments with (declared in bounds.py, with
# the teachers' and sources'), importable from here as plug-ins always have.
from understudy.algorithms.bounds import Positive, PositiveFloat, Rate  # noqa: F401

# Modules that register a built-in imitator when imported (on first lookup, so that importing
# this registry stays cheap: no torch).
BUILTIN = ("understudy.algorithms.bc", "understudy.algorithms.dt", "understudy.algorithms.ad",
           "understudy.algorithms.ad_gru")
ENTRY_POINTS = "understudy.imitators"  # installed packages name their imitators in this group


@dataclass(frozen=True)
class Imitator:
    # nn.Module built as model(num_actions, **hyper-parameters), with `sample_spec()` (what a
    # training sample is, histories.data.SampleSpec) and `loss(batch) -> (loss, {"accuracy",
    # "targets"})`; its `spec` (constructor arguments, saved with its weights) is filled in by
    # `build` if it has none.
    model: type
    # (model, num_envs, greedy, seed[, target_return][, cache]) -> a player with
    # act(obs, prev_action, prev_reward, new_episode) -> actions and a `legal` mask attribute;
    # it is given only the options its signature names (`player`).
    policy: Callable
    # Its context runs across episodes: an in-context learner, so the controls of in-context
    # learning and the finetune agent apply to it.
    cross_episode: bool = False
    description: str = ""  # one line, for messages and docs
    name: str = ""  # the `algorithm` it is known by: set by `register`

    def parameters(self) -> dict[str, inspect.Parameter]:
        """Its hyper-parameters: the model's constructor arguments after num_actions, with
        their annotations evaluated (where they can be)."""
        try:
            signature = inspect.signature(self.model, eval_str=True)
        except NameError:  # an annotation its module cannot resolve: names and defaults only
            signature = inspect.signature(self.model)
        params = list(signature.parameters.values())[1:]
        return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def default(self, param: str) -> Any:
        """The model's own default of a hyper-parameter (None: it has none)."""
        found = self.parameters().get(param)
        return None if found is None or found.default is inspect.Parameter.empty else found.default

    def build(self, num_actions: int, **params):
        """The model; a parameter given as None keeps the model's own default."""
        unknown = sorted(set(params) - set(self.parameters()))
        if unknown:
            raise ValueError(f"imitator {self.name!r} takes no {', '.join(unknown)}; valid: "
                             f"{', '.join(self.parameters())}")
        given = {k: v for k, v in params.items() if v is not None}
        model = self.model(num_actions, **given)
        spec = getattr(model, "spec", None)
        if spec is None:  # a model that keeps no spec: its constructor arguments, defaults included
            bound = inspect.signature(self.model).bind(num_actions, **given)
            bound.apply_defaults()
            spec = dict(bound.arguments)
        model.spec = {**spec, "algorithm": self.name, "num_actions": num_actions}
        return model

    def player(self, model, num_envs: int, greedy: bool = True, seed: int = 0, **options):
        """The frozen model as a player of `num_envs` envs, given the options it names
        (target_return: what a return-conditioned model asks for; cache: a transformer's
        key/value cache)."""
        named = inspect.signature(self.policy).parameters
        return self.policy(model, num_envs, greedy=greedy, seed=seed,
                           **{k: v for k, v in options.items() if k in named})


_IMITATORS: dict[str, Imitator] = {}


def register(name: str, imitator: Imitator) -> Imitator:
    """Add an imitator under `name`; another model under a taken name is refused (two modules
    would fight over one name, and checkpoints name their imitator)."""
    known = _IMITATORS.get(name)
    if known is not None and known.model is not imitator.model:
        raise ValueError(f"imitator {name!r} is already registered (by {known.model.__module__}); choose another name")
    _IMITATORS[name] = replace(imitator, name=name)
    return _IMITATORS[name]


def _load_builtin() -> None:
    for module in BUILTIN:
        importlib.import_module(module)


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def names() -> tuple[str, ...]:
    """Every imitator a config can name without `module:attribute`: built-in, registered and
    installed."""
    _load_builtin()
    return tuple(sorted({*_IMITATORS, *_entry_points()}))


def cross_episode() -> tuple[str, ...]:
    """The names of the imitators whose context runs across episodes (built-in and installed)."""
    return tuple(n for n in names() if known(n).cross_episode)


def _valid() -> str:
    return (f"valid: {', '.join(repr(n) for n in names())}, or a plug-in's 'module:attribute' "
            "(docs/extending.md)")


def known(name: str) -> Imitator | None:
    """The imitator registered or installed under `name`, importing nothing a name alone could
    choose (a `module:attribute` counts only once something has imported it); None if none."""
    _load_builtin()
    if name in _IMITATORS:
        return _IMITATORS[name]
    ep = _entry_points().get(name) if isinstance(name, str) else None
    return None if ep is None else register(name, _as_imitator(ep.load(), f"entry point {ep.value}"))


def get(name: str) -> Imitator:
    """The imitator called `name`, importing `module:attribute` if that is what it is;
    ValueError naming the valid ones."""
    found = known(name)
    if found is not None:
        return found
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"{name!r} is not an imitator; {_valid()}")
    module, _, attribute = name.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"{name!r}: module {module!r} cannot be imported ({err}); is its package installed?") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{name!r}: module {module!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return register(name, _as_imitator(obj, name))


def _as_imitator(obj, where: str) -> Imitator:
    if not isinstance(obj, Imitator):
        raise ValueError(f"{where}: {type(obj).__name__} is not an Imitator (understudy.algorithms.imitators.Imitator)")
    return obj
