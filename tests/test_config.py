"""Bad configs are rejected before Ray starts, with a one-line error naming the field."""
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from understudy.platform.config import ConfigError, PipelineConfig, load_config, parse_config

TEACH = {"kind": "teach", "algorithm": "ppo", "games": ["Pong"], "env_steps": 1024}


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_teach_config_canonicalises_game_names():
    cfg = parse_config({**TEACH, "games": ["pong", "space_invaders"]})
    assert cfg.games == ["Pong", "SpaceInvaders"]


def test_wrong_game_name_names_field_and_closest_games():
    msg = error_of({**TEACH, "games": ["Pong", "Breakot"]})
    assert "games[1]" in msg and "'Breakot'" in msg and "Breakout" in msg


def test_negative_budget_is_rejected():
    msg = error_of({**TEACH, "env_steps": -5})
    assert "env_steps" in msg and "greater than 0" in msg and "-5" in msg


def test_zero_budget_is_rejected():
    assert "env_steps" in error_of({**TEACH, "env_steps": 0})


def test_cycling_data_needs_an_epoch_size():
    distill = {"kind": "distill", "teacher": "t", "game": "DarkRoom", "cycle_data": True}
    assert "cycle_data" in error_of(distill) and "max_batches_per_epoch" in error_of(distill)
    assert parse_config({**distill, "max_batches_per_epoch": 50}).cycle_data


def test_unknown_algorithm_lists_valid_choices():
    msg = error_of({**TEACH, "algorithm": "sac"})
    assert "algorithm" in msg and "sac" in msg
    assert all(name in msg for name in ("ppo", "appo", "dqn", "qlearning", "annealed"))


def test_unknown_key_is_rejected_not_ignored():
    msg = error_of({**TEACH, "env_stepz": 10})
    assert "env_stepz" in msg and "unknown key" in msg and "env_steps" in msg


def test_unknown_nested_key_lists_that_level():
    msg = error_of({**TEACH, "protocol": {"sticky": 0.1}})
    assert "protocol.sticky" in msg and "sticky_action_prob" in msg


def test_unknown_kind():
    msg = error_of({**TEACH, "kind": "train"})
    assert "kind" in msg and "teach" in msg and "pipeline" in msg


