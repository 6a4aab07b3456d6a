"""The DQN teacher's frame replay: every sampled batch must equal what the env showed."""
import numpy as np
import pytest
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID

from understudy.algorithms.dqn_teacher import FrameReplayBuffer
from understudy.algorithms.presets import DQNSettings


def frame(ep: int, t: int) -> np.ndarray:
    """A frame that says which episode and step it is (2x2 keeps the test small)."""
    return np.full((2, 2), ep * 40 + t + 10, np.uint8)


def stack(ep: int, t: int) -> np.ndarray:
    # The first observation's older frames are whatever the env put there: distinct values
    # (not frames of this episode) so the buffer must store them, not infer them.
    frames = [frame(ep, u) if u >= 0 else np.full((2, 2), 1 + ep % 5 - u, np.uint8)
              for u in range(t - 3, t + 1)]
    return np.stack(frames, -1)


def chunk(ep: int, start: int, end: int, terminated=False, truncated=False, id_=None):
    """Steps start..end-1 of episode `ep`: observations start..end, reward = t + 1."""
    return SingleAgentEpisode(
        id_=id_ or f"ep{ep}", observations=[stack(ep, t) for t in range(start, end + 1)],
        actions=[t % 3 for t in range(start, end)], rewards=[float(t + 1) for t in range(start, end)],
        terminated=terminated, truncated=truncated, t_started=start, len_lookback_buffer=0).to_numpy()


def decode(obs: np.ndarray) -> tuple[int, int]:
    newest = int(obs[0, 0, -1]) - 10
    return newest // 40, newest % 40


def check(batch, gamma=0.5, n_step=1, ends=None):
    b = batch.policy_batches[DEFAULT_POLICY_ID]
    for i in range(len(b[Columns.ACTIONS])):
        ep, t = decode(b[Columns.OBS][i])
        np.testing.assert_array_equal(b[Columns.OBS][i], stack(ep, t))
        steps = int(b["n_step"][i])
        assert 1 <= steps <= n_step
        np.testing.assert_array_equal(b[Columns.NEXT_OBS][i], stack(ep, t + steps))
        assert b[Columns.ACTIONS][i] == t % 3
        assert b[Columns.REWARDS][i] == pytest.approx(sum(gamma ** k * (t + k + 1) for k in range(steps)))
        assert bool(b[Columns.TERMINATEDS][i]) == (ends is not None and ends.get(ep) == t + steps)


def test_interleaved_chunks_give_exact_transitions_and_terminal_flags():
    buf = FrameReplayBuffer(capacity=500, frame_shape=(2, 2), seed=0)
    # Three envs' episodes arrive interleaved across sample calls; episode 1 ends terminated
    # at step 9, episode 2 truncated at 6, episode 3 keeps going.
    buf.add([chunk(1, 0, 4), chunk(2, 0, 3), chunk(3, 0, 2)])
    buf.add([chunk(3, 2, 5), chunk(1, 4, 9, terminated=True), chunk(2, 3, 6, truncated=True)])
    buf.add([chunk(3, 5, 8)])
    assert len(buf.open) == 1  # only episode 3 is still open
    for _ in range(20):
        check(buf.sample(16, gamma=0.5), ends={1: 9})


def test_n_step_returns_stop_at_the_episode_end():
    buf = FrameReplayBuffer(capacity=500, frame_shape=(2, 2), seed=1)
    buf.add([chunk(1, 0, 6, terminated=True), chunk(2, 0, 3)])
    buf.add([chunk(2, 3, 7)])
    for _ in range(20):
        check(buf.sample(16, n_step=3, gamma=0.5), n_step=3, ends={1: 6})
    b = buf.sample(200, n_step=3, gamma=0.5).policy_batches[DEFAULT_POLICY_ID]
    assert set(b["n_step"]) == {1.0, 2.0, 3.0}  # shortened near ends and at the newest steps


