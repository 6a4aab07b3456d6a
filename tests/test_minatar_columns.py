"""MinAtar Space Invaders with hidden paying columns (envs/minatar_columns.py): rewards only
from kills in the task's columns, a frozen task split, an observation that holds no trace of the
task (but for the teacher's reveal channel), the vector env's resets and cap, seeds, and the
family's registration. Real minatar game, tiny scale."""
import hashlib

import numpy as np
import pytest

from understudy.envs import families, minatar, suites
from understudy.envs import minatar_columns as mc
from understudy.envs.families import MINATAR, MINATAR_COLUMNS, family_of

# ---- the game: what pays ------------------------------------------------------------------------


def _quiet_game(paying):
    """A game with no aliens, no bullets, and the aliens' clocks far away."""
    game = mc.paying_columns_invaders(paying)
    game.reset()
    game.alien_map[:] = 0
    game.alien_move_timer = game.alien_shot_timer = 50
    game.pos = 0
    return game


@pytest.mark.parametrize("column,pays", [(4, True), (5, True), (6, True), (3, False), (9, False), (2, False)])
def test_a_kill_pays_only_in_a_paying_column(column, pays):
    game = _quiet_game((4, 5, 6))
    game.alien_map[4, column] = 1
    game.alien_map[0, 0] = 1  # another alien, so the wave does not restart
    game.f_bullet_map[5, column] = 1  # rises to row 4 this step: onto the alien
    reward, terminal = game.act(mc.NOOP)
    assert game.kills == 1 and not terminal and game.alien_map[4, column] == 0
    assert reward == (1 if pays else 0)


def test_kills_in_several_columns_at_once_pay_for_the_paying_ones():
    game = _quiet_game((1, 7, 8))
    for column in (1, 3, 7):
        game.alien_map[2, column] = 1
        game.f_bullet_map[3, column] = 1
    game.f_bullet_map[6, 8] = 1  # a bullet on its way, no kill
    game.alien_map[0, 9] = 1
    reward, _ = game.act(mc.NOOP)
    assert game.kills == 3 and reward == 2
    assert game.f_bullet_map[5, 8] == 1 and game.f_bullet_map.sum() == 1


def test_a_shot_fired_this_step_pays_in_the_cannons_column():
    for pos, pays in ((5, True), (2, False)):
        game = _quiet_game((5, 6, 7))
        game.pos = pos
        game.alien_map[8, pos] = 1  # just above the cannon: the new bullet rises into it
        game.alien_map[0, 0] = 1
        reward, _ = game.act(mc.FIRE)
        assert game.kills == 1 and reward == (1 if pays else 0)


def test_the_game_is_minatars_space_invaders_frame_by_frame():
    """The blind view is MinAtar Space Invaders itself (same seed and actions, same frames, the
    game's own kills in info), only the reward differs; the faster roll is np.roll."""
    rng = np.random.default_rng(0)
    for shift in (-1, 1, 2, -3):
        for axis in (0, 1):
            a = rng.random((10, 10))
            assert np.array_equal(mc._roll(a, shift, axis), np.roll(a, shift, axis=axis))
    tasks = mc.task_goals("all")[::15]
    env = mc.make_vector_env(mc.GAME, goals=tasks)
    ref = minatar.MinAtarVectorEnv("MinAtar/SpaceInvaders", len(tasks), same_step_reset=True,
                                   max_episode_steps=mc.EPISODE_CAP)
    obs, _ = env.reset(seed=7)
    ref_obs, _ = ref.reset(seed=7)
    paid = kills = 0
    for _ in range(600):
        actions = rng.integers(mc.NUM_ACTIONS, size=len(tasks))
        obs, reward, terminated, truncated, info = env.step(actions)
        ref_obs, ref_reward, ref_terminated, ref_truncated, _ = ref.step(actions)
        assert np.array_equal(obs, ref_obs)
        assert np.array_equal(terminated, ref_terminated) and np.array_equal(truncated, ref_truncated)
        assert np.array_equal(info["kills"], ref_reward) and (reward <= ref_reward).all()
        paid, kills = paid + reward.sum(), kills + ref_reward.sum()
    assert 0 < paid < kills


