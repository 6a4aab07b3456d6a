"""Dark Room: dynamics, rewards, optimal returns, frames, goal splits, and the Q-learning source
whose learning histories go through the shard path."""
import itertools

import numpy as np
import pytest

from understudy.algorithms import darkroom_source as source
from understudy.envs import darkroom
from understudy.envs.darkroom import (
    EPISODE_STEPS,
    GRID,
    DarkRoomEnv,
    DarkRoomVectorEnv,
    cell_index_of,
    darkroom_goals,
    frame_of,
    optimal_return,
    position_of,
)
from understudy.histories import shards
from understudy.histories.data import index_runs, load_history

STAY, UP, DOWN, LEFT, RIGHT = range(5)


def play(goal, actions):
    """Rewards of one episode in one room, actions given per step."""
    env = DarkRoomVectorEnv(np.array([goal]))
    env.reset()
    return [float(env.step(np.array([a]))[1][0]) for a in actions]


# ---- dynamics and rewards -------------------------------------------------------------------

def test_start_moves_and_walls_clip():
    env = DarkRoomVectorEnv(np.array([[0, 0], [8, 8], [3, 3]]))
    assert env.reset().tolist() == [[4, 4]] * 3
    pos, *_ = env.step(np.array([UP, DOWN, STAY]))
    assert pos.tolist() == [[4, 3], [4, 5], [4, 4]]
    pos, *_ = env.step(np.array([LEFT, RIGHT, STAY]))
    assert pos.tolist() == [[3, 3], [5, 5], [4, 4]]
    for _ in range(6):  # 6 more moves left/up from x = 3 would leave the grid: clipped at 0
        pos, *_ = env.step(np.array([LEFT, UP, RIGHT]))
    assert pos.tolist() == [[0, 3], [5, 0], [8, 4]]


def test_episode_is_exactly_20_steps_truncated_never_terminated():
    env = DarkRoomVectorEnv(np.array([[1, 1], [4, 4]]))
    env.reset()
    for t in range(EPISODE_STEPS):
        _, _, terminated, truncated = env.step(np.array([RIGHT, STAY]))
        assert not terminated.any()
        assert truncated.tolist() == [t == EPISODE_STEPS - 1] * 2
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([STAY, STAY]))
    env.reset()  # a new episode starts back in the centre
    assert env.step(np.array([STAY, STAY]))[0].tolist() == [[4, 4], [4, 4]]


def test_reward_on_every_step_spent_on_the_goal():
    # Goal two cells right: reached on the 2nd step, then staying earns on every later step.
    rewards = play((6, 4), [RIGHT, RIGHT] + [STAY] * 18)
    assert rewards == [0.0, 1.0] + [1.0] * 18
    # Walking past the goal stops the reward; walking into the wall next to it keeps it.
    assert play((6, 4), [RIGHT, RIGHT, RIGHT] + [STAY] * 17)[:3] == [0.0, 1.0, 0.0]
    assert sum(play((8, 4), [RIGHT] * 20)) == 20 - 4 + 1
    assert sum(play((4, 4), [STAY] * 20)) == 20  # the start cell earns on every step


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="goals"):
        DarkRoomVectorEnv(np.array([[9, 0]]))
    env = DarkRoomVectorEnv(np.array([[0, 0]]))
    env.reset()
    with pytest.raises(ValueError, match="actions"):
        env.step(np.array([5]))


def test_gymnasium_wrapper():
    env = DarkRoomEnv(goal=(5, 4))
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [4, 4] and env.observation_space.contains(obs)
    assert env.action_space.n == 5 and info["goal"] == (5, 4)
    obs, reward, terminated, truncated, _ = env.step(RIGHT)
    assert obs.tolist() == [5, 4] and reward == 1.0 and not terminated and not truncated
    for _ in range(EPISODE_STEPS - 1):
        *_, truncated, _ = env.step(STAY)
    assert truncated
    obs, info = env.reset(options={"goal": (0, 0)})
    assert info["goal"] == (0, 0) and env.render().shape == (84, 84, 3)


# ---- optimal return -----------------------------------------------------------------------------

def best_return_by_search(goal) -> float:
    """Exact best return by dynamic programming over (step, position): no formula involved."""
    values = np.zeros((GRID, GRID))  # best reward still to come from here, after the last step
    for _ in range(EPISODE_STEPS):
        new = np.full((GRID, GRID), -np.inf)
        for x, y in itertools.product(range(GRID), range(GRID)):
            for dx, dy in darkroom.ACTION_DELTAS:
                nx, ny = min(max(x + dx, 0), GRID - 1), min(max(y + dy, 0), GRID - 1)
                new[x, y] = max(new[x, y], float((nx, ny) == tuple(goal)) + values[nx, ny])
        values = new
    return float(values[darkroom.START])


