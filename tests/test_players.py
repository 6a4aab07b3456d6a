"""Frozen sequence models at play: the key/value-cached player chooses what the model's own
forward pass over the same window chooses (logits within float tolerance), across window
advances, episode boundaries and per-env resets; windows advance as documented; the number of
earlier episodes in the context is reported; evaluation tasks report progress with totals."""
import numpy as np
import pytest
import torch

from understudy.algorithms import ad, imitation
from understudy.envs import AtariProtocol, make_atari_vector_env
from understudy.envs.darkroom import DarkRoomFrames, darkroom_goals
from understudy.platform.players import Progress, play_episodes


class Both:
    """Plays with the cached player and asks the recomputing one the same question each step."""

    def __init__(self, cached, recomputed):
        self.cached, self.recomputed = cached, recomputed
        self.worst, self.steps, self.advances = 0.0, 0, 0
        self.episodes_in_context = cached.episodes_in_context

    def act(self, obs, prev_action, prev_reward, new_episode):
        before = self.cached.length.clone()
        a = self.cached.act(obs, prev_action, prev_reward, new_episode)
        b = self.recomputed.act(obs, prev_action, prev_reward, new_episode)
        self.advances += int((self.cached.length <= before).sum())
        self.worst = max(self.worst, float((self.cached.last_logits - self.recomputed.last_logits).abs().max()))
        np.testing.assert_array_equal(a, b)
        assert torch.equal(self.cached.length, self.recomputed.length)
        self.steps += 1
        return a


def pair(algorithm, num_envs, context, **model):
    torch.manual_seed(1)
    net = imitation.build(algorithm, model.pop("num_actions", 5), context=context, dropout=0.0, **model).eval()
    extra = {"target_return": 3.0} if algorithm == "dt" else {}
    return [imitation.policy(net, num_envs, greedy=False, seed=7, cache=cache, **extra) for cache in (True, False)]


def test_cached_ad_plays_as_recomputed_across_episodes_and_window_advances():
    env = DarkRoomFrames(darkroom_goals("heldout")[:3])  # 20-step episodes, 3 rooms
    both = Both(*pair("ad", env.num_envs, context=50, cnn="grid", stack=1, d_model=32, layers=3, heads=4))
    played = play_episodes(env, both, 1, 5, episodes=12, seed=0)
    assert both.steps == 240 and both.advances >= 3 * 15  # every window advanced many times
    assert both.worst < 1e-4, both.worst
    # the context held 0, 1, 2 earlier episodes, then never more than fit (keep = 37 steps)
    counts = [e["episodes_in_context"] for e in played[0]]
    assert counts[:3] == [0, 1, 2] and set(counts[3:]) <= {1, 2}


def test_cached_dt_plays_as_recomputed_with_per_env_resets_on_atari():
    # an episode per life: copies end their episodes at different steps
    env = make_atari_vector_env("Breakout", AtariProtocol(full_action_space=True, terminal_on_life_loss=True),
                                num_envs=3, max_episode_steps=200, same_step_reset=True)
    try:
        both = Both(*pair("dt", 3, context=16, cnn="small", stack=4, d_model=32, layers=2, heads=2,
                          num_actions=18, max_timestep=64))
        played = play_episodes(env, both, 4, 18, episodes=3, seed=3)
    finally:
        env.close()
    lengths = {e["length"] for p in played for e in p}
    assert len(lengths) > 1  # the resets were not in lock step
    assert both.advances > 0 and both.worst < 1e-4, both.worst
    assert all(e["episodes_in_context"] == 0 for p in played for e in p)  # DT: one episode per window


