"""Controls of in-context learning and paired evaluation seeds (issue #28): `context_reset`
reads only the current episode (a fresh player each episode; for AD exactly ContextPolicy's
reset_each_episode), `reward_blind` never reads a reward while its raw returns are scored,
`warmup` first plays unscored episodes of a foreign task and keeps them in its context; every
agent of one training run plays the same env seeds, different runs different ones, and random
and no-op play one run per imitator seed."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from understudy.algorithms import ad, imitation, nets
from understudy.platform.config import EvaluateConfig
from understudy.platform.players import (
    CONTROLS,
    Agent,
    ContextReset,
    RewardBlind,
    eval_seed,
    foreign_env,
    make_env,
    make_player,
    play,
)
from understudy.platform.stages import StageFailed


def tiny(algorithm="ad", context=100, num_actions=5, cnn="grid"):
    torch.manual_seed(0)
    extra = {"heads": 2, "dropout": 0.0} if algorithm in ("ad", "dt") else {}
    return imitation.build(algorithm, num_actions, cnn=cnn, stack=1, context=context, d_model=16, layers=1,
                           **extra).eval()


def checkpoint(tmp_path, model, name="ck") -> str:
    imitation.save(model, str(tmp_path / name), {})
    return str(tmp_path / name)


def dark_room_steps(n_envs=2, episodes=3, seed=0):
    """Steps as play gives them: 20-step episodes, and at each episode start the previous
    episode's last action and a reward (so a control that lets them through would show)."""
    rng = np.random.default_rng(seed)
    steps = []
    for t in range(20 * episodes):
        obs = np.zeros((n_envs, 84, 84, 1), np.uint8)
        for i, (x, y) in enumerate(rng.integers(9, size=(n_envs, 2))):
            obs[i, 9 * y:9 * y + 9, 9 * x:9 * x + 9] = 255
        prev_action = np.full(n_envs, 5) if t == 0 else rng.integers(5, size=n_envs)
        prev_reward = np.zeros(n_envs, np.float32) if t == 0 else np.ones(n_envs, np.float32)
        steps.append((obs, prev_action, prev_reward, np.full(n_envs, t % 20 == 0)))
    return steps


def as_trained(policy, n_envs=2):
    return imitation.as_trained(policy, {"num_actions": 5}, 5, n_envs, "DarkRoom", False, 0)


# ---- context_reset ----------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["ad", "ad_gru"])
def test_context_reset_acts_as_a_fresh_player_on_each_episode(algorithm):
    """Every step of every episode: the logits of a new player that has played only that
    episode from its start (no action yet, reward 0), also after the window advanced inside
    an episode (context 16 < 20 steps); recurrent AD's state is cleared with it."""
    model = tiny(algorithm, context=16)
    reset = ContextReset(as_trained(imitation.policy(model, 2, greedy=False, seed=0)), 5)
    steps = dark_room_steps()
    logits = []
    for s in steps:
        reset.act(*s)
        logits.append(reset.last_logits.clone())
    for start in (20, 40):
        fresh = as_trained(imitation.policy(model, 2, greedy=False, seed=0))
        for t in range(start, start + 20):
            obs, prev_action, prev_reward, new = steps[t]
            if t == start:
                prev_action, prev_reward = np.full(2, 5), np.zeros(2, np.float32)
            fresh.act(obs, prev_action, prev_reward, new)
            torch.testing.assert_close(fresh.last_logits, logits[t], atol=1e-5, rtol=1e-5)
    # the imitator itself reads across the episodes: the second episode's logits differ
    plain = as_trained(imitation.policy(model, 2, greedy=False, seed=0))
    for s in steps[:21]:
        plain.act(*s)
    assert not torch.allclose(plain.last_logits, logits[20], atol=1e-4)


