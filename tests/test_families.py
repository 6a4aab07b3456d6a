"""The env families (ALE, MinAtar, Dark Room) behind one interface, and MinAtar's one
observation space for all five games. Real ale-py and minatar games, tiny scale."""
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from understudy.envs import families, minatar
from understudy.envs.families import ALE, DARKROOM, MINATAR, family_of


@pytest.mark.parametrize("name,family,canonical", [
    ("DarkRoom", DARKROOM, "DarkRoom"), ("dark_room", DARKROOM, "DarkRoom"),
    ("MinAtar/breakout", MINATAR, "MinAtar/Breakout"), ("minatar/space_invaders", MINATAR, "MinAtar/SpaceInvaders"),
    ("breakout", ALE, "Breakout"), ("SpaceInvaders", ALE, "SpaceInvaders")])
def test_every_game_belongs_to_one_family_under_one_name(name, family, canonical):
    assert family_of(name) is family
    assert families.canonical_game(name) == canonical and canonical in family.games()


def test_unknown_names_get_the_closest_valid_ones():
    with pytest.raises(ValueError, match="MinAtar/SpaceInvaders"):
        families.canonical_game("MinAtar/SpaceInvader")
    with pytest.raises(ValueError, match="Breakout"):
        families.canonical_game("Breakot")


@pytest.mark.parametrize("family,game", [(ALE, "Breakout"), (MINATAR, "MinAtar/SpaceInvaders"), (DARKROOM, "DarkRoom")])
def test_each_family_makes_vector_envs_with_its_frames_and_raw_scores(family, game):
    env = family.make_vector_env(game, 4, same_step_reset=True)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    total = np.zeros(4)
    for _ in range(300):
        obs, reward, terminated, truncated, _ = env.step(rng.integers(family.num_actions(game), size=4))
        total += reward
    env.close()
    assert obs.dtype == np.uint8 and obs.shape[0] == 4
    assert obs.shape[1:1 + len(family.frame_shape)] == family.frame_shape
    assert family.num_actions(game) <= family.shared_actions
    if family is not DARKROOM:
        random, best = family.reference(game)
        assert best > random
    if family is MINATAR:  # Space Invaders scores 1 per alien: raw, positive
        assert total.sum() > 0


def test_reference_scores_per_family():
    assert ALE.reference("Breakout") == (1.7, 30.5)
    assert MINATAR.reference("MinAtar/Breakout")[0] < MINATAR.reference("MinAtar/Breakout")[1]
    assert DARKROOM.reference("DarkRoom") is None  # per goal: envs.darkroom.optimal_return


# ---- MinAtar's shared observation --------------------------------------------------------------

@pytest.mark.parametrize("game", minatar.GAMES)
def test_every_minatar_channel_maps_into_the_shared_space(game):
    """Each of the game's own channels lights its role's shared channel, alone, at its
    intensity; the game's real states map into (10, 10, 10) uint8."""
    from importlib import import_module

    own = import_module(f"minatar.environments.{minatar._MODULES[game]}").Env().channels
    assert set(own) == set(minatar.CHANNEL_MAP[game])
    for name, c in own.items():
        state = np.zeros((10, 10, len(own)), bool)
        state[2, 3, c] = True
        out = minatar.unify(state, "MinAtar/" + game)
        shared, intensity = minatar.CHANNEL_MAP[game][name]
        assert out.shape == minatar.OBS_SHAPE and out.dtype == np.uint8
        assert out[2, 3, minatar.CHANNELS.index(shared)] == intensity
        assert np.count_nonzero(out) == 1
    env = minatar.MinAtarVectorEnv("MinAtar/" + game, 2)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (2, *minatar.OBS_SHAPE) and obs[..., minatar.CHANNELS.index("self")].any()


def test_shared_channels_keep_what_several_booleans_encoded():
    """Freeway's five speed channels become five intensities of one channel."""
    levels = {minatar.CHANNEL_MAP["Freeway"][f"speed{k}"][1] for k in range(1, 6)}
    assert len(levels) == 5 and {minatar.CHANNEL_MAP["Freeway"][f"speed{k}"][0] for k in range(1, 6)} == {"motion"}
    left, right = (minatar.CHANNEL_MAP["SpaceInvaders"]["alien_left"],
                   minatar.CHANNEL_MAP["SpaceInvaders"]["alien_right"])
    assert left[0] == right[0] == "motion" and left[1] != right[1]


