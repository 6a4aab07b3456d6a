"""The column-finding learner (algorithms/thompson_source.py): its belief moves only with the
returns it is paid, its posterior is the closed form's, and on the real game its histories rise
from a random aim's return towards the task-aware player's, recorded in the standard schema."""
import tempfile

import numpy as np
import pytest

from understudy.algorithms import sources
from understudy.algorithms.thompson_source import ThompsonColumnsPlayer, ThompsonConfig, thompson_histories
from understudy.envs import minatar_columns as mc
from understudy.histories import shards
from understudy.histories.shards import read_run_metadata, verify_run
from understudy.platform.config import ConfigError, parse_config

TASKS = mc.task_goals("train_v2")[:8]


def player(n=1, seed=0, **config):
    config = ThompsonConfig(**{"episodes": 200, **config})
    return ThompsonColumnsPlayer(n, config, [np.random.default_rng([seed, i]) for i in range(n)])


def test_returns_that_pay_three_columns_draw_the_aim_to_them():
    paying = {2, 5, 7}
    p = player()
    for episode in range(60):
        p.episode_ended(0, episode, 4.0 * len(paying & set(p.history[0][-1])))
    assert sum(set(a) == paying for a in p.history[0][-10:]) >= 8  # Thompson sampling still explores a little
    assert sum(set(a) == paying for a in p.history[0][:10]) <= 2


def test_without_rewards_the_aim_never_settles():
    p = player()
    for episode in range(40):
        p.episode_ended(0, episode, 0.0)
    assert len({tuple(a) for a in p.history[0][-20:]}) > 5  # still sampling widely: nothing was learned


def test_the_posterior_is_bayesian_linear_regression_in_closed_form():
    p = player(prior_mean=0.5, prior_std=2.0, return_noise_std=1.5)
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for episode in range(12):
        x = p.aims[0].astype(float)
        y = float(rng.normal(3.0, 2.0))
        xs.append(x), ys.append(y)
        p.episode_ended(0, episode, y)
    X, Y = np.array(xs), np.array(ys)
    precision = np.eye(10) / 2.0 ** 2 + X.T @ X / 1.5 ** 2
    mean = np.linalg.solve(precision, np.full(10, 0.5 / 2.0 ** 2) + X.T @ Y / 1.5 ** 2)
    got_mean, got_cov = p.posterior(0)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-10)
    np.testing.assert_allclose(got_cov, np.linalg.inv(precision), rtol=1e-10)


def test_bad_settings_name_the_field():
    for bad, field in [({"prior_std": 0}, "prior_std"), ({"return_noise_std": -1}, "return_noise_std"),
                       ({"action_noise": 1.5}, "action_noise"), ({"episodes": 0}, "episodes")]:
        with pytest.raises(ValueError, match=field):
            ThompsonConfig(**bad)


@pytest.fixture(scope="module")
def recorded():
    root = tempfile.mkdtemp()
    config = ThompsonConfig(episodes=30, action_noise=0.05)
    return root, config, thompson_histories(TASKS, config, seed=4, root=root, session="t", progress=None,
                                            goal_split="train_v2")


def test_histories_rise_from_a_random_aim_to_near_the_task_aware_player(recorded):
    _, _, summaries = recorded
    returns = np.array([s["returns"] for s in summaries])
    first, last = returns[:, :5].mean(), returns[:, -5:].mean()
    optimum = np.mean([mc.optimum(t) for t in TASKS])
    assert last - first > 3.0 and last > 0.7 * optimum, (first, last, optimum)
    overlap = lambda s, aim: len(set(aim) & set(s["goal"]))  # noqa: E731
    assert np.mean([overlap(s, s["aims"][-1]) for s in summaries]) > np.mean([overlap(s, s["aims"][0])
                                                                             for s in summaries])


def test_recorded_in_the_standard_schema_with_aims_and_constant_noise(recorded):
    root, config, summaries = recorded
    for s in summaries:
        assert verify_run(root, s["run_id"]) == []
        meta = read_run_metadata(root, s["run_id"])
        assert meta["algorithm"] == "thompson" and meta["goal"] == s["goal"]
        assert meta["goal_split"] == "train_v2" and meta["hyperparameters"]["action_noise"] == 0.05
        assert meta["aims"] == s["aims"] and len(meta["aims"]) == config.episodes
        assert all(len(a) == mc.K and len(set(a)) == mc.K for a in meta["aims"])
    table = shards.open_run(root, summaries[0]["run_id"]).to_table().sort_by(
        [("episode_index", "ascending"), ("step", "ascending")])
    episode = table["episode_index"].to_numpy()
    assert np.array_equal(table["policy_version"].to_numpy(), episode)
    assert np.array_equal(np.unique(episode), np.arange(config.episodes))
    assert set(table["epsilon"].to_numpy().tolist()) == {np.float32(0.05)}
    rewards = table["reward"].to_numpy()
    assert [float(rewards[episode == e].sum()) for e in range(config.episodes)] == summaries[0]["returns"]
    frames = np.frombuffer(table["frame"].combine_chunks().buffers()[1], np.uint8).reshape(
        -1, *shards.frame_shape_of(table.schema))
    assert (frames[..., mc.REVEAL_CHANNEL] == 0).all()  # the task is in no frame
    # Each step's action is the scripted player's, aimed at that episode's aim (but for the 5% noise).
    aims = mc.paying_mask(np.array(summaries[0]["aims"])[episode])
    agree = np.mean(table["action"].to_numpy() == mc.scripted_actions(frames, aims))
    assert agree > 0.9, agree


def test_same_seed_same_history_other_seed_another(tmp_path):
    config = ThompsonConfig(episodes=4)
    a, b, c = (thompson_histories(TASKS[:3], config, seed, str(tmp_path / name), "s", progress=None)
               for name, seed in [("a", 1), ("b", 1), ("c", 2)])
    assert [s["aims"] for s in a] == [s["aims"] for s in b] and [s["returns"] for s in a] == [s["returns"] for s in b]
    assert [s["aims"] for s in a] != [s["aims"] for s in c]


def test_registered_and_validated_as_a_teach_stage():
    source = sources.local_source("thompson")
    assert source.block == "thompson" and source.families == ("minatar_columns",) and source.from_scratch is None
    cfg = parse_config({"kind": "teach", "algorithm": "thompson", "games": [mc.GAME], "env_steps": 3000,
                        "thompson": {"goal_split": "train_v2", "action_noise": 0.1}})
    assert cfg.tasks_per_game == 70 and cfg.source_block.action_noise == 0.1
    with pytest.raises(ConfigError, match="minatar_columns"):
        parse_config({"kind": "teach", "algorithm": "thompson", "games": ["DarkRoom"], "env_steps": 100})
    with pytest.raises(ConfigError, match="thompson.goal_split"):
        parse_config({"kind": "teach", "algorithm": "thompson", "games": [mc.GAME], "env_steps": 3000,
                      "thompson": {"goal_split": "nope"}})
    with pytest.raises(ValueError, match="minatar_columns only"):
        thompson_histories(TASKS, ThompsonConfig(episodes=1), 0, "/tmp/x", game="DarkRoom")