def test_overwritten_frames_are_never_sampled():
    buf = FrameReplayBuffer(capacity=24, frame_shape=(2, 2), seed=2)
    for ep in range(1, 6):  # 5 episodes of 8 steps: 12 slots each, the ring wraps
        buf.add([chunk(ep, 0, 4, id_=f"e{ep}")])
        buf.add([chunk(ep, 4, 8, terminated=True, id_=f"e{ep}")])
        for _ in range(10):
            check(buf.sample(8), ends={e: 8 for e in range(1, 6)})
    b = buf.sample(64).policy_batches[DEFAULT_POLICY_ID]
    assert {decode(o)[0] for o in b[Columns.OBS]} <= {4, 5}  # older episodes are gone


def test_continuation_after_its_start_was_overwritten_restarts_cleanly():
    buf = FrameReplayBuffer(capacity=16, frame_shape=(2, 2), seed=3)
    buf.add([chunk(1, 0, 3)])
    buf.add([chunk(2, 0, 12, terminated=True)])  # overwrites episode 1's open end
    buf.add([chunk(1, 3, 6, terminated=True)])  # stored again from its own first stack
    for _ in range(10):
        check(buf.sample(8), ends={1: 6, 2: 12})


def test_bad_capacity_is_refused():
    with pytest.raises(ValueError, match="capacity: 3"):
        FrameReplayBuffer(capacity=3)


def test_double_q_pass_gives_rllibs_values_with_half_the_backward():
    """The teacher module's double-Q forward (next observations without gradients) must give
    exactly RLlib's values and the same gradients for the loss."""
    import gymnasium as gym
    import torch
    from ray.rllib.algorithms.dqn.dqn_learner import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from understudy.algorithms.teachers import CNN_FILTERS, PixelDefaultDQNTorchRLModule

    torch.manual_seed(0)
    module = PixelDefaultDQNTorchRLModule(
        observation_space=gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), action_space=gym.spaces.Discrete(18),
        model_config={**vars(DefaultModelConfig(conv_filters=CNN_FILTERS["small"], head_fcnet_hiddens=[64])),
                      "double_q": True, "dueling": False, "num_atoms": 1, "v_min": -10.0, "v_max": 10.0,
                      "epsilon": [(0, 1.0), (1000, 0.05)]})
    module.make_target_networks()
    rng = np.random.default_rng(0)
    batch = {Columns.OBS: torch.from_numpy(rng.integers(0, 255, (8, 84, 84, 4), np.uint8)),
             Columns.NEXT_OBS: torch.from_numpy(rng.integers(0, 255, (8, 84, 84, 4), np.uint8))}
    outputs, grads = [], []
    for forward in (module._forward_train, lambda b: DefaultDQNTorchRLModule._forward_train(module, b)):
        module.zero_grad()
        out = forward(batch)
        (out[QF_PREDS] ** 2).sum().backward()  # a loss of the online Q-values, as DQN's
        outputs.append({k: out[k].detach() for k in (QF_PREDS, QF_NEXT_PREDS, QF_TARGET_NEXT_PREDS)})
        grads.append([p.grad.clone() for p in module.parameters() if p.grad is not None])
    assert outputs[0][QF_NEXT_PREDS].requires_grad is False
    for k in outputs[0]:
        torch.testing.assert_close(outputs[0][k], outputs[1][k])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("num_envs", [1, 4])