def test_minatar_vector_env_resets_on_the_next_step_as_ale_does():
    env = minatar.MinAtarVectorEnv("MinAtar/Breakout", 1)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(10_000):
        _, _, terminated, truncated, _ = env.step(rng.integers(6, size=1))
        if terminated[0]:
            break
    assert terminated[0]
    obs, reward, terminated, truncated, _ = env.step(np.array([5]))  # ignored: a new episode starts
    assert reward[0] == 0 and not terminated[0] and not truncated[0]
    assert obs[0, 1:4, :, minatar.CHANNELS.index("prize")].all()  # three fresh rows of bricks


def test_minatar_episodes_can_be_capped():
    env = minatar.MinAtarVectorEnv("MinAtar/Freeway", 2, max_episode_steps=50)
    env.reset(seed=0)
    truncated_at = None
    for t in range(1, 60):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.int64))
        if truncated.any():
            truncated_at = t
            break
    assert truncated_at == 50


@pytest.mark.parametrize("game,copies,rows", [("Breakout", 2, 2), ("MinAtar/Breakout", 3, 3), ("DarkRoom", 2, None)])
def test_play_envs_come_from_the_family_and_models_see_its_observations(game, copies, rows):
    """Evaluation's env for any family (Dark Room: `copies` rooms per goal of the split), and
    what a model of k frames reads of it: a stack's newest k frames, MinAtar's whole grid."""
    from understudy.envs.darkroom import darkroom_goals

    env = families.make_play_env(game, copies, protocol={}, max_episode_steps=50, goal_split="heldout")
    obs, _ = env.reset(seed=0)
    env.close()
    assert len(obs) == (rows or copies * len(darkroom_goals("heldout")))
    family = family_of(game)
    seen = family.model_obs(obs, 1)
    if family is MINATAR:
        assert not family.stacked and seen.shape[1:] == minatar.OBS_SHAPE
    else:
        assert family.stacked and seen.shape[1:] == (*family.frame_shape, 1)
        assert (seen[..., 0] == obs[..., -1]).all()


def test_stages_ask_the_family_not_the_game_name():
    """No stage, evaluation or report module tests a game's name for Dark Room: what differs
    (goals as tasks, their optima, fixed-length episodes) is the family's to say."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("platform", "algorithms", "histories"):
        for path in (root / folder).glob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"game\s*[!=]=\s*DARKROOM|DARKROOM\s+(not\s+)?in\b|game\s*==\s*[\"']DarkRoom", line):
                    offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, offenders
    assert DARKROOM.per_goal and not ALE.per_goal and not MINATAR.per_goal
    assert DARKROOM.episode_steps == 20 and DARKROOM.optimum(DARKROOM.goals("heldout")[0]) > 0


def test_each_family_names_an_encoder_that_reads_its_observations():
    """EnvFamily.encoder is what a model reads the family with when a config names none: one of
    the encoders declared once in algorithms/encoders.py, reading the family's frames."""
    from understudy.algorithms import encoders

    for family in families.registered():
        assert encoders.reads(family.encoder, family.frame_shape), family.name
        assert family.encoder in encoders.readers(family.frame_shape)
    assert encoders.readers(MINATAR.frame_shape) == ["minatar"]
    assert set(encoders.readers(ALE.frame_shape)) == {"nature", "small", "grid"}


# ---- the registry, and a family from outside the package ----------------------------------------

PLUGIN = Path(__file__).resolve().parent / "plugin_pkg"
CATCH_PLACE = "understudy_plugin_example.family:CATCH"


