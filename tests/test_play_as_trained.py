"""A model plays exactly as it was trained: at every step of play, the frozen player's logits
are the model's training-time forward pass over the training sample (histories.data.make_batch)
that holds the same steps; DT's episode-start tokens carry no previous action or reward, as in
its training windows; recurrent AD's state is read from zero over its window, as in training;
and the data transforms recorded in a checkpoint (reward, unified actions, GLA permutations)
are applied again to what the model sees, and undone on what it chooses."""
import numpy as np
import pytest
import torch

from understudy.algorithms import imitation
from understudy.envs import AtariProtocol, make_atari_vector_env
from understudy.envs.atari import action_set
from understudy.envs.darkroom import NUM_ACTIONS, DarkRoomFrames, darkroom_goals
from understudy.histories.data import History, SampleSpec, StepTransforms, make_batch
from understudy.platform.players import play_episodes


def tiny(algorithm, context, **model):
    torch.manual_seed(0)
    extra = {"layers": 2, "heads": 2} if algorithm != "ad_gru" else {"layers": 2}
    return imitation.build(algorithm, NUM_ACTIONS, cnn="grid", stack=1, context=context, d_model=16,
                           **{**extra, **model}, **({"dropout": 0.0} if algorithm != "ad_gru" else {})).eval()


class Recorder:
    """Plays with `player` and keeps every step as a recorded history would hold it, with the
    player's logits and where its window started."""

    def __init__(self, player):
        self.player, self.frames, self.actions, self.rewards, self.starts = player, [], [], [], []
        self.logits, self.window_start = [], []
        self.t = 0

    def act(self, obs, prev_action, prev_reward, new_episode):
        if self.t:
            self.rewards.append(float(prev_reward[0]))
        a = self.player.act(obs, prev_action, prev_reward, new_episode)
        # the frame a shard records: the newest of a stack, or a whole MinAtar observation
        self.frames.append(obs[0, ..., -1].copy() if obs.shape[-1] == 1 else obs[0].copy())
        self.actions.append(int(a[0]))
        self.starts.append(bool(new_episode[0]))
        self.logits.append(self.player.last_logits[0].clone())
        self.window_start.append(self.t - int(self.player.length[0]) + 1)
        self.t += 1
        return a

    def history(self):
        n = len(self.rewards)  # the last step's reward never came back
        episode_id = np.cumsum(self.starts[:n]) - 1
        starts = np.flatnonzero(self.starts[:n])
        return History(frames=np.stack(self.frames[:n]), actions=np.array(self.actions[:n]),
                       rewards=np.array(self.rewards, np.float32), episode_start=starts[episode_id],
                       episode_id=episode_id, target=np.ones(n, bool), history_start=np.zeros(n, np.int64))


@pytest.mark.parametrize("algorithm", ["ad", "ad_gru"])
def test_cross_episode_players_act_as_their_training_windows(algorithm):
    """Every step, including after the window advanced: the logits of the training forward pass
    over the window's rows, read as a training window (tokens, positions, a zero state)."""
    model = tiny(algorithm, context=30)
    recorder = Recorder(imitation.policy(model, 1, greedy=False, seed=0))
    play_episodes(DarkRoomFrames(darkroom_goals("heldout")[:1]), recorder, 1, NUM_ACTIONS, episodes=5, seed=0)
    h = recorder.history()
    assert max(recorder.window_start) > 0  # the window advanced
    checked = 0
    for t in range(len(h)):
        s = recorder.window_start[t]
        batch = make_batch(h, np.array([s]), SampleSpec("history", t - s + 1, 1), NUM_ACTIONS)
        with torch.no_grad():
            trained = model(imitation.to_torch(batch))[0, -1]
        torch.testing.assert_close(recorder.logits[t], trained, atol=1e-4, rtol=1e-4)
        checked += 1
    assert checked == 99


def test_a_minatar_imitator_plays_its_whole_observations_as_trained():
    """MinAtar's 10x10x10 observation is one frame: the player sees it whole (not the last
    channel, as a stack's newest frame would be), and its logits are the training forward pass
    over the same rows read back from a history of whole observations."""
    from understudy.envs import family_of
    from understudy.platform.players import make_env, model_stack

    game = "MinAtar/SpaceInvaders"
    torch.manual_seed(0)
    model = imitation.build("ad", 6, cnn="minatar", stack=1, context=24, d_model=16, layers=1, heads=2,
                            dropout=0.0).eval()
    recorder = Recorder(imitation.policy(model, 1, greedy=False, seed=0))
    stack = model_stack(game, 1)
    assert stack == 0 and family_of(game).model_obs(np.zeros((1, 10, 10, 10)), 1).shape == (1, 10, 10, 10)
    env = make_env(game, {}, 1, 40, "heldout")
    play_episodes(env, recorder, stack, 6, episodes=2, seed=0)
    h = recorder.history()
    assert h.frames.shape[1:] == (10, 10, 10) and h.frames.max() == 255
    assert max(recorder.window_start) > 0
    for t in range(len(h)):
        s = recorder.window_start[t]
        batch = make_batch(h, np.array([s]), SampleSpec("history", t - s + 1, 1), 6)
        with torch.no_grad():
            trained = model(imitation.to_torch(batch))[0, -1]
        torch.testing.assert_close(recorder.logits[t], trained, atol=1e-4, rtol=1e-4)


