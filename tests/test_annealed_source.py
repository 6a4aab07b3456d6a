"""AD-epsilon histories (algorithms/annealed_source.py): an expert played with annealed uniform
noise, one history per task, recorded through the shard path. Real envs (Dark Room, MinAtar
Space Invaders with paying columns), tiny scale: each family is recorded once per module."""
import dataclasses
import functools

import numpy as np
import pyarrow.compute as pc
import pytest

from understudy.algorithms import annealed_source as source
from understudy.algorithms.annealed_source import EXPERTS, AnnealConfig, annealed_histories
from understudy.envs import darkroom
from understudy.envs import minatar_columns as mc
from understudy.envs.families import DARKROOM, MINATAR_COLUMNS
from understudy.histories import shards
from understudy.histories.data import index_runs, load_history, task_optimum

DARKROOM_GOALS = np.array([[0, 0], [8, 8], [4, 4], [6, 3], [1, 7], [4, 0]])
COLUMNS_TASKS = np.array([[0, 1, 2], [2, 5, 8], [3, 6, 7], [0, 4, 9]])
SETUPS = {
    # family name: (game, tasks, config, shard_bytes: small, so every history spans several shards)
    "darkroom": ("DarkRoom", DARKROOM_GOALS, AnnealConfig(episodes=30, anneal_episodes=15),
                 100 * darkroom.FRAME_SIZE ** 2),
    "minatar_columns": (mc.GAME, COLUMNS_TASKS, AnnealConfig(episodes=24, anneal_episodes=12), 500 * 1000),
}
FAMILY_NAMES = list(SETUPS)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def recorded(request, tmp_path_factory):
    """(family name, root, summaries, config, tasks) of one recording per family."""
    name = request.param
    root = str(tmp_path_factory.mktemp(f"annealed-{name}"))
    game, tasks, config, shard_bytes = SETUPS[name]
    summaries = annealed_histories(game, tasks, config, seed=3, root=root, session="test",
                                   shard_bytes=shard_bytes, progress=None)
    return name, root, summaries, config, tasks


def _table(root, run_id):
    return shards.open_run(root, run_id).to_table().sort_by([("episode_index", "ascending"), ("step", "ascending")])


def _expert_on_frames(name, frames, task):
    """The family's expert, choosing from recorded frames (as observations) for one task."""
    obs = frames[..., None] if name == "darkroom" else frames
    return EXPERTS[name](obs, None, np.repeat(np.asarray(task)[None], len(frames), axis=0))


# ---- the shard contract --------------------------------------------------------------------------

def test_shards_verify_and_read_back_in_training_order(recorded):
    name, root, summaries, config, tasks = recorded
    run_ids = [s["run_id"] for s in summaries]
    assert len(set(run_ids)) == len(tasks)
    for run_id in run_ids:
        assert shards.verify_run(root, run_id) == []
        assert len(shards.read_catalog(root, run_id)) >= 3  # several shards, so order across them counts
    for history, summary in zip(index_runs(root, run_ids), summaries):
        assert [e.episode_index for e in history.episodes] == list(range(config.episodes))
        assert [e.last_policy_version for e in history.episodes] == list(range(config.episodes))
        assert [e.ret for e in history.episodes] == summary["returns"]
        assert [e.steps for e in history.episodes] == summary["steps"]
    # The loader's view: rows in training order, per-episode rewards summing to the returns.
    for run_id, summary in zip(run_ids, summaries):
        h = load_history(root, [run_id])
        assert h.num_episodes == config.episodes and len(h) == sum(summary["steps"])
        assert np.all(np.diff(h.policy_version) >= 0)
        assert np.array_equal(h.policy_version, np.repeat(np.arange(config.episodes), summary["steps"]))
        sums = np.bincount(h.episode_id, weights=h.rewards, minlength=config.episodes)
        assert np.allclose(sums, summary["returns"])


def test_every_row_is_in_the_standard_schema(recorded):
    name, root, summaries, config, tasks = recorded
    family = DARKROOM if name == "darkroom" else MINATAR_COLUMNS
    for summary in summaries:
        table = _table(root, summary["run_id"])
        assert table.schema.equals(shards.shard_schema(family.frame_shape), check_metadata=False)
        assert set(table["algorithm"].to_pylist()) == {"annealed"}
        assert set(table["seed"].to_pylist()) == {3}
        assert np.array_equal(table["global_step"].to_numpy(), np.arange(table.num_rows))
        assert table["action"].to_numpy().max() < family.num_actions(family.games()[0])
        ends = np.flatnonzero(np.diff(table["episode_index"].to_numpy())) if table.num_rows else []
        last_rows = np.r_[ends, table.num_rows - 1]
        done = pc.or_(table["terminated"], table["truncated"]).to_numpy(zero_copy_only=False)
        assert np.array_equal(np.flatnonzero(done), last_rows)  # each episode ends exactly once, at its end