@pytest.mark.parametrize("algorithm", ["ad", "dt"])
def test_cached_and_recomputed_agree_under_any_pattern_of_episode_starts(algorithm):
    cached, recomputed = pair(algorithm, 4, context=12, cnn="grid", stack=1, d_model=16, layers=2, heads=2)
    both = Both(cached, recomputed)
    rng = np.random.default_rng(0)
    prev_action, prev_reward, new = np.full(4, 5), np.zeros(4, np.float32), np.ones(4, bool)
    for _ in range(80):
        obs = np.zeros((4, 84, 84, 1), np.uint8)
        for i, (x, y) in enumerate(rng.integers(9, size=(4, 2))):
            obs[i, 9 * y:9 * y + 9, 9 * x:9 * x + 9] = 255
        prev_action = both.act(obs, prev_action, prev_reward, new)
        prev_reward, new = rng.random(4).astype(np.float32), rng.random(4) < 0.1
    assert both.worst < 1e-4 and both.advances > 0


def test_window_advance_keeps_the_newest_tokens_at_the_front():
    cached, _ = pair("ad", 1, context=8, cnn="grid", stack=1, d_model=16, layers=1, heads=2)
    assert cached.keep == 6
    obs = np.zeros((1, 84, 84, 1), np.uint8)
    for _ in range(8):
        cached.act(obs, [5], [0.0], [False])
    full = cached.window[0].clone()
    cached.act(obs, [5], [1.0], [False])  # the 9th token: the window advances first
    assert int(cached.length[0]) == 7
    torch.testing.assert_close(cached.window[0, :6], full[2:])
    with pytest.raises(ValueError, match="keep=8"):
        ad.Policy(cached.model, 1, keep=8)


def test_progress_reports_totals_at_most_every_interval():
    now, lines = [0.0], []
    progress = Progress("imitator on DarkRoom", total=6, every_s=30, clock=lambda: now[0], out=lines.append)
    for t, done in ((10, 1), (31, 2), (40, 3), (75, 5), (76, 6)):
        now[0] = t
        progress(done, done * 20)
    assert lines == ["[evaluate] imitator on DarkRoom: 2/6 episodes, 40 env steps, 31s (1 steps/s)",
                     "[evaluate] imitator on DarkRoom: 5/6 episodes, 100 env steps, 75s (1 steps/s)",
                     "[evaluate] imitator on DarkRoom: 6/6 episodes, 120 env steps, 76s (2 steps/s)"]


def test_play_episodes_reports_progress_as_it_plays():
    env = DarkRoomFrames(darkroom_goals("heldout")[:2])
    seen = []
    rng = np.random.default_rng(0)

    class Random:
        def act(self, obs, *_):
            return rng.integers(5, size=len(obs))

    play_episodes(env, Random(), 1, 5, episodes=3, seed=0, progress=lambda done, steps: seen.append((done, steps)))
    assert seen[0] == (0, 2) and seen[19] == (2, 40) and seen[-1] == (6, 120) and len(seen) == 60


@pytest.mark.parametrize("algorithm", ["ad", "ad_gru"])
def test_after_a_weight_update_the_context_is_kept_and_read_with_the_new_weights(algorithm):
    """The fine-tuned imitator keeps its context: refresh() recomputes every token (and the
    cache, or the recurrent state) from the stored inputs, equal to a player that had played
    the same steps with the new weights from the start."""
    torch.manual_seed(0)
    extra = {"heads": 2, "dropout": 0.0} if algorithm == "ad" else {}
    model = imitation.build(algorithm, 5, cnn="grid", stack=1, context=16, d_model=16, layers=2, **extra).eval()
    player = imitation.policy(model, 2, greedy=False, seed=0)
    player.remember_inputs()
    rng = np.random.default_rng(0)
    steps = []
    for t in range(22):  # past one window advance
        obs = np.zeros((2, 84, 84, 1), np.uint8)
        for i, (x, y) in enumerate(rng.integers(9, size=(2, 2))):
            obs[i, 9 * y:9 * y + 9, 9 * x:9 * x + 9] = 255
        steps.append((obs, rng.integers(5, size=2), rng.random(2).astype(np.float32), np.array([t % 7 == 0] * 2)))
    for s in steps[:-1]:
        player.act(*s)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    player.refresh()
    assert int(player.length[0]) > 0  # the context is still there
    player.act(*steps[-1])
    fresh = imitation.policy(model, 2, greedy=False, seed=0)
    for s in steps:
        fresh.act(*s)
    torch.testing.assert_close(player.last_logits, fresh.last_logits, atol=1e-4, rtol=1e-4)


