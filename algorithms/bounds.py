"""Bounds of hyper-parameters, declared in their annotations (annotated_types), beside their
defaults: a settings dataclass (presets.py, the history sources) or an imitator's constructor
says once what a value may be. Config validation (platform/config.py) reads the same
annotations through pydantic, and `check` enforces them on a dataclass built directly in Python.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, Lt

Positive = Annotated[int, Gt(0)]  # a size or a count: frames, steps, units, batches
PositiveFloat = Annotated[float, Gt(0)]
NonNegative = Annotated[int, Ge(0)]  # a count where 0 means "none" (no planning, no warm-up)
NonNegativeFloat = Annotated[float, Ge(0)]
Probability = Annotated[float, Ge(0), Le(1)]  # an epsilon, a chance of noise
Share = Annotated[float, Gt(0), Le(1)]  # a positive share of a whole: of a budget, a step size
Rate = Annotated[float, Ge(0), Lt(1)]  # a dropout rate
Discount = Annotated[float, Ge(0), Lt(1)]  # a discount or a trace decay below 1


def _bound_text(metadata) -> str | None:
    """The bounds among an annotation's metadata, as words: '>= 0', 'in (0, 1]'; None if none."""
    low = next((("(", m.gt) for m in metadata if isinstance(m, Gt)), None) or \
        next((("[", m.ge) for m in metadata if isinstance(m, Ge)), None)
    high = next(((")", m.lt) for m in metadata if isinstance(m, Lt)), None) or \
        next((("]", m.le) for m in metadata if isinstance(m, Le)), None)
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {low[1]}"
    if high:
        return f"{'<' if high[0] == ')' else '<='} {high[1]}"
    return None


def _violates(value, metadata) -> bool:
    return any((isinstance(m, Gt) and not value > m.gt) or (isinstance(m, Ge) and not value >= m.ge)
               or (isinstance(m, Lt) and not value < m.lt) or (isinstance(m, Le) and not value <= m.le)
               for m in metadata)


def check(settings) -> None:
    """ValueError naming the first field of a settings dataclass outside its annotated bounds or
    choices ('planning_sweeps: -1 must be >= 0'); None (an optional field left out) passes."""
    hints = typing.get_type_hints(type(settings), include_extras=True)
    for field in dataclasses.fields(settings):
        value, hint = getattr(settings, field.name), hints[field.name]
        if value is None:
            continue
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            raise ValueError(f"{field.name}: {value!r} is not valid; valid: "
                             f"{', '.join(map(str, typing.get_args(hint)))}")
        for part in (hint, *typing.get_args(hint)):  # Annotated itself, or inside `X | None`
            if typing.get_origin(part) is Annotated and _violates(value, part.__metadata__):
                raise ValueError(f"{field.name}: {value} must be {_bound_text(part.__metadata__)}")