def test_context_reset_of_ad_is_context_policys_reset_each_episode():
    model = tiny("ad", context=30)
    reset = ContextReset(as_trained(imitation.policy(model, 2, greedy=False, seed=0)), 5)
    reference = as_trained(nets.ContextPolicy(model, 2, 30, True, greedy=False, seed=0))
    for s in dark_room_steps(episodes=4):
        reset.act(*s)
        reference.act(*s)
        torch.testing.assert_close(reset.last_logits, reference.last_logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(reset.length, reference.length)


def test_in_play_context_reset_holds_no_earlier_episode_and_the_imitator_does(tmp_path):
    ck = checkpoint(tmp_path, tiny("ad", context=100))
    runs = {kind: play._function(Agent(kind, ck, run_seed=0), "DarkRoom", {}, 4, 1, None, False, eval_seed(0, 0))
            for kind in ("imitator", "context_reset")}
    assert {tuple(c) for c in runs["imitator"]["episodes_in_context"]} == {(0, 1, 2, 3)}
    assert {tuple(c) for c in runs["context_reset"]["episodes_in_context"]} == {(0, 0, 0, 0)}
    assert len(runs["context_reset"]["returns"]) == 16  # the 16 held-out goals, one copy each
    gru = play._function(Agent("context_reset", checkpoint(tmp_path, tiny("ad_gru", context=30), "gru"), run_seed=0),
                         "DarkRoom", {}, 2, 1, None, False, 0)
    assert np.shape(gru["returns"]) == (16, 2)


# ---- reward_blind -----------------------------------------------------------------------------

def test_reward_blind_never_reads_a_reward_but_is_scored_on_the_raw_ones(tmp_path, monkeypatch):
    ck = checkpoint(tmp_path, tiny("ad", context=100))
    read = []
    act = ad.Policy.act

    def spy(self, obs, prev_action, prev_reward, new_episode):
        read.append(np.asarray(prev_reward, np.float32).copy())
        return act(self, obs, prev_action, prev_reward, new_episode)

    monkeypatch.setattr(ad.Policy, "act", spy)
    seen = {}
    for kind in ("imitator", "reward_blind"):
        read.clear()
        out = play._function(Agent(kind, ck, run_seed=0), "DarkRoom", {}, 4, 1, None, False, eval_seed(0, 0))
        seen[kind] = (np.concatenate(read), float(np.sum(out["returns"])))
    imitator_read, _ = seen["imitator"]
    blind_read, blind_returns = seen["reward_blind"]
    assert imitator_read.max() == 1.0  # the spy sees what the model reads: the imitator's rewards
    assert blind_returns > 0 and blind_read.size == 16 * 80 and not blind_read.any()


def test_reward_blind_zeroes_only_the_reward():
    given = []

    class Player:
        def act(self, obs, prev_action, prev_reward, new_episode):
            given.append((prev_action, prev_reward, new_episode))
            return np.zeros(len(obs), np.int64)

    RewardBlind(Player(), 5).act(np.zeros((2, 1)), np.array([3, 4]), np.array([1.0, -2.0]), np.array([True, False]))
    (prev_action, prev_reward, new), = given
    assert prev_action.tolist() == [3, 4] and prev_reward.tolist() == [0.0, 0.0] and new.tolist() == [True, False]


# ---- warmup -----------------------------------------------------------------------------------

def test_the_foreign_task_of_dark_room_is_each_copy_s_goal_rotated_within_the_split():
    real = make_env("DarkRoom", {}, 2, None, "heldout")
    foreign, source = foreign_env("DarkRoom", {}, 2, None, "heldout")
    assert source == "other_goal" and foreign.num_envs == real.num_envs == 32
    goals, other = real.env.goals, foreign.env.goals
    assert (goals != other).any(1).all()  # every copy's goal differs
    assert sorted(map(tuple, goals)) == sorted(map(tuple, other))  # within the split
    np.testing.assert_array_equal(other[:-2], goals[2:])  # goal i's copies play goal i + 1
    assert foreign_env("MinAtar/Breakout", {}, 2, 30, "heldout")[1] == "random_actions"


def test_warmup_plays_unscored_foreign_episodes_first_and_keeps_them_in_its_context(tmp_path, monkeypatch):
    ck = checkpoint(tmp_path, tiny("ad", context=100))
    calls = []
    act = ad.Policy.act

    def spy(self, obs, prev_action, prev_reward, new_episode):
        calls.append(np.asarray(prev_action).copy())
        return act(self, obs, prev_action, prev_reward, new_episode)

    monkeypatch.setattr(ad.Policy, "act", spy)
    out = play._function(Agent("warmup", ck, run_seed=0), "DarkRoom", {}, 2, 1, None, False, eval_seed(0, 0),
                         warmup_episodes=3)
    assert out["warmup_source"] == "other_goal" and out["warmup_episodes"] == 3
    assert out["warmup_env_steps"] == 3 * 20 * 16 and np.shape(out["warmup_returns"]) == (16, 3)
    assert np.shape(out["returns"]) == (16, 2) and np.sum(out["lengths"]) == 2 * 20 * 16  # scored: the real goals
    # at the first scored episode the context holds the 3 warm-up episodes, then one more
    assert {tuple(c) for c in out["episodes_in_context"]} == {(3, 4)}
    assert len(calls) == 100 and (calls[0] == 5).all()  # 60 warm-up steps, then 40 scored
    assert (calls[60] < 5).all()  # the scored stream goes on from the warm-up's last action


def test_warmup_on_a_game_without_tasks_fills_its_context_with_random_play(tmp_path, monkeypatch):
    from understudy.envs.minatar import ACTION_MEANINGS

    model = tiny("ad", context=256, num_actions=6, cnn="minatar")
    up = ACTION_MEANINGS.index("UP")
    with torch.no_grad():  # it always presses UP (greedy)
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[up] = 5.0
    ck = checkpoint(tmp_path, model)
    calls = []
    act = ad.Policy.act

    def spy(self, obs, prev_action, prev_reward, new_episode):
        calls.append(np.asarray(prev_action).copy())
        return act(self, obs, prev_action, prev_reward, new_episode)

    monkeypatch.setattr(ad.Policy, "act", spy)
    out = play._function(Agent("warmup", ck, run_seed=0), "MinAtar/Breakout", {}, 1, 2, 30, True, eval_seed(0, 0),
                         warmup_episodes=2)
    assert out["warmup_source"] == "random_actions"
    warm = out["warmup_env_steps"] // 2
    assert warm >= 2 and len(calls) == warm + max(map(sum, out["lengths"]))
    played_in_warmup = np.concatenate(calls[1:warm + 1])
    assert len(set(played_in_warmup.tolist())) >= 4  # random actions, not the model's UP
    assert (np.concatenate(calls[warm + 1:]) == up).all()  # scored: its own
    assert min(c[0] for c in out["episodes_in_context"]) >= 2


# ---- which agents play, with which seeds ------------------------------------------------------

def test_eval_seed_is_fixed_the_same_for_a_run_and_different_across_runs():
    assert eval_seed(0, 3) == eval_seed(0, 3) and isinstance(eval_seed(0, 3), int)
    seeds = {eval_seed(base, run) for base in range(3) for run in range(20)}
    assert len(seeds) == 60 and all(0 <= s < 2 ** 30 for s in seeds)
    assert eval_seed(0, None) == eval_seed(0, 0)


def test_random_runs_differ_and_one_run_replays_exactly():
    def returns(run_seed):
        out = play._function(Agent("random", run_seed=run_seed), "MinAtar/Breakout", {}, 3, 2, 100, True,
                             eval_seed(0, run_seed))
        assert out["eval_seed"] == eval_seed(0, run_seed)
        return out["returns"], out["lengths"]

    assert returns(3) == returns(3)
    assert returns(3) != returns(4)


def _fake_stage(monkeypatch, tmp_path, algorithm="ad", seeds=(3, 7)):
    """_run_evaluate with Ray, MLflow and the report replaced, for a refusal that must come before
    anything launches (which tasks launched, with what). The real stage's pairing of env seeds
    is checked end to end by tests/test_experiments.py (Dark Room, every control)."""
    from understudy.platform import evaluate

    ck = checkpoint(tmp_path, tiny("ad"))  # what is refused is the stage's algorithm, before any checkpoint loads
    launched = []

    class Task:
        def options(self, **_):
            return self

        def remote(self, agent, game, protocol, episodes, copies, max_steps, greedy, seed, goal_split, finetune,
                   replay, progress_s, gpus, env_steps, warmup_episodes=0):
            launched.append({"agent": agent, "seed": seed, "env_steps": env_steps, "warmup": warmup_episodes})
            return len(launched) - 1

    def get(ref):
        return {"returns": [[0.0] * 3] * 16, "lengths": [[20] * 3] * 16, "episodes_in_context": None,
                "truncated": [[False] * 3] * 16, "gradient_steps": 0, "replays": {}, "started": 0.0, "ended": 1.0,
                "eval_seed": launched[ref]["seed"]}

    fake_ray = SimpleNamespace(wait=lambda refs, num_returns: (refs[:1], refs[1:]), get=get)
    distill = SimpleNamespace(name="d", algorithm=algorithm, data_games=["DarkRoom"], game="DarkRoom", run_ids=[],
                              imitators=[SimpleNamespace(checkpoint=ck, seed=s) for s in seeds],
                              history_length=None)
    teach = SimpleNamespace(name="t", runs=[], protocol={})
    ws = SimpleNamespace(read_stage=lambda kind, name: teach if kind == "teach" else distill)
    monkeypatch.setattr(evaluate, "play", Task())
    monkeypatch.setattr(evaluate, "ray", fake_ray)
    monkeypatch.setattr(evaluate.resources, "stage_gpus", lambda *a: 0)
    monkeypatch.setattr(evaluate, "report", lambda cfg, ws, stage, teach, distill, trained, results, *a: results)
    return evaluate, ws, launched


@pytest.mark.parametrize("algorithm", ["bc", "dt"])
def test_a_control_of_an_imitator_that_reads_one_episode_is_refused_at_stage_start(tmp_path, monkeypatch, algorithm):
    evaluate, ws, launched = _fake_stage(monkeypatch, tmp_path, algorithm=algorithm)
    cfg = EvaluateConfig(imitator="d", teacher="t", games=["DarkRoom"], agents=["imitator", "reward_blind"])
    with pytest.raises(StageFailed, match=f"reward_blind.*'{algorithm}'"):
        evaluate._run_evaluate(cfg, ws, None, None, 30.0)
    assert not launched


def test_a_control_refuses_a_checkpoint_that_reads_one_episode(tmp_path):
    ck = checkpoint(tmp_path, imitation.build("bc", 5, cnn="grid", stack=1))
    for kind in CONTROLS:
        with pytest.raises(StageFailed, match=f"{kind} on DarkRoom.*'bc'"):
            make_player(Agent(kind, ck), 16, 5, True, 0, "DarkRoom", {})