def test_families_are_asked_the_more_specific_first_and_ale_last():
    order = [f.name for f in families.registered()]
    assert order[:3] == ["minatar_columns", "minatar", "darkroom"] and order[-1] == "ale"
    # MinAtar claims every name with its prefix: a misspelt one gets MinAtar's names, not ALE's
    assert family_of("MinAtar/Breakot") is MINATAR and family_of("Breakot") is ALE
    with pytest.raises(ValueError, match="already registered"):
        families.register(dataclasses.replace(DARKROOM, games=lambda: ["Other"]))
    with pytest.raises(ValueError, match="'ale' is already registered"):  # the catch-all's name too
        families.register(dataclasses.replace(DARKROOM, name="ale"))
    with pytest.raises(ValueError, match="already the catch-all"):
        families.register(dataclasses.replace(DARKROOM, name="other"), catch_all=True)
    assert families.register(DARKROOM) is DARKROOM  # the same family again: nothing changes
    assert [f.name for f in families.registered()] == order


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """tests/plugin_pkg importable and declared by an installed distribution's entry point, as
    pip would install it, with the registry and the imported modules restored afterwards."""
    dist = tmp_path / "understudy_plugin_example-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: understudy-plugin-example\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[{families.ENTRY_POINTS}]\ncatch = {CATCH_PLACE}\n")
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(families, "_FAMILIES", dict(families._FAMILIES))
    monkeypatch.setattr(families, "_PLUGINS_LOADED", [])
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("understudy_plugin_example")]:
        del sys.modules[name]


def test_a_family_from_an_installed_package_is_found_and_validated_like_a_builtin(outside):
    from understudy.platform.config import ConfigError, parse_config

    catch = family_of("catch")
    assert catch.name == "catch" and catch.protocol == {"catch.size": 10}
    assert families.canonical_game("CATCH") == "Catch" and catch.frame_shape == (10, 10, 10)
    assert [f.name for f in families.registered()][-2:] == ["catch", "ale"]  # asked before the catch-all
    teach = parse_config({"kind": "teach", "algorithm": "ppo", "games": ["catch"], "env_steps": 512, "cnn": "minatar"})
    assert teach.games == ["Catch"]
    with pytest.raises(ConfigError, match="Catch is catch, of 10x10x10 observations: cnn: minatar"):
        parse_config({"kind": "teach", "algorithm": "ppo", "games": ["Catch"], "env_steps": 512})
    distill = parse_config({"kind": "distill", "teacher": "t", "game": "Catch", "algorithm": "bc"})
    assert distill.model.cnn == "minatar"  # the family's encoder
    evaluate = parse_config({"kind": "evaluate", "teacher": "t", "imitator": "i", "games": ["Catch"]})
    assert evaluate.games == ["Catch"]


def test_a_family_named_in_the_environment_by_its_place(outside, monkeypatch):
    (outside / "understudy_plugin_example-0.1.0.dist-info" / "entry_points.txt").unlink()
    monkeypatch.setenv(families.PLACES, CATCH_PLACE)
    assert family_of("Catch").name == "catch"
    with pytest.raises(ValueError, match="has no attribute 'NOPE'"):
        families.load("understudy_plugin_example.family:NOPE")
    with pytest.raises(ValueError, match="Catch is not an EnvFamily"):
        families.load("understudy_plugin_example.family:Catch")
    with pytest.raises(ValueError, match="module 'no_such_module' cannot be imported"):
        families.load("no_such_module:X")
    monkeypatch.setattr(families, "_PLUGINS_LOADED", [])
    monkeypatch.setenv(families.PLACES, f"{CATCH_PLACE},understudy_plugin_example.family:Catch")
    for _ in range(2):  # a broken place is said at every lookup, not only the first
        with pytest.raises(ValueError, match="Catch is not an EnvFamily"):
            family_of("Pong")


def test_a_gymnasium_family_plays_as_every_family_does(outside):
    """The Gymnasium adapter: raw scores, the family's frames, a new episode on the step after
    one ends (its action ignored), or at once for evaluation's envs."""
    catch = family_of("Catch")
    env = catch.make_vector_env("Catch", 3)
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 10, 10, 10) and obs.dtype == np.uint8 and list(info["env_id"]) == [0, 1, 2]
    for _ in range(9):
        env.send(np.ones(3, np.int64))
        obs, reward, terminated, truncated, _ = env.recv()
    assert terminated.all() and set(reward) <= {-1.0, 1.0}
    obs, reward, terminated, _, _ = env.step(np.zeros(3, np.int64))  # ignored: new episodes start
    assert not terminated.any() and not reward.any() and obs[:, 0, :, 1].any(-1).all()  # the ball on the top row
    returns = families.random_returns(families.make_play_env("Catch", 8), 200)
    random, best = catch.reference("Catch")
    assert len(returns) == 200 and random - 0.2 < np.mean(returns) < random + 0.2 and best == 1.0