def test_minatar_gla_permutes_positions_with_their_channels_as_in_training():
    """GLA on MinAtar permutes the 100 grid positions, a position's 10 channels moving with it,
    at play as in the data path (histories.data.permute_positions)."""
    from understudy.histories.data import gla_positions, permute_positions

    model = imitation.build("bc", 6, cnn="minatar", stack=1).eval()
    player = imitation.as_trained(imitation.policy(model, 2, greedy=True),
                                  {"num_actions": 6, "transforms": {"gla": True}},
                                  6, 2, "MinAtar/Breakout", False, seed=3)
    assert player.pixels.shape == (2, 100)
    obs = np.random.default_rng(0).integers(0, 2, (2, 10, 10, 10), dtype=np.uint8) * 255
    seen, _, _ = player.model_step(obs, np.full(2, 6), np.zeros(2))
    for i in range(2):
        expected = permute_positions(obs[i:i + 1], player.pixels[i])[0]
        assert (seen[i] == expected).all()
        assert sorted(map(tuple, seen[i].reshape(100, 10))) == sorted(map(tuple, obs[i].reshape(100, 10)))
    assert gla_positions(0, 1, (10, 10)).shape == (100,)
    assert gla_positions(0, 1, (84, 84)).shape == (84 * 84,)


def test_dt_episode_start_tokens_match_its_training_windows():
    model = imitation.build("dt", NUM_ACTIONS, cnn="grid", stack=1, context=24, d_model=16, layers=1,
                            heads=2, dropout=0.0).eval()
    seen = []
    tokens = model.tokens
    model.tokens = lambda batch: (seen.append({k: v.clone() for k, v in batch.items()}), tokens(batch))[1]
    recorder = Recorder(imitation.policy(model, 1, greedy=False, seed=0, target_return=1.0))
    play_episodes(DarkRoomFrames(darkroom_goals("train")[:1]), recorder, 1, NUM_ACTIONS, episodes=3, seed=0)
    h = recorder.history()
    batch = make_batch(h, np.array([20]), SampleSpec("episode", 20, 1), NUM_ACTIONS)  # the 2nd episode
    for i, t in enumerate(range(20, 40)):
        for key in ("prev_action", "prev_reward", "new_episode"):
            assert seen[t][key][0, 0].item() == pytest.approx(float(batch[key][0, i])), (key, t)
    assert seen[20]["prev_action"][0, 0] == NUM_ACTIONS  # no action yet, though the env had one


def test_recorded_reward_and_action_transforms_are_applied_at_play():
    """Space Invaders pays 5 to 30 a hit; a model trained on sign(reward) with unified actions
    sees only -1/0/1 and ALE action ids, and chooses among the game's own actions only."""
    env = make_atari_vector_env("SpaceInvaders", AtariProtocol(), num_envs=2, same_step_reset=True)
    model = imitation.build("ad", 18, cnn="small", stack=1, context=16, d_model=16, layers=1, heads=2).eval()
    seen = []
    tokens = model.tokens
    model.tokens = lambda batch: (seen.append({k: v.clone() for k, v in batch.items()}), tokens(batch))[1]
    meta = {"num_actions": 18, "transforms": {"reward": "sign", "unified_actions": True}}
    player = imitation.as_trained(imitation.policy(model, 2, greedy=False, seed=0), meta, 6, 2,
                                  "SpaceInvaders", False, seed=0)
    raw = []
    try:
        obs, _ = env.reset(seed=0)
        prev_a, prev_r, new = np.full(2, 6), np.zeros(2, np.float32), np.ones(2, bool)
        for _ in range(300):
            a = player.act(obs[..., -1:], prev_a, prev_r, new)
            assert set(a) <= set(range(6))
            obs, r, term, trunc, _ = env.step(a)
            raw += list(r)
            prev_a, prev_r, new = a, r.astype(np.float32), term | trunc
    finally:
        env.close()
    assert max(raw) >= 5  # the game paid its raw score
    fed_rewards = torch.cat([s["prev_reward"].flatten() for s in seen])
    assert set(fed_rewards.tolist()) <= {-1.0, 0.0, 1.0} and fed_rewards.max() == 1.0
    ale_ids = {int(a) for a in action_set("SpaceInvaders", False)}
    fed_actions = set(torch.cat([s["prev_action"].flatten() for s in seen[1:]]).tolist())
    assert fed_actions <= ale_ids | {18} and len(fed_actions - {18}) > 1


def test_gla_permutations_are_per_copy_and_undone_on_the_way_out():
    model = imitation.build("bc", 4, cnn="small", stack=1).eval()
    meta = {"num_actions": 4, "transforms": {"gla": True}}
    player = imitation.as_trained(imitation.policy(model, 3, greedy=True), meta, 4, 3, "Breakout", False, seed=5)
    rows = np.arange(3)[:, None]
    assert (player.to_env[rows, player.to_model] == np.arange(4)).all()  # a round trip is the identity
    assert len({tuple(p) for p in player.to_model}) == 3  # each copy its own task
    obs = np.random.default_rng(0).integers(0, 255, (3, 84, 84, 1), dtype=np.uint8)
    seen, _, _ = player.model_step(obs, np.full(3, 4), np.zeros(3))
    for i in range(3):
        assert sorted(seen[i].ravel()) == sorted(obs[i].ravel())
        assert (seen[i].reshape(-1) == obs[i].reshape(-1)[player.pixels[i]]).all()


def test_a_model_without_unified_actions_refuses_a_game_with_other_actions():
    model = imitation.build("bc", 18, cnn="small", stack=1).eval()
    with pytest.raises(ValueError, match="unified_actions"):
        imitation.as_trained(imitation.policy(model, 1), {"num_actions": 18}, 4, 1, "Breakout", False, 0)
    StepTransforms()  # the transforms a checkpoint records are the data path's own
