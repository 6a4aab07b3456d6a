"""Numbers the project reads from environment variables, each checked where it is read: a value
that is not valid stops the run with one line naming the variable, the value and what would be
valid (platform/cli.py checks them all before any work starts). One entry per variable, its
default declared here once."""
from __future__ import annotations

import os
from dataclasses import dataclass


class SettingError(ValueError):
    """An environment variable with a value the project cannot use; the message is one line."""


@dataclass(frozen=True)
class NumberSetting:
    name: str
    default: float
    meaning: str  # what it is, for the error message
    integer: bool = False
    minimum: float = 0.0

    def get(self) -> float:
        raw = os.environ.get(self.name)
        if raw is None or raw.strip() == "":
            return self.default
        valid = (f"{'a whole number' if self.integer else 'a number'} >= {self.minimum:g} ({self.meaning}; "
                 f"default {self.default:g} when unset)")
        try:
            value = int(raw) if self.integer else float(raw)
        except ValueError:
            raise SettingError(f"{self.name}={raw!r}: not {'a whole number' if self.integer else 'a number'}; "
                               f"valid: {valid}") from None
        if not value >= self.minimum or value != value or value in (float("inf"),):
            raise SettingError(f"{self.name}={raw!r}: out of range; valid: {valid}")
        return value


STORAGE_RETRY_S = NumberSetting("UNDERSTUDY_STORAGE_RETRY_S", 300, "seconds a write waits for object storage")
MLFLOW_WAIT_S = NumberSetting("UNDERSTUDY_MLFLOW_WAIT_S", 60, "seconds Tune's MLflow logging waits to drain")
NUM_CPUS = NumberSetting("UNDERSTUDY_NUM_CPUS", os.cpu_count() or 2, "CPUs of the local Ray instance",
                         integer=True, minimum=1)
SETTINGS = (STORAGE_RETRY_S, MLFLOW_WAIT_S, NUM_CPUS)


def check_all() -> None:
    """Read every setting once: the first bad one raises SettingError."""
    for setting in SETTINGS:
        setting.get()