def test_fine_tuning_follows_the_return_per_copy_and_keeps_its_context():
    """Policy-gradient fine-tuning: no update before a copy has an earlier return to compare
    with; a better-than-usual episode makes its own actions likelier, a worse one less likely;
    each copy's windows hold only its own steps; the context survives the updates."""
    from understudy.algorithms.policy_gradient_finetune import PolicyGradientFinetune

    torch.manual_seed(0)
    model = imitation.build("ad", 5, cnn="grid", stack=1, context=40, d_model=16, layers=1, heads=2,
                            dropout=0.0).eval()
    player = imitation.policy(model, 2, greedy=False, seed=0)
    learner = PolicyGradientFinetune(model, player, 2, lr=1e-2, updates=3, advantage_clip=3.0)
    seen = []
    real_update = learner._update

    def spy(i, length, advantage):
        window = learner._window(i, length, advantage)
        with torch.no_grad():
            before = _logp(model, window)
        real_update(i, length, advantage)
        with torch.no_grad():
            after = _logp(model, window)
        seen.append((i, advantage, window, after - before))

    learner._update = spy
    returns = {0: [0.0, 4.0, 0.0], 1: [2.0, 2.0, 1.0]}  # paid on the last step of each episode
    rng = np.random.default_rng(0)
    for episode in range(3):
        for t in range(20):
            # each copy's frames carry its own mark (copy 0: 10, copy 1: 20), and the step
            obs = np.zeros((2, 84, 84, 1), np.uint8)
            obs[0, 0, 0], obs[1, 0, 0] = 10, 20
            obs[:, 1, 0] = t
            a = player.act(obs, rng.integers(5, size=2), [0.0, 0.0], [t == 0, t == 0])
            rewards = np.array([returns[i][episode] if t == 19 else 0.0 for i in (0, 1)])
            learner.on_step(obs, a, rewards, np.array([t == 19, t == 19]))
    # copy 0: 4 after [0] (better: 4 / (0 + 1), clipped at 3), then 0 after [0, 4] (worse:
    # -2 / (2 + 1)); copy 1: 2 after [2] (no change: no update), then 1 after [2, 2] (worse)
    assert [(i, round(adv, 3)) for i, adv, *_ in seen] == [(0, 3.0), (0, round(-2 / 3, 3)), (1, -1.0)]
    better, worse = seen[0][3], seen[1][3]
    assert better > 0 and worse < 0  # log-likelihood of its own actions: up when better, down when worse
    for i, _, window, _ in seen:
        marks = window["obs"][..., 0, 0, 0]
        assert set(np.unique(marks[window["row"] >= 0])) == {10 * (i + 1)}  # only its own steps
        assert int(window["mask"].sum()) == 20  # the finished episode's 20 steps, each once
        # the episode boundaries play gave: a new episode every 20 steps of the stream
        starts = window["row"][window["new_episode"]]
        assert len(starts) and all(window["obs"][window["new_episode"]][..., 1, 0, 0] == 0)
    assert learner.steps_trained == 9
    assert int(player.length[0]) > 20  # the context survived the updates