# ---- the noise schedule ---------------------------------------------------------------------------

def test_schedule_formula():
    c = AnnealConfig(episodes=60, anneal_episodes=40, noise_start=1.0, noise_floor=0.05)
    assert c.epsilon(0) == 1.0
    assert c.epsilon(20) == pytest.approx(1.0 + (0.05 - 1.0) * 0.5)
    assert c.epsilon(40) == pytest.approx(0.05) and c.epsilon(59) == pytest.approx(0.05)
    assert np.allclose(c.epsilon(np.arange(60)), [1.0 + (0.05 - 1.0) * min(1, e / 40) for e in range(60)])
    assert AnnealConfig(anneal_episodes=0, noise_floor=0.2).epsilon(0) == pytest.approx(0.2)
    for bad in ({"episodes": 0}, {"anneal_episodes": -1}, {"noise_start": 1.5}, {"noise_floor": -0.1},
                {"schedule": "cosine"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AnnealConfig(**bad)


def test_epsilon_column_follows_the_schedule_episode_by_episode(recorded):
    name, root, summaries, config, tasks = recorded
    for summary in summaries:
        table = _table(root, summary["run_id"])
        episode = table["episode_index"].to_numpy()
        assert np.array_equal(table["policy_version"].to_numpy(), episode)
        expected = np.float32(config.epsilon(episode))
        assert np.array_equal(table["epsilon"].to_numpy(), expected)
    assert config.epsilon(0) == 1.0 and config.epsilon(config.episodes - 1) == 0.0


def test_floor_zero_last_episodes_are_the_experts_first_ones_are_not(recorded):
    name, root, summaries, config, tasks = recorded
    early_agree = []
    for summary, task in zip(summaries, tasks):
        table = _table(root, summary["run_id"])
        episode = table["episode_index"].to_numpy()
        frames = shards.frame_shape_of(table.schema)
        frames = np.frombuffer(table["frame"].combine_chunks().buffers()[1], np.uint8).reshape(-1, *frames)
        actions = table["action"].to_numpy()
        late = episode >= config.anneal_episodes  # eps 0 from here on
        assert late.sum() > 0
        assert np.array_equal(actions[late], _expert_on_frames(name, frames[late], task))
        early = episode == 0  # eps 1: uniform random actions, the expert's only by chance
        early_agree.append(np.mean(actions[early] == _expert_on_frames(name, frames[early], task)))
    assert np.mean(early_agree) < 0.5


# ---- it improves ---------------------------------------------------------------------------------

def test_returns_rise_from_noise_to_the_expert(recorded):
    name, root, summaries, config, tasks = recorded
    curves = np.array([s["returns"] for s in summaries])
    first, last = curves[:, :10].mean(), curves[:, -10:].mean()
    assert last > first + 1.0, (first, last)
    if name == "darkroom":  # the expert is optimal and the room deterministic: exactly the optimum
        assert np.allclose(curves[:, -10:], [[darkroom.optimal_return(g)] * 10 for g in tasks])
        assert curves[:, 0].mean() < 0.3 * np.mean([darkroom.optimal_return(g) for g in tasks])
    else:  # the scripted reference's measured returns (envs/data/minatar_columns_reference.csv)
        random_ref, scripted_ref = np.array([mc.reference_returns(t) for t in tasks]).T
        assert last >= 0.8 * scripted_ref.mean(), (last, scripted_ref.mean())
        assert curves[:, 0].mean() < random_ref.mean() + 1.5, (curves[:, 0], random_ref)


def test_darkroom_expert_is_optimal_on_every_goal():
    goals = darkroom.darkroom_goals("all")
    env = darkroom.DarkRoomFrames(goals)
    obs, _ = env.reset()
    total = np.zeros(len(goals))
    for _ in range(darkroom.EPISODE_STEPS):
        obs, reward, *_ = env.step(EXPERTS["darkroom"](obs, env, goals))
        total += reward
    assert np.array_equal(total, [darkroom.optimal_return(g) for g in goals])


# ---- the task stays hidden ----------------------------------------------------------------------

def test_minatar_columns_frames_carry_no_task_even_from_a_revealing_env(tmp_path, monkeypatch):
    # The env shows the task (reveal_task, as a teacher may be shown it): the frames recorded
    # must still be the blind view, the family's newest_frame.
    revealing = dataclasses.replace(MINATAR_COLUMNS, make_vector_env=functools.partial(mc.make_vector_env,
                                                                                       reveal_task=True))
    monkeypatch.setattr(source, "per_task_family", lambda game: revealing)
    tasks = COLUMNS_TASKS[:2]
    summaries = annealed_histories(mc.GAME, tasks, AnnealConfig(episodes=3, anneal_episodes=2),
                                   seed=0, root=str(tmp_path), session="t", progress=None)
    for summary in summaries:
        table = _table(str(tmp_path), summary["run_id"])
        frames = np.frombuffer(table["frame"].combine_chunks().buffers()[1], np.uint8).reshape(-1, 10, 10, 10)
        assert frames[..., mc.REVEAL_CHANNEL].max() == 0
        assert frames[:, 9, :, mc._SELF].max() == 255  # the cannon is there: frames are real


@pytest.mark.parametrize("recorded", ["minatar_columns"], indirect=True)
def test_recorded_minatar_columns_prize_channel_is_zero(recorded):
    name, root, summaries, config, tasks = recorded
    for summary in summaries:
        table = _table(root, summary["run_id"])
        frames = np.frombuffer(table["frame"].combine_chunks().buffers()[1], np.uint8).reshape(-1, 10, 10, 10)
        assert frames[..., mc.REVEAL_CHANNEL].max() == 0


# ---- metadata -------------------------------------------------------------------------------------

def test_run_json_holds_goal_expert_and_config(recorded):
    name, root, summaries, config, tasks = recorded
    game = SETUPS[name][0]
    for summary, task, history in zip(summaries, tasks, index_runs(root, [s["run_id"] for s in summaries])):
        meta = shards.read_run_metadata(root, summary["run_id"])
        assert meta["game"] == game and meta["algorithm"] == "annealed" and meta["seed"] == 3
        assert meta["goal"] == task.tolist() == summary["goal"]
        assert meta["expert"] == EXPERTS[name].__name__
        assert meta["hyperparameters"] == dataclasses.asdict(config)
        assert tuple(meta["frame_shape"]) == shards.run_frame_shape(root, summary["run_id"])
        assert task_optimum(history) == pytest.approx(meta["optimal_return"])  # the loader's return cap reads `goal`


def test_only_per_task_families_and_no_overwrite(tmp_path):
    for game in ("Breakout", "MinAtar/Breakout"):
        with pytest.raises(ValueError, match="darkroom.*minatar_columns"):
            annealed_histories(game, np.array([[1, 2]]), AnnealConfig(episodes=1), 0, str(tmp_path), "x")
    annealed_histories("DarkRoom", [[1, 1]], AnnealConfig(episodes=1), 0, str(tmp_path), "x", progress=None)
    with pytest.raises(FileExistsError):
        annealed_histories("DarkRoom", [[1, 1]], AnnealConfig(episodes=1), 0, str(tmp_path), "x", progress=None)
    with pytest.raises(ValueError, match="repeat"):
        annealed_histories("DarkRoom", [[2, 2], [2, 2]], AnnealConfig(episodes=1), 0, str(tmp_path), "y")


# ---- seeds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("game,tasks", [("DarkRoom", DARKROOM_GOALS[:3]), (mc.GAME, COLUMNS_TASKS[:2])])
def test_same_seed_same_shards_other_seed_other_ones(tmp_path, game, tasks):
    config = AnnealConfig(episodes=6, anneal_episodes=4, noise_floor=0.05)

    def record(seed, where):
        root = str(tmp_path / where)
        summaries = annealed_histories(game, tasks, config, seed, root, "s", progress=None)
        return [_table(root, s["run_id"]) for s in summaries]

    a, b, c = record(0, "a"), record(0, "b"), record(1, "c")
    for x, y in zip(a, b):
        assert x.equals(y)
    for x, z in zip(a, c):
        assert not np.array_equal(x["action"].to_numpy()[:50], z["action"].to_numpy()[:50])


def test_a_darkroom_history_depends_only_on_its_goal_and_seed(tmp_path):
    config = AnnealConfig(episodes=6, anneal_episodes=4)
    alone = annealed_histories("DarkRoom", DARKROOM_GOALS[2:3], config, 5, str(tmp_path / "a"), "s", progress=None)
    among = annealed_histories("DarkRoom", DARKROOM_GOALS, config, 5, str(tmp_path / "b"), "s", progress=None)
    assert _table(str(tmp_path / "a"), alone[0]["run_id"]).equals(_table(str(tmp_path / "b"), among[2]["run_id"]))
