"""RLlib teacher kinds register themselves (algorithms/teacher_kinds.py): each holds what it
learns (env families, env runners, the settings a family needs) and what it costs for `plan`;
teach configs are refused by what the kind says, never by its name in platform/
(tests/test_registries.py)."""
import dataclasses
import math

import pytest

from understudy.algorithms import teacher_kinds
from understudy.algorithms.presets import SETTINGS
from understudy.envs.families import ALE, MINATAR
from understudy.platform import plan
from understudy.platform.config import ConfigError, TeachConfig, parse_config

MINATAR_TEACH = {"kind": "teach", "games": ["MinAtar/Breakout"], "env_steps": 20_000, "cnn": "minatar"}


def error_of(data) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


def test_each_kind_has_its_settings_and_a_block_of_them_in_teach_configs():
    assert teacher_kinds.names() == ("ppo", "appo", "dqn")
    for name in teacher_kinds.names():
        kind = teacher_kinds.get(name)
        assert kind.settings is SETTINGS[name]
        block = TeachConfig.model_fields[name].annotation
        assert set(block.model_fields) == {f.name for f in dataclasses.fields(kind.settings)}, name
    assert teacher_kinds.get("qlearning") is None  # a history source (algorithms/sources.py)
    with pytest.raises(ValueError, match="already registered"):
        teacher_kinds.register(dataclasses.replace(teacher_kinds.get("ppo")))


def test_what_a_kind_learns_is_the_kinds_to_say():
    ppo, appo, dqn = (teacher_kinds.get(n) for n in ("ppo", "appo", "dqn"))
    assert all(k.learns(ALE) for k in (ppo, appo, dqn))
    assert ppo.learns(MINATAR) and dqn.learns(MINATAR) and not appo.learns(MINATAR)
    assert teacher_kinds.refusal(ppo, ALE, "rllib", None) is None
    assert teacher_kinds.refusal(ppo, MINATAR, "rllib", None) == (
        "games", "minatar teachers are algorithm ppo or dqn on runner: vector (got algorithm 'ppo', runner 'rllib')")
    uniform = SETTINGS["dqn"](prioritized=False)
    assert teacher_kinds.refusal(dqn, ALE, "vector", uniform) is None  # frame replay: 84x84 stacks
    assert teacher_kinds.refusal(dqn, MINATAR, "vector", uniform)[0] == "dqn"
    assert teacher_kinds.refusal(dqn, MINATAR, "vector", SETTINGS["dqn"](prioritized=True)) is None


def test_teach_configs_are_refused_as_the_kind_says():
    msg = error_of({**MINATAR_TEACH, "algorithm": "appo"})
    assert "minatar teachers are algorithm ppo or dqn on runner: vector" in msg
    assert "runner: vector (got algorithm 'ppo', runner 'rllib')" in error_of(
        {**MINATAR_TEACH, "algorithm": "ppo", "runner": "rllib"})
    assert "dqn: minatar DQN needs prioritized: true" in error_of({**MINATAR_TEACH, "algorithm": "dqn"})
    assert parse_config({**MINATAR_TEACH, "algorithm": "dqn", "preset": "minatar"}).dqn.prioritized
    assert parse_config({**MINATAR_TEACH, "algorithm": "ppo"}).runner == "vector"
    msg = error_of({**MINATAR_TEACH, "algorithm": "ppo", "games": ["MinAtar/Breakout", "Pong"]})
    assert "games: minatar and ale games cannot share a teach stage (their frames differ)" in msg
    assert parse_config({"kind": "teach", "algorithm": "appo", "games": ["Pong"], "env_steps": 1024, "runner": "rllib"})


def test_plan_asks_the_kind_for_updates_and_speeds():
    for name, settings in (("ppo", {}), ("appo", {}), ("dqn", {"learning_starts": 100})):
        cfg = parse_config({"kind": "teach", "algorithm": name, "games": ["Pong"], "env_steps": 10_000,
                            "env_steps_per_iter": 512, name: settings})
        s = getattr(cfg, name)
        expected = {"ppo": lambda: math.ceil(10_000 / 512) * s.num_epochs * s.num_minibatches,
                    "appo": lambda: math.ceil(10_000 / 512) * s.circular_buffer_iterations_per_batch,
                    "dqn": lambda: int((10_000 - 100) * s.training_intensity / s.batch_size)}[name]()
        assert plan._teacher_updates(cfg) == expected
    assert "learning_ppo_minatar_breakout.json" in plan.teacher_speed("ppo", "MinAtar/Breakout").source
    assert plan.teacher_speed("qlearning", "DarkRoom").per_s is None  # a history source: its own speed