def test_fine_tuning_scores_each_step_once_when_windows_overlap_and_refuses_bc():
    """A 20-step episode after 7 steps of context, with a 16-step model context: the two
    windows that cover it overlap (the older one is clipped at the stream's start); every
    step of the episode is scored exactly once. BC has no context to fine-tune in."""
    from understudy.algorithms.policy_gradient_finetune import PolicyGradientFinetune

    model = imitation.build("ad", 5, cnn="grid", stack=1, context=16, d_model=16, layers=1, heads=2,
                            dropout=0.0).eval()
    learner = PolicyGradientFinetune(model, imitation.policy(model, 1, seed=0), 1, lr=1e-3, updates=1,
                                     advantage_clip=3.0)
    obs = np.zeros((1, 84, 84, 1), np.uint8)
    for t in range(27):
        learner.steps[0].append((obs[0, ..., -1], 0, 0.0, t if t < 7 else t - 7))
    window = learner._window(0, 20, 1.0)
    scored = window["row"][window["mask"]]
    assert sorted(scored.tolist()) == list(range(7, 27))
    bc = imitation.build("bc", 5, cnn="grid", stack=1)
    with pytest.raises(ValueError, match="cross-episode imitator"):
        PolicyGradientFinetune(bc, None, 1, lr=1e-3, updates=1, advantage_clip=3.0)


def test_runs_that_played_a_budget_are_cut_to_the_same_episodes():
    from understudy.platform.evaluate import _same_episodes

    res = {"runs": [{"returns": [[1, 2, 3], [4, 5, 6]], "lengths": [[9, 9, 9], [9, 9, 9]],
                     "truncated": [[0, 0, 0], [0, 0, 0]], "episodes_in_context": [[0, 1, 2], [0, 1, 2]]},
                    {"returns": [[7, 8], [9, 10]], "lengths": [[5, 5], [5, 5]], "truncated": [[0, 0], [0, 0]],
                     "episodes_in_context": [[0, 1], [0, 1]]}]}
    _same_episodes(res)
    assert [r["returns"] for r in res["runs"]] == [[[1, 2], [4, 5]], [[7, 8], [9, 10]]]
    assert res["runs"][0]["lengths"] == [[9, 9], [9, 9]]


def test_every_agent_s_runs_are_ordered_and_cut_before_the_report():
    """Scratch learners get each imitator run's env steps, so their runs end with different
    episode counts (19 and 23 at the full scale of minatar_breakout_to_spaceinvaders); the
    report stacks runs, so every agent's runs must be cut, not only the deferred baselines'."""
    from understudy.platform.evaluate import _order_and_cut
    from understudy.platform.report import _stack

    results = {("scratch", "MinAtar/SpaceInvaders"): {"runs": [
        {"seed": 1, "returns": [[1.0] * 23] * 8, "lengths": [[5] * 23] * 8},
        {"seed": 0, "returns": [[2.0] * 19] * 8, "lengths": [[5] * 19] * 8}]},
        ("teacher", "MinAtar/SpaceInvaders"): {"runs": [{"seed": 0, "returns": [[3.0] * 4]}]}}
    _order_and_cut(results)
    scratch = results[("scratch", "MinAtar/SpaceInvaders")]
    assert [r["seed"] for r in scratch["runs"]] == [0, 1]
    assert _stack(scratch, "returns").shape == (16, 19)
    assert results[("teacher", "MinAtar/SpaceInvaders")]["runs"][0]["returns"] == [[3.0] * 4]


def _logp(model, window):
    batch = imitation.to_torch(window)
    logits = model(batch)
    mask = batch["mask"]
    return float(torch.log_softmax(logits[mask], -1).gather(-1, batch["action"][mask][:, None]).sum())


def _freeway_player(tmp_path) -> str:
    """A checkpoint of an AD that plays MinAtar Freeway well: it mostly presses UP (the chicken
    crosses the road), whatever it sees."""
    from understudy.envs.minatar import ACTION_MEANINGS

    torch.manual_seed(0)
    model = imitation.build("ad", 6, cnn="minatar", stack=1, context=32, d_model=16, layers=1, heads=2,
                            dropout=0.0)
    with torch.no_grad():
        model.head.weight.mul_(0.1)
        model.head.bias.zero_()
        model.head.bias[ACTION_MEANINGS.index("UP")] = 3.0
    imitation.save(model, str(tmp_path / "ck"), {})
    return str(tmp_path / "ck")