def test_scripted_policy_kills_only_where_it_is_paid_and_beats_random():
    tasks = mc.task_goals("heldout")[:4]
    right = mc.play_returns(tasks, 3, seed=1, policy="scripted")
    rand = mc.play_returns(tasks, 3, seed=1, policy="random")
    assert right["returns"].sum() >= 0.95 * right["kills"].sum() > 0
    assert rand["returns"].sum() < 0.7 * rand["kills"].sum()
    assert right["returns"].mean() > 2 * rand["returns"].mean()
    assert (right["lengths"] <= mc.EPISODE_CAP).all() and (rand["lengths"] <= mc.EPISODE_CAP).all()


# ---- tasks --------------------------------------------------------------------------------------

def _digest(tasks) -> str:
    return hashlib.sha256(np.asarray(tasks).astype("<i8").tobytes()).hexdigest()[:16]


def test_task_split_is_frozen_and_disjoint():
    train, held, every = (mc.task_goals(s) for s in ("train", "heldout", "all"))
    assert train.shape == (100, 3) and held.shape == (20, 3) and every.shape == (120, 3)
    assert not {tuple(t) for t in train} & {tuple(t) for t in held}
    assert {tuple(t) for t in train} | {tuple(t) for t in held} == {tuple(t) for t in every}
    assert len({tuple(t) for t in every}) == 120 and (np.diff(every, axis=1) > 0).all()
    # Never changes: any change must bump TASK_SPLIT_VERSION and these.
    assert mc.TASK_SPLIT_VERSION == 1
    assert _digest(train) == "4b8d9ef675647e93" and _digest(held) == "f32ccd181eb65163"
    assert _digest(every) == "bfe2c7d313722434"
    assert held[:4].tolist() == [[0, 1, 4], [0, 1, 8], [0, 3, 5], [0, 5, 6]]
    assert train[:4].tolist() == [[0, 1, 2], [0, 1, 3], [0, 1, 5], [0, 1, 6]]
    assert set(np.unique(held)) == set(range(10))  # every column pays in some held-out task
    assert np.array_equal(mc.task_goals("heldout"), held)  # the same on every call
    with pytest.raises(ValueError, match="valid: train, heldout, train_v2, heldout_v2, all"):
        mc.task_goals("test")


def test_task_split_v2_is_frozen_disjoint_and_has_50_heldout_tasks():
    train, held = mc.task_goals("train_v2"), mc.task_goals("heldout_v2")
    assert train.shape == (70, 3) and held.shape == (50, 3)
    assert not {tuple(t) for t in train} & {tuple(t) for t in held}
    assert {tuple(t) for t in train} | {tuple(t) for t in held} == set(mc.TASKS)
    # Never changes: the draw it was frozen from, and its digests.
    drawn = sorted(np.random.default_rng(29).permutation(120)[:50])
    assert [tuple(t) for t in held] == [mc.TASKS[i] for i in drawn]
    assert _digest(held) == "be80757cf21884cf" and _digest(train) == "73d1277017544fc9"
    assert np.bincount(held.ravel(), minlength=10).min() >= 11  # every column pays in 11+ held-out tasks


def test_bad_tasks_are_refused():
    for bad in ([[0, 1]], [[0, 1, 10]], [[3, 3, 4]], [[-1, 2, 3]]):
        with pytest.raises(ValueError):
            mc.check_tasks(bad)
    assert mc.check_tasks([[7, 2, 4]]).tolist() == [[2, 4, 7]]


# ---- what the imitator and the teacher see ------------------------------------------------------------

def test_the_imitators_view_holds_no_trace_of_the_task():
    """Two different tasks, same seed, same actions: identical observations all along (the
    task only changes rewards), and the rewards do differ; the reveal channel stays dark."""
    a = mc.make_vector_env(mc.GAME, goals=[[0, 1, 2]] * 4)
    b = mc.make_vector_env(mc.GAME, goals=[[4, 5, 6]] * 4)
    obs_a, _ = a.reset(seed=3)
    obs_b, _ = b.reset(seed=3)
    assert np.array_equal(obs_a, obs_b)
    rng = np.random.default_rng(3)
    differed = False
    for _ in range(400):
        actions = rng.integers(mc.NUM_ACTIONS, size=4)
        obs_a, reward_a, *_ = a.step(actions)
        obs_b, reward_b, *_ = b.step(actions)
        assert np.array_equal(obs_a, obs_b)
        assert not obs_a[..., mc.REVEAL_CHANNEL].any()
        differed |= not np.array_equal(reward_a, reward_b)
    assert differed