def test_dqn_teacher_learns_from_frame_replay_and_acts_with_the_learners_weights(ray_session, tmp_path, num_envs):
    from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
    from ray.rllib.utils.metrics import LEARNER_RESULTS, NUM_MODULE_STEPS_TRAINED_LIFETIME

    from understudy.algorithms.dqn_teacher import DQNTeacher, DQNTeacherLearner
    from understudy.algorithms.teachers import recording_algorithm, teacher_config
    from understudy.histories import shards

    config = teacher_config(
        algorithm="dqn", game="Breakout", seed=0, env_steps=10_000, env_steps_per_iter=64,
        protocol={"full_action_space": True}, max_episode_steps=30,
        record={"root": str(tmp_path), "session": "fr", "algorithm": "dqn"}, cnn="small", num_envs=num_envs,
        lr=2.5e-4, reward="sign", settings=DQNSettings(learning_starts=64, buffer_size=1000, n_step=3,
                                                       dueling=True, double_q=True, epsilon_steps=100))
    algo = recording_algorithm(config.algo_class)(config=config)
    try:
        for _ in range(4):
            result = algo.train()
        assert isinstance(algo, DQNTeacher) and isinstance(algo.local_replay_buffer, FrameReplayBuffer)
        learner = algo._local_learner()
        assert isinstance(learner, DQNTeacherLearner)
        assert algo.local_replay_buffer.capacity == 1000
        assert learner.get_optimizers_for_module(DEFAULT_MODULE_ID)[0][1].defaults["eps"] == 1.5e-4
        stats = result[LEARNER_RESULTS][DEFAULT_MODULE_ID]
        # 8 trained samples per env step after learning starts (replay ratio 32 per 4 steps),
        # also with 4 envs, whose sample calls (3 steps each for n_step 3) can return a step more.
        sampled = result["env_runners"]["num_env_steps_sampled_lifetime"]
        assert stats[NUM_MODULE_STEPS_TRAINED_LIFETIME] == pytest.approx(8 * (sampled - 64), abs=32 * num_envs)
        assert np.isfinite(stats["qf_loss"])
        # The env runner acts with the Learner's parameters themselves, so with its latest update.
        acting = dict(algo.env_runner.module.named_parameters())
        for name, p in learner.module[DEFAULT_MODULE_ID].named_parameters():
            if name in acting:
                assert acting[name].data_ptr() == p.data_ptr()
        assert algo.env_runner._weights_seq_no == learner._weights_seq_no > 1
        # One training step runs the whole iteration, and its result counts all of it.
        assert result["num_training_step_calls_per_iteration"] == 1
        per_call = 3 * num_envs  # fragments of n_step steps per env
        assert 4 * 64 <= sampled <= 4 * (64 + per_call + num_envs)
        check_gradient_postprocessing(learner)
    finally:
        algo.stop()
    versions = np.asarray(shards.open_run(str(tmp_path), "dqn-Breakout-s0-fr").to_table()["policy_version"])
    assert versions.max() > versions.min()  # the recorded history spans updates


def check_gradient_postprocessing(learner):
    """The teacher Learner's one-norm clip and non-finite check give RLlib's own result."""
    import torch
    from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
    from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID

    assert learner.config.grad_clip == 40.0 and learner.config.grad_clip_by == "global_norm"
    key = (DEFAULT_MODULE_ID, "gradients_default_optimizer_global_norm")
    gen = torch.Generator().manual_seed(0)
    for scale, poison in ((100.0, False), (0.001, False), (100.0, True)):
        grads = {pid: torch.randn(p.shape, generator=gen) * scale for pid, p in learner._params.items()}
        if poison:  # one NaN and one inf: zeroed where non-finite, then clipped, as RLlib does
            first, second = list(grads)[:2]
            grads[first].view(-1)[0], grads[second].view(-1)[-1] = float("nan"), float("inf")
        ours = learner.postprocess_gradients({k: g.clone() for k, g in grads.items()})
        ours_norm = learner.metrics.peek(key)
        clean = {k: torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for k, g in grads.items()}
        theirs = DQNTorchLearner.postprocess_gradients(learner, clean)
        assert torch.isclose(torch.as_tensor(ours_norm), torch.as_tensor(learner.metrics.peek(key)), rtol=1e-5)
        for k in grads:
            assert torch.isfinite(ours[k]).all()
            torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-7)
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in ours.values()]))
        assert float(total) == pytest.approx(min(40.0, float(ours_norm)), rel=1e-4)