@pytest.mark.parametrize("lr, updates, destroyed", [(3e-5, 1, False), (0.3, 20, True)])
def test_forgetting_replay_shows_what_fine_tuning_did_to_the_old_game(tmp_path, lr, updates, destroyed):
    """An imitator that plays MinAtar Freeway well (it mostly presses UP) is fine-tuned on
    Breakout, then replays Freeway frozen. Gentle fine-tuning (the default lr) keeps the old
    game; fine-tuning made destructive (a huge lr, many steps) must show up as a collapse in
    the replay: the forgetting rows really play the tuned weights."""
    from understudy.platform.players import Agent, play

    agent = Agent("imitator", _freeway_player(tmp_path), run_seed=0)
    cap = 500  # Freeway's clock is 2,500 steps: a shorter cap, the same for both plays
    before = play._function(agent, "MinAtar/Freeway", {}, 10, 1, cap, False, 0)
    tuned = play._function(Agent("finetune", str(tmp_path / "ck"), run_seed=0), "MinAtar/Breakout", {}, 10, 1,
                           cap, False, 0, "heldout", {"lr": lr, "updates": updates, "advantage_clip": 3.0},
                           ("MinAtar/Freeway",))
    old, after = float(np.mean(before["returns"])), float(np.mean(tuned["replays"]["MinAtar/Freeway"]))
    assert old >= 2 and tuned["gradient_steps"] > 0, (old, tuned["gradient_steps"])
    if destroyed:
        assert after < 0.3 * old, (old, after)
    else:
        assert after >= 0.7 * old, (old, after)




def test_an_env_step_budget_plays_whole_episodes_up_to_each_copys_share():
    """Baselines play the env steps the imitator played: each copy plays whole episodes until
    it has taken its share of the budget, then every copy is cut to the fewest episodes."""
    from understudy.envs.minatar import MinAtarVectorEnv

    env = MinAtarVectorEnv("MinAtar/SpaceInvaders", 4, same_step_reset=True)
    rng = np.random.default_rng(0)

    class Random:
        def act(self, obs, *_):
            return rng.integers(6, size=len(obs))

    budget = 2_000
    played = play_episodes(env, Random(), 0, 6, episodes=10**6, seed=0, env_steps=budget)
    counts = {len(p) for p in played}
    assert len(counts) == 1 and counts.pop() >= 1  # the same episodes in every copy
    steps = [sum(e["length"] for e in p) for p in played]
    longest = max(e["length"] for p in played for e in p)
    # the copy that played fewest episodes kept them all: it reached its share (500)
    assert max(steps) >= budget // 4 and sum(steps) <= budget + 4 * longest


def test_default_fine_tuning_does_not_collapse_a_policy_that_plays_well(tmp_path):
    """An imitator that plays MinAtar Freeway well, fine-tuned on Freeway itself with the
    default settings: its returns stay at the frozen imitator's level (the self-imitation it
    replaced fell below random on Dark Room)."""
    from understudy.platform.config import FinetuneParams
    from understudy.platform.players import Agent, play

    _freeway_player(tmp_path)
    cap = 300
    frozen = play._function(Agent("imitator", str(tmp_path / "ck"), run_seed=0), "MinAtar/Freeway", {}, 8, 2,
                            cap, False, 0)
    tuned = play._function(Agent("finetune", str(tmp_path / "ck"), run_seed=0), "MinAtar/Freeway", {}, 8, 2,
                           cap, False, 0, "heldout", FinetuneParams().model_dump())
    assert tuned["gradient_steps"] > 0
    before, after = np.mean(frozen["returns"]), np.mean(np.array(tuned["returns"])[:, -4:])
    assert before >= 1 and after >= 0.7 * before, (before, after)