def test_the_teachers_view_lights_the_paying_columns():
    tasks = np.array([[0, 4, 9], [2, 3, 7]])
    shown = mc.make_vector_env(mc.GAME, goals=tasks, reveal_task=True)
    blind = mc.make_vector_env(mc.GAME, goals=tasks)
    obs_s, _ = shown.reset(seed=5)
    obs_b, _ = blind.reset(seed=5)
    rng = np.random.default_rng(5)
    for t in range(150):
        assert obs_s.shape == obs_b.shape == (2, *minatar.OBS_SHAPE) and obs_s.dtype == np.uint8
        reveal = obs_s[..., mc.REVEAL_CHANNEL]
        for i, task in enumerate(tasks):
            assert (reveal[i][:, task] == 255).all()
            assert not np.delete(reveal[i], task, axis=1).any()
        others = [c for c in range(len(minatar.CHANNELS)) if c != mc.REVEAL_CHANNEL]
        assert np.array_equal(obs_s[..., others], obs_b[..., others])
        assert np.array_equal(mc.hide_task(obs_s), obs_b)
        assert np.array_equal(MINATAR_COLUMNS.newest_frame(obs_s), obs_b)  # what a shard keeps
        actions = rng.integers(mc.NUM_ACTIONS, size=2)
        obs_s, *_ = shown.step(actions)
        obs_b, *_ = blind.step(actions)
    # Space Invaders itself never lights the reveal channel.
    assert "prize" not in {shared for shared, _ in minatar.CHANNEL_MAP["SpaceInvaders"].values()}
    assert minatar.CHANNELS[mc.REVEAL_CHANNEL] == "prize"


# ---- the vector env: resets, cap, seeds -------------------------------------------------------------

def _first_obs():
    env = mc.make_vector_env(mc.GAME, goals=[[0, 1, 2]])
    return env.reset(seed=0)[0][0]


def test_episodes_restart_in_the_step_they_end_and_are_capped():
    tasks = mc.task_goals("train")[:6]
    env = mc.make_vector_env(mc.GAME, goals=tasks)
    obs, _ = env.reset(seed=11)
    first = _first_obs()
    length = np.zeros(len(tasks), np.int64)
    ends = []
    for _ in range(350):
        obs, _, terminated, truncated, _ = env.step(mc.scripted_actions(obs, mc.paying_mask(tasks)))
        length += 1
        assert not (terminated & truncated).any()
        for i in np.flatnonzero(terminated | truncated):
            ends.append((int(length[i]), bool(truncated[i])))
            assert np.array_equal(obs[i], first)  # the same step shows the next first frame
            length[i] = 0
    assert ends and all(n <= mc.EPISODE_CAP for n, _ in ends)
    assert all(n == mc.EPISODE_CAP for n, cut in ends if cut)
    assert all(n < mc.EPISODE_CAP for n, cut in ends if not cut)
    assert any(cut for _, cut in ends)  # the scripted player lives to the cap
    # A tighter max_episode_steps cuts sooner; a looser one never passes the protocol's cap.
    short = mc.make_vector_env(mc.GAME, goals=tasks, max_episode_steps=30)
    assert short.max_episode_steps == 30
    assert mc.make_vector_env(mc.GAME, goals=tasks, max_episode_steps=10_000).max_episode_steps == mc.EPISODE_CAP


def test_next_step_reset_for_the_runners():
    env = mc.make_vector_env(mc.GAME, goals=[[3, 4, 5]], same_step_reset=False, max_episode_steps=20)
    env.reset(seed=0)
    for t in range(1, 21):
        obs, reward, terminated, truncated, _ = env.step(np.array([mc.NOOP]))
        if terminated[0] or truncated[0]:
            break
    assert terminated[0] or (truncated[0] and t == 20)
    obs, reward, terminated, truncated, _ = env.step(np.array([mc.FIRE]))  # ignored: a new episode
    assert reward[0] == 0 and not terminated[0] and not truncated[0]
    assert np.array_equal(obs[0], _first_obs())


def test_seeds_reproduce():
    def play(seed):
        env = mc.make_vector_env(mc.GAME, goals=mc.task_goals("heldout")[:3])
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        frames, rewards = [obs], []
        for _ in range(200):
            obs, reward, *_ = env.step(rng.integers(mc.NUM_ACTIONS, size=3))
            frames.append(obs)
            rewards.append(reward)
        return np.stack(frames), np.stack(rewards)

    a, b, c = play(1), play(1), play(2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])  # sticky actions drawn from the seed