def test_pipeline_links_stages_and_checks_distill_game():
    base = {"kind": "pipeline", "teach": TEACH,
            "distill": {"game": "Pong"}, "evaluate": {"games": ["Pong"]}}
    cfg = parse_config(base)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.distill.teacher == cfg.teach.name == cfg.evaluate.teacher
    msg = error_of({**base, "distill": {"game": "Breakout"}})
    assert "distill.game" in msg and "Breakout" in msg


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: teach\ngames: [Pong\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_config(path)


def test_every_shipped_config_is_valid():
    import glob

    paths = glob.glob(f"{REPO_ROOT}/tune_configs/**/*.yaml", recursive=True)
    assert len(paths) >= 4
    for path in paths:
        load_config(path)


@pytest.mark.parametrize("body, field", [
    ("games: [Pongg]", "games[0]"),
    ("env_steps: -1", "env_steps"),
    ("algorithm: a2c", "algorithm"),
])
def test_cli_exits_2_before_ray_starts(tmp_path, body, field):
    fields = {"games": "games: [Pong]", "env_steps": "env_steps: 512", "algorithm": "algorithm: ppo"}
    key = body.split(":")[0]
    fields[key] = body
    path = tmp_path / "teach.yaml"
    path.write_text("kind: teach\n" + "\n".join(fields.values()) + "\n")
    proc = subprocess.run([sys.executable, "-m", "understudy.platform.cli", "--workspace",
                           str(tmp_path / "ws"), "teach", str(path)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr
    assert not (tmp_path / "ws").exists()  # nothing was started or written


def test_suite_expands_to_its_games():
    cfg = parse_config({**TEACH, "games": None, "suite": "mgdt@1:heldout"})
    assert cfg.games == ["Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner"]
    assert cfg.suite == "mgdt@1:heldout"


def test_unknown_suite_names_the_valid_ones():
    msg = error_of({**TEACH, "games": None, "suite": "dev"})
    assert "suite" in msg and "dev5" in msg and "mgdt" in msg


def test_suites_and_holdout_split():
    from understudy.envs import all_games, resolve_suite

    suite, train = resolve_suite("mgdt:train")
    assert len(train) == 41 and len(suite.heldout) == 5
    assert not set(train) & set(suite.heldout)
    _, atari57 = resolve_suite("atari57")
    assert len(atari57) == 57 and set(atari57) <= set(all_games())
    from understudy.envs import SUITES, family_of

    for s in SUITES.values():  # every suite's games exist in their family (ALE: the installed ROMs)
        assert all(g in family_of(g).games() for g in s.part()), s.name
    suite, held = resolve_suite("minatar5@1:heldout")
    assert held == ["MinAtar/SpaceInvaders"] and len(suite.part()) == 5
    assert {family_of(g).name for g in suite.part()} == {"minatar"}
    with pytest.raises(ValueError, match="no version 9"):
        resolve_suite("dev5@9")


def test_unwritable_shard_root_fails_before_ray_starts(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = tmp_path / "teach.yaml"
    path.write_text("kind: teach\nalgorithm: ppo\ngames: [Pong]\nenv_steps: 512\n")
    proc = subprocess.run([sys.executable, "-m", "understudy.platform.cli", "--workspace",
                           str(tmp_path / "ws"), "--shard-root", str(blocker / "shards"),
                           "teach", str(path)], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)
    assert proc.returncode == 2
    assert "not writable" in proc.stderr and str(blocker) in proc.stderr
    assert "Started a local Ray" not in proc.stderr


# ---- teacher presets (algorithms/presets.py) -----------------------------------------------------

def _settings_blocks():
    """(the teach config's block, its model, the dataclass declaring its hyper-parameters) for
    every RLlib teacher kind and history source, as the registries name them."""
    from understudy.algorithms import sources, teacher_kinds
    from understudy.platform.config import TeachConfig

    declared = [(name, teacher_kinds.get(name).settings) for name in teacher_kinds.names()]
    declared += [(sources.local_source(n).block, sources.local_source(n).settings) for n in sources.names()]
    return [(block, TeachConfig.model_fields[block].annotation, settings) for block, settings in declared]


def test_each_hyper_parameter_is_its_dataclass_field():
    """A teach config's block holds its dataclass's fields in their order, each with the type,
    bounds and default declared there (a source's block adds goal_split and leaves out
    episodes, which the stage's budget sets): nothing may drift from its declaration."""
    import dataclasses
    import typing

    from pydantic import TypeAdapter

    from understudy.algorithms import sources

    blocks = _settings_blocks()
    assert len(blocks) == 6
    source_blocks = {sources.local_source(n).block for n in sources.names()}
    for block, model, settings in blocks:
        own, left_out = ({"goal_split"}, {"episodes"}) if block in source_blocks else (set(), set())
        fields = [f for f in dataclasses.fields(settings) if f.name not in left_out]
        assert list(model.model_fields) == [*sorted(own), *(f.name for f in fields)], block
        hints = typing.get_type_hints(settings, include_extras=True)
        schema = model.model_json_schema()["properties"]
        for f in fields:
            got = model.model_fields[f.name].default
            assert (got, type(got)) == (f.default, type(f.default)), f"{block}.{f.name}"
            shown = {k: v for k, v in schema[f.name].items() if k not in ("title", "default")}
            assert shown == TypeAdapter(hints[f.name]).json_schema(), f"{block}.{f.name}: type or bounds"
        dumped = getattr(parse_config(TEACH), block).model_dump()
        assert {k: v for k, v in dumped.items() if k not in own} == \
            {k: v for k, v in dataclasses.asdict(settings()).items() if k not in left_out}, block


def test_no_hyper_parameter_is_declared_twice():
    """platform/ builds the blocks from the dataclasses (config.settings_block): no class there
    writes out two or more fields of one settings dataclass (a copy, whose defaults would drift).
    One shared name is a coincidence (DistillConfig.batch_size, EvaluateConfig.episodes)."""
    import ast
    import dataclasses

    copies = []
    for path in sorted((Path(REPO_ROOT) / "platform").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            names = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
            for block, _, settings in _settings_blocks():
                shared = names & {f.name for f in dataclasses.fields(settings)}
                if len(shared) > 1:
                    copies.append(f"{path.name} {node.name} declares {sorted(shared)} of {settings.__name__}")
    assert not copies


def test_a_settings_dataclass_checks_its_annotated_bounds():
    """Built directly in Python, a settings dataclass refuses a value outside its bounds, as a
    config would (algorithms/bounds.py reads the same annotations)."""
    from understudy.algorithms.annealed_source import AnnealConfig
    from understudy.algorithms.bounds import check
    from understudy.algorithms.darkroom_source import QLearningConfig
    from understudy.algorithms.presets import DQNSettings

    with pytest.raises(ValueError, match=r"learning_rate: 0 must be in \(0, 1\]"):
        QLearningConfig(learning_rate=0)
    with pytest.raises(ValueError, match="planning_sweeps: -1 must be >= 0"):
        QLearningConfig(planning_sweeps=-1)
    with pytest.raises(ValueError, match="schedule: 'cosine' is not valid; valid: linear"):
        AnnealConfig(schedule="cosine")
    check(DQNSettings(epsilon_steps=None))  # an optional field left out
    with pytest.raises(ValueError, match="epsilon_steps: 0 must be > 0"):
        check(DQNSettings(epsilon_steps=0))


def test_a_preset_fills_what_the_config_leaves_out_and_the_config_wins():
    cfg = parse_config({**TEACH, "preset": "atari"})
    assert (cfg.lr, cfg.cnn, cfg.num_envs_per_runner, cfg.env_steps_per_iter, cfg.reward) == \
        (2.5e-4, "nature", 8, 1024, "sign")  # CleanRL's ppo_atari: 8 envs x 128 steps
    assert (cfg.ppo.num_epochs, cfg.ppo.num_minibatches, cfg.ppo.clip_param) == (4, 4, 0.1)
    cfg = parse_config({**TEACH, "preset": "atari", "num_envs_per_runner": 4})
    assert cfg.num_envs_per_runner == 4 and cfg.cnn == "nature"
    dqn = parse_config({**TEACH, "algorithm": "dqn", "preset": "atari", "env_steps": 100_000})
    assert dqn.lr == 1e-4 and dqn.dqn.adam_epsilon == 1.5e-4 and dqn.dqn.buffer_size == 1_000_000


def test_unknown_preset_names_the_valid_ones():
    msg = error_of({**TEACH, "preset": "cleanrl"})
    assert "preset" in msg and "'cleanrl'" in msg and "atari" in msg


def test_full_scales_take_the_presets_whole():
    """A scale that names a preset does not inherit the demo's sizes or its algorithm block."""
    from understudy.platform.config import load_experiment

    for name in ("breakout_to_spaceinvaders", "teacher_cutoff", "multigame_holdout"):
        full = load_experiment(Path(REPO_ROOT) / "tune_configs" / "experiments" / f"{name}.yaml", "full")
        assert full.teach.preset == "atari" and full.teach.algorithm == "dqn"
        assert (full.teach.lr, full.teach.cnn, full.teach.reward) == (1e-4, "nature", "sign")
        assert full.teach.dqn.learning_starts == 20_000 and full.distill.allow_unlearned is False
        demo = load_experiment(Path(REPO_ROOT) / "tune_configs" / "experiments" / f"{name}.yaml", "demo")
        assert demo.teach.cnn == "small" and demo.distill.allow_unlearned is True


def test_the_manifest_settings_rebuild_the_teachers_rllib_config():
    """What teach records is all `teacher_config` needs: the scratch baseline replays it."""
    from understudy.algorithms.teachers import teacher_config_from
    from understudy.platform.config import teacher_settings

    cfg = parse_config({**TEACH, "preset": "atari"})
    rllib = teacher_config_from(teacher_settings(cfg), game="Pong", seed=3, env_steps=10_000, record=None)
    assert rllib.lr == [[0, 2.5e-4], [10_000, 0.0]]  # annealed over the budget
    assert (rllib.train_batch_size_per_learner, rllib.minibatch_size, rllib.num_epochs) == (1024, 256, 4)
    assert rllib.num_envs_per_env_runner == 8 and rllib.use_kl_loss is False
    assert rllib.env_config["reward"] == "sign"


@pytest.mark.parametrize("algorithm", ["bc", "dt"])
def test_controls_of_in_context_learning_need_an_imitator_that_reads_across_episodes(algorithm):
    """context_reset, reward_blind and warmup change what the imitator reads across episodes:
    with an imitator of one episode the config is refused, naming the agents and the algorithm."""
    base = {"kind": "pipeline", "teach": TEACH, "distill": {"game": "Pong", "algorithm": algorithm},
            "evaluate": {"games": ["Pong"], "agents": ["imitator", "context_reset", "warmup"]}}
    msg = error_of(base)
    assert "context_reset, warmup" in msg and f"'{algorithm}'" in msg and "evaluate.agents" in msg
    experiment = {"kind": "experiment", "name": "x", "teach": TEACH, "distill": {"algorithm": algorithm},
                  "evaluate": {"games": ["Pong"], "agents": ["reward_blind"]}}
    assert "reward_blind" in error_of(experiment) and f"'{algorithm}'" in error_of(experiment)
    for ok in ("ad", "ad_gru"):
        cfg = parse_config({**base, "distill": {"game": "Pong", "algorithm": ok}})
        assert cfg.evaluate.agents == ["imitator", "context_reset", "warmup"] and cfg.evaluate.warmup_episodes == 4


def test_every_agent_kind_is_a_valid_evaluate_agent():
    from typing import get_args

    from understudy.platform.config import EvaluateConfig
    from understudy.platform.players import AGENT_KINDS

    assert set(get_args(get_args(EvaluateConfig.model_fields["agents"].annotation)[0])) == set(AGENT_KINDS)
    evaluate = {"kind": "evaluate", "imitator": "d", "teacher": "t", "games": ["Pong"]}
    assert "warmup_episodes" in error_of({**evaluate, "warmup_episodes": 0})
    assert "'rewardblind'" in error_of({**evaluate, "agents": ["rewardblind"]})


def test_a_task_family_on_minatar_frames_needs_the_minatar_encoder():
    from understudy.platform.config import DistillConfig

    columns = "MinAtar/SpaceInvaders-columns"
    assert DistillConfig(teacher="t", game=columns, algorithm="ad", model={"cnn": "minatar", "stack": 1})
    with pytest.raises(ValueError, match="'small' reads 84x84 frames; MinAtar/SpaceInvaders-columns is "
                                         "minatar_columns, of 10x10x10 observations: cnn: minatar"):
        DistillConfig(teacher="t", game=columns, algorithm="ad", model={"cnn": "small", "stack": 1})
    with pytest.raises(ValueError, match=r"mix observation shapes \(MinAtar/SpaceInvaders-columns \(minatar_columns\)"):
        DistillConfig(teacher="t", games=[columns, "DarkRoom"], algorithm="ad", model={"cnn": "minatar", "stack": 1})


@pytest.mark.parametrize("game,encoder", [("Pong", "small"), ("MinAtar/Breakout", "minatar"), ("DarkRoom", "grid"),
                                          ("MinAtar/SpaceInvaders-columns", "minatar")])
def test_a_model_that_names_no_encoder_reads_with_its_family_s(game, encoder):
    """`model.cnn` left out is the encoder the games' family names (EnvFamily.encoder), recorded
    in the config; a teacher's encoder must read the family's observations, and is named."""
    from understudy.platform.config import DistillConfig

    for algorithm in ("bc", "ad"):
        assert DistillConfig(teacher="t", game=game, algorithm=algorithm).model.cnn == encoder
    assert "cnn: minatar" in error_of({**TEACH, "games": ["MinAtar/Breakout"]})
    assert "Pong is ale, of 84x84 frames: cnn: small" in error_of({**TEACH, "cnn": "minatar"})