@pytest.mark.parametrize("goal", [(4, 4), (4, 5), (5, 5), (0, 0), (8, 8), (0, 8), (2, 7), (8, 4)])
def test_optimal_return_matches_search_and_a_greedy_walk(goal):
    assert optimal_return(goal) == best_return_by_search(goal)
    # The shortest walk (x first, then y) then staying achieves it.
    dx, dy = goal[0] - 4, goal[1] - 4
    walk = [RIGHT if dx > 0 else LEFT] * abs(dx) + [DOWN if dy > 0 else UP] * abs(dy)
    assert sum(play(goal, (walk + [STAY] * EPISODE_STEPS)[:EPISODE_STEPS])) == optimal_return(goal)


# ---- frames and goal splits -----------------------------------------------------------------

def test_frames_round_trip_every_cell():
    cells = darkroom_goals("all")
    frames = frame_of(cells)
    assert frames.shape == (81, 84, 84) and frames.dtype == np.uint8
    assert (frames.reshape(81, -1) == 255).sum(axis=1).tolist() == [81] * 81  # one 9x9 block
    assert frames[0, :9, :9].min() == 255 and frames[0, 9:, :].max() == 0
    x, y = 7, 2
    f = frame_of(np.array([[x, y]]))[0]
    assert f[9 * y:9 * y + 9, 9 * x:9 * x + 9].min() == 255 and f.sum() == 81 * 255
    assert position_of(frames).tolist() == cells.tolist()
    assert cell_index_of(frames).tolist() == list(range(81))  # row-major: y * 9 + x
    with pytest.raises(ValueError, match="frames"):
        cell_index_of(np.zeros((1, 84, 84), np.uint8))


def test_the_imitators_grid_encoder_reads_each_cells_coordinates():
    import torch

    from understudy.algorithms.nets import grid_coordinates

    cells = darkroom_goals("all")
    frames = torch.from_numpy(frame_of(cells))[..., None]  # (81, 84, 84, 1)
    expected = torch.from_numpy(cells / 4.0 - 1.0).float()  # x, y in [-1, 1]
    assert torch.allclose(grid_coordinates(frames), expected, atol=1e-6)
    assert torch.allclose(grid_coordinates(frames[:, 4:81:9, 4:81:9]), expected, atol=1e-6)
    stacked = torch.cat([frames, frames], -1)  # a stack of the same frame twice: the same cell
    assert torch.allclose(grid_coordinates(stacked), expected, atol=1e-6)


def test_goal_splits_are_disjoint_cover_the_grid_and_stable():
    train, held, everything = (darkroom_goals(s) for s in ("train", "heldout", "all"))
    assert len(train) == 65 and len(held) == 16 and len(everything) == 81

    def as_set(a):
        return {tuple(c) for c in a.tolist()}

    assert as_set(train).isdisjoint(as_set(held))
    assert as_set(train) | as_set(held) == as_set(everything) == set(itertools.product(range(9), range(9)))
    assert np.array_equal(darkroom_goals("heldout"), held)
    assert as_set(held) == set(darkroom.HELDOUT_GOALS_V1)
    with pytest.raises(ValueError, match="train, heldout, all"):
        darkroom_goals("test")


# ---- the Q-learning source ----------------------------------------------------------------------

GOALS = np.array([[4, 4], [6, 3], [1, 7], [8, 8], [0, 0]])


def test_q_learning_returns_rise_from_random_to_the_optimum_and_planning_is_what_gets_there():
    optimal = np.array([optimal_return(g) for g in GOALS])
    for seed in (0, 1):
        returns = np.stack([ep.returns for ep in source.q_learning(GOALS, source.QLearningConfig(), seed)], 1)
        assert returns.shape == (len(GOALS), 40)
        assert returns[:, 0].mean() <= 0.3 * optimal.mean()  # the first episode only explores
        assert np.all(returns[:, -5:].mean(axis=1) >= 0.95 * optimal), returns[:, -5:]
    # Without the planning sweeps (plain one-step Q-learning) the far corners are not learned
    # within the same 40 episodes.
    plain = source.QLearningConfig(planning_sweeps=0)
    returns = np.stack([ep.returns for ep in source.q_learning(GOALS, plain, 0)], 1)
    assert returns[:, -5:].mean(axis=1).min() < 0.5 * optimal[returns[:, -5:].mean(axis=1).argmin()]