def test_default_copies_take_the_training_tasks_in_turn():
    env = mc.make_vector_env(mc.GAME, 103)
    train = mc.task_goals("train")
    assert np.array_equal(env.tasks[:100], train) and np.array_equal(env.tasks[100:], train[:3])
    with pytest.raises(ValueError):
        mc.make_vector_env(mc.GAME, 3, goals=train[:2])


# ---- the family ---------------------------------------------------------------------------------

def test_registered_as_its_own_per_task_family():
    for name in ("MinAtar/SpaceInvaders-columns", "minatar/space_invaders_columns"):
        assert family_of(name) is MINATAR_COLUMNS
        assert families.canonical_game(name) == mc.GAME
    assert MINATAR_COLUMNS.games() == [mc.GAME] and MINATAR_COLUMNS in families.registered()
    assert MINATAR_COLUMNS.per_goal and not MINATAR_COLUMNS.stacked
    assert MINATAR_COLUMNS.episode_steps is None and MINATAR_COLUMNS.longest_episode == mc.EPISODE_CAP
    assert MINATAR_COLUMNS.frame_shape == minatar.OBS_SHAPE and MINATAR_COLUMNS.shared_actions == 6
    assert MINATAR_COLUMNS.protocol["minatar_columns.episode_cap"] == mc.EPISODE_CAP
    assert MINATAR_COLUMNS.reference(mc.GAME) is None
    # What lists MinAtar's games is unchanged.
    assert family_of("MinAtar/SpaceInvaders") is MINATAR and mc.GAME not in MINATAR.games()
    assert len(MINATAR.games()) == 5 and suites.resolve_suite("minatar5")[1] == [
        "MinAtar/Asterix", "MinAtar/Breakout", "MinAtar/Freeway", "MinAtar/Seaquest", "MinAtar/SpaceInvaders"]
    with pytest.raises(ValueError):
        mc.canonical_game("MinAtar/SpaceInvaders")


def test_play_env_has_copies_per_held_out_task():
    env = families.make_play_env(mc.GAME, 2, goal_split="heldout")
    obs, _ = env.reset(seed=0)
    held = mc.task_goals("heldout")
    assert obs.shape == (2 * len(held), *minatar.OBS_SHAPE) and env.same_step_reset
    assert np.array_equal(env.tasks, np.repeat(held, 2, axis=0))
    assert not obs[..., mc.REVEAL_CHANNEL].any()


def test_the_reference_is_measured_for_every_task():
    rows = mc._reference_table()
    assert set(rows) == {mc.task_name(t) for t in mc.task_goals("all")}
    scripted = np.array([float(r["scripted_return"]) for r in rows.values()])
    rand = np.array([float(r["random_return"]) for r in rows.values()])
    wrong = np.array([float(r["wrong_task_return"]) for r in rows.values()])
    assert (scripted > 0).all() and scripted.mean() > 2 * rand.mean() and scripted.mean() > 2 * wrong.mean()
    assert {r["split"] for r in rows.values() if tuple(int(r[c]) for c in ("c0", "c1", "c2")) in
            mc.HELDOUT_TASKS_V1} == {"heldout"}
    for task in mc.task_goals("heldout")[:3]:
        assert MINATAR_COLUMNS.optimum(task) == float(rows[mc.task_name(task)]["scripted_return"])
        random, best = mc.reference_returns(task)
        assert best > random >= 0


def test_an_evaluation_budget_on_the_task_family_counts_every_task_at_its_episode_cap():
    from understudy.platform.config import EvaluateConfig
    from understudy.platform.evaluate import step_budget

    cfg = EvaluateConfig(imitator="d", teacher="t", games=["MinAtar/SpaceInvaders-columns"], episodes=3, copies=2)
    # 20 held-out tasks x 2 copies x 3 episodes of at most 100 steps
    assert step_budget(cfg, "MinAtar/SpaceInvaders-columns") == 20 * 2 * 3 * 100
    dark = EvaluateConfig(imitator="d", teacher="t", games=["DarkRoom"], episodes=3, copies=2)
    assert step_budget(dark, "DarkRoom") == 16 * 2 * 3 * 20  # unchanged for Dark Room