@pytest.mark.slow
def test_dqn_teacher_with_a_remote_env_runner_keeps_the_ratio_and_syncs_weights(ray_session, tmp_path):
    """The other path of the training step: samples and metrics from a remote env runner after
    every call, weights sent to it after every update."""
    from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID
    from ray.rllib.utils.metrics import LEARNER_RESULTS, NUM_MODULE_STEPS_TRAINED_LIFETIME

    from understudy.algorithms.teachers import recording_algorithm, teacher_config

    config = teacher_config(
        algorithm="dqn", game="Breakout", seed=0, env_steps=10_000, env_steps_per_iter=64,
        protocol={"full_action_space": True}, max_episode_steps=30,
        record={"root": str(tmp_path), "session": "remote", "algorithm": "dqn"}, cnn="small", num_envs=1,
        num_env_runners=1, lr=2.5e-4, reward="sign",
        settings=DQNSettings(learning_starts=64, buffer_size=1000, epsilon_steps=100))
    algo = recording_algorithm(config.algo_class)(config=config)
    try:
        for _ in range(3):
            result = algo.train()
        sampled = result["env_runners"]["num_env_steps_sampled_lifetime"]
        trained = result[LEARNER_RESULTS][DEFAULT_MODULE_ID][NUM_MODULE_STEPS_TRAINED_LIFETIME]
        assert sampled >= 3 * 64 and trained == pytest.approx(8 * (sampled - 64), abs=32)
        learner_weights = algo.learner_group.get_weights()[DEFAULT_MODULE_ID]
        runner_weights = algo.env_runner_group.foreach_env_runner(
            lambda runner: runner.module.get_state(inference_only=True), local_env_runner=False)[0]
        assert runner_weights and set(runner_weights) <= set(learner_weights)
        for name, value in runner_weights.items():  # the runner acts with the latest update
            np.testing.assert_array_equal(np.asarray(value), np.asarray(learner_weights[name]))
    finally:
        algo.stop()


@pytest.mark.slow
def test_understudy_teach_runs_a_dqn_teacher_through_tune(ray_session, tmp_path):
    """`understudy teach` with a DQN config. Tune hands each trial its config as a dict, in which
    RLlib resolves the frame replay's class path to the class itself; RLlib's own checks and
    buffer set-up took only a path, so every DQN teach stage failed before it started."""
    import json
    import os

    from mlflow.tracking import MlflowClient

    from understudy.platform import cli

    cfg = tmp_path / "dqn.yaml"
    cfg.write_text("kind: teach\nname: dqn-tiny\nalgorithm: dqn\ngames: [Breakout]\nseeds: [0]\n"
                   "env_steps: 400\nenv_steps_per_iter: 100\nmax_episode_steps: 40\nnum_envs_per_runner: 4\n"
                   "checkpoint_interval: 2\n"
                   "dqn: {n_step: 3, dueling: true, learning_starts: 100, buffer_size: 2000, epsilon_steps: 200}\n")
    ws = tmp_path / "ws"
    assert cli.main(["--workspace", str(ws), "teach", str(cfg)]) == 0
    (run,) = json.loads((ws / "stages" / "teach-dqn-tiny.json").read_text())["runs"]
    assert run["recorded_steps"] > 0 and run["checkpoint"]
    with open(os.path.join(os.path.dirname(run["checkpoint"]), "result.json")) as f:
        last = json.loads(f.read().splitlines()[-1])
    assert last["replay_buffer"]["frames_stored"] > 0  # the frame replay, not RLlib's buffer
    sampled = last["env_runners"]["num_env_steps_sampled_lifetime"]
    trained = last["learners"]["default_policy"]["num_module_steps_trained_lifetime"]
    assert sampled >= 400 and trained == pytest.approx(8 * (sampled - 100), abs=32 * 4)
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    assert client.get_run(run["mlflow_run_id"]).data.params["algorithm"] == "dqn"