def test_q_learning_config_rejects_bad_values():
    with pytest.raises(ValueError, match="planning_sweeps: -1"):
        source.QLearningConfig(planning_sweeps=-1)
    with pytest.raises(ValueError, match="learning_rate: 0"):
        source.QLearningConfig(learning_rate=0)


def test_histories_do_not_depend_on_the_goals_beside_them():
    config = source.QLearningConfig(episodes=5)
    alone = [ep.actions[0] for ep in source.q_learning(GOALS[1:2], config, seed=3)]
    together = [ep.actions[1] for ep in source.q_learning(GOALS, config, seed=3)]
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_recorded_histories_verify_and_read_back_in_training_order(tmp_path):
    root, episodes = str(tmp_path), 40
    goals = GOALS[:3]
    config = source.QLearningConfig(epsilon_start=0.5, epsilon_end=0.05)  # a schedule to check
    run_ids = source.record_histories(root, goals, episodes=episodes, seed=7, config=config, shard_rows=300)
    assert run_ids == ["darkroom-g44-s7", "darkroom-g63-s7", "darkroom-g17-s7"]
    assert shards.find_runs(root, games=["DarkRoom"], algorithm="qlearning") == sorted(run_ids)
    for goal, run_id in zip(goals, run_ids):
        assert shards.verify_run(root, run_id) == []
        meta = shards.read_run_metadata(root, run_id)
        assert meta["goal"] == goal.tolist() and meta["seed"] == 7 and meta["num_actions"] == 5
        assert meta["protocol"]["env"] == "DarkRoom" and meta["hyperparameters"]["episodes"] == episodes
        assert len(shards.read_catalog(root, run_id)) == 3  # 800 rows in shards of ~300

        table = shards.open_run(root, run_id).to_table()
        assert table.schema.names == shards.SHARD_SCHEMA.names
        assert table.num_rows == episodes * EPISODE_STEPS
        cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in
                ("episode_index", "step", "global_step", "policy_version", "action", "reward",
                 "terminated", "truncated", "lives", "epsilon")}
        assert np.array_equal(cols["global_step"], np.arange(table.num_rows))  # training order
        assert np.array_equal(cols["episode_index"], np.repeat(np.arange(episodes), EPISODE_STEPS))
        assert np.array_equal(cols["step"], np.tile(np.arange(EPISODE_STEPS), episodes))
        assert np.all(np.diff(cols["policy_version"]) >= 0)
        assert np.array_equal(cols["truncated"], cols["step"] == EPISODE_STEPS - 1)
        assert not cols["terminated"].any() and not cols["lives"].any()
        schedule = [config.epsilon(e) for e in range(episodes)]
        assert np.allclose(cols["epsilon"], np.repeat(schedule, EPISODE_STEPS)) and schedule[0] == 0.5
        assert set(table.column("game").unique().to_pylist()) == {"DarkRoom"}
        assert len(table.column("policy_outputs")[0].as_py()) == 5

        # Frames replay the episode: each step's position follows from the one before it.
        frames = np.frombuffer(b"".join(table.column("frame").to_pylist()), np.uint8).reshape(-1, 84, 84)
        pos = position_of(frames).reshape(episodes, EPISODE_STEPS, 2)
        actions = cols["action"].reshape(episodes, EPISODE_STEPS)
        assert np.all(pos[:, 0] == darkroom.START)
        moved = np.clip(pos[:, :-1] + darkroom.ACTION_DELTAS[actions[:, :-1]], 0, GRID - 1)
        assert np.array_equal(moved, pos[:, 1:])
        after = np.clip(pos + darkroom.ACTION_DELTAS[actions], 0, GRID - 1)  # position after each action
        rewards = np.all(after == goal, axis=-1).astype(np.float32).ravel()
        assert np.array_equal(cols["reward"], rewards)
        returns = [e["return"] for e in shards.episode_returns(root, run_id)]
        assert np.allclose(returns, rewards.reshape(episodes, -1).sum(axis=1))

    # The imitators' reader takes Dark Room histories as they are.
    history = load_history(root, run_ids[:1])
    assert len(history) == episodes * EPISODE_STEPS and history.num_episodes == episodes
    assert index_runs(root, run_ids[:1])[0].game == "DarkRoom"

    # Recording the same run again would splice two learners into one history.
    with pytest.raises(FileExistsError, match=run_ids[0]):
        source.record_histories(root, goals[:1], episodes=2, seed=7)
