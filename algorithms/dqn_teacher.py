"""The DQN teacher (`DQNTeacher`, RLlib's DQN with one subclass): Atari frames stored once,
batches built with numpy, handed to the RLlib DQN Learner directly.

RLlib's EpisodeReplayBuffer keeps every observation as a full 84x84x4 stack inside episode
objects and, per update, samples 32 one-step episodes that the learner connector pipeline
turns back into a batch. On 2 CPU cores that bookkeeping costs more than the gradient step.
`FrameReplayBuffer` stores each step's newest 84x84 frame once (a stack is four slot indices)
and returns a train batch of arrays that goes to the RLlib DQN Learner as it is
(`learner_group.update(batch=...)`): same module, same loss (double/dueling/n-step), same
target updates; only the storage and the batch assembly differ.

Slots form one ring. Every write bumps the slot's generation; a transition is sampleable only
while the generations of all the frames it reads (its stack and its next observation's) are
the ones it was stored with, so the ring may overwrite anything at any time. Episodes from
many envs and many `sample()` calls interleave freely: an episode's open end is remembered by
id and continues where it was, wherever the other envs wrote in between.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from ray.rllib.algorithms.dqn import DQN
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.core.columns import Columns

from understudy.algorithms import rllib_compat

STACK = 4
logger = logging.getLogger(__name__)


class FrameReplayBuffer:
    """Uniform replay over frame-stacked Atari transitions, `capacity` frames of memory. It
    takes the episode chunks RLlib's env runners return and gives train batches for RLlib's
    DQN Learner (`DQNTeacher` builds it and is its only user)."""

    def __init__(self, capacity: int = 100_000, frame_shape=(84, 84), seed: int | None = None, **_):
        if capacity < 2 * STACK:
            raise ValueError(f"replay buffer capacity: {capacity} is too small; valid: at least {2 * STACK}")
        self.capacity = int(capacity)
        self.frames = np.zeros((capacity, *frame_shape), np.uint8)
        self.gen = np.full(capacity, -1, np.int64)  # the write number that filled each slot
        self.stack = np.zeros((capacity, STACK), np.int64)  # an observation's frame slots
        self.stack_gen = np.full((capacity, STACK), -2, np.int64)
        self.is_obs = np.zeros(capacity, bool)  # False: a padding frame of an episode's first stack
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, bool)
        self.next = np.full(capacity, -1, np.int64)  # slot of the next observation, -1: none yet
        self.next_gen = np.full(capacity, -2, np.int64)
        self.writes = 0
        self.open: dict[str, tuple[int, int]] = {}  # episode id -> (last obs slot, its generation)
        self.rng = np.random.default_rng(seed)
        self.added_steps = 0

    def __len__(self) -> int:
        return min(self.writes, self.capacity)

    # -- adding -------------------------------------------------------------------------------

    def _write(self, frame: np.ndarray) -> int:
        slot = self.writes % self.capacity
        self.frames[slot] = frame
        self.gen[slot] = self.writes
        self.writes += 1
        self.is_obs[slot] = False
        self.next[slot] = -1
        self.terminated[slot] = False
        return slot

    def _write_obs(self, stack_slots: np.ndarray) -> int:
        slot = stack_slots[-1]
        self.stack[slot] = stack_slots
        self.stack_gen[slot] = self.gen[stack_slots]
        self.is_obs[slot] = True
        return slot

    def add(self, episodes, **_) -> None:
        """SingleAgentEpisode chunks from the env runners (uint8 stacks, newest frame last)."""
        for ep in episodes:
            obs = ep.get_observations()
            actions, rewards = ep.get_actions(), ep.get_rewards()
            n = len(actions)
            if n == 0:
                continue
            if np.shape(obs[0])[-1] != STACK:
                raise ValueError(f"frame replay stores {STACK}-frame stacks; this env gives "
                                 f"{np.shape(obs[0])[-1]} (protocol.frame_stack): use prioritized "
                                 "replay (RLlib's buffer) or frame_stack: 4")
            known = self.open.pop(ep.id_, None)
            # Continue only if the open end's whole stack is still stored (its older frames
            # are overwritten before it is).
            if known is not None and self.gen[known[0]] == known[1] and \
                    (self.gen[self.stack[known[0]]] == self.stack_gen[known[0]]).all():
                prev = known[0]  # this chunk's first observation is that episode's last one
            else:  # a new episode, or its end was overwritten: store the full first stack
                first = np.moveaxis(np.asarray(obs[0]), -1, 0)
                prev = self._write_obs(np.array([self._write(f) for f in first]))
            for t in range(n):
                slot = self._write(np.asarray(obs[t + 1])[..., -1])
                self._write_obs(np.append(self.stack[prev][1:], slot))
                self.action[prev], self.reward[prev] = actions[t], rewards[t]
                self.next[prev], self.next_gen[prev] = slot, self.gen[slot]
                # Only the episode's last transition can end it (truncation is not an end:
                # the target bootstraps from the next observation).
                self.terminated[prev] = bool(ep.is_terminated) and t == n - 1
                prev = slot
            if not (ep.is_terminated or ep.is_truncated):
                self.open[ep.id_] = (prev, int(self.gen[prev]))
            self.added_steps += n
        if len(self.open) > 4096:  # episodes that were dropped unfinished (env runner reset)
            self.open = {k: v for k, v in self.open.items() if self.gen[v[0]] == v[1]}

    # -- sampling -----------------------------------------------------------------------------

    def _valid(self, idx: np.ndarray) -> np.ndarray:
        ok = self.is_obs[idx] & (self.next[idx] >= 0)
        ok &= (self.gen[self.stack[idx]] == self.stack_gen[idx]).all(-1)
        nxt = self.next[idx]
        ok &= self.gen[nxt] == self.next_gen[idx]
        ok &= (self.gen[self.stack[nxt]] == self.stack_gen[nxt]).all(-1)
        return ok

    def sample(self, num_items: int, n_step: int = 1, gamma: float = 0.99, **_):
        """A train batch for the RLlib DQN Learner: `num_items` uniform transitions, n-step
        returns cut at episode ends (the loss discounts by gamma ** n_step per sample)."""
        idx = np.empty(0, np.int64)
        for _ in range(1000):
            draw = self.rng.integers(len(self), size=2 * num_items)
            idx = np.concatenate([idx, draw[self._valid(draw)]])
            if len(idx) >= num_items:
                break
        else:
            raise RuntimeError(f"replay: fewer than {num_items} sampleable transitions in {len(self)} slots")
        idx = idx[:num_items]
        ret = self.reward[idx].astype(np.float32)
        steps = np.ones(num_items, np.float32)
        done = self.terminated[idx].copy()
        last = self.next[idx]
        for k in range(1, n_step):
            # Go on from `last` where the episode has not ended and the next transition exists.
            more = ~done & self._valid(last)
            if not more.any():
                break
            ret[more] += gamma ** k * self.reward[last[more]]
            steps[more] += 1
            done[more] = self.terminated[last[more]]
            last = np.where(more, self.next[last], last)
        batch = {Columns.OBS: self._stacks(idx), Columns.NEXT_OBS: self._stacks(last),
                 Columns.ACTIONS: self.action[idx], Columns.REWARDS: ret,
                 Columns.TERMINATEDS: done, "n_step": steps,
                 "weights": np.ones(num_items, np.float32)}
        return rllib_compat.train_batch(batch, env_steps=num_items)

    def _stacks(self, idx: np.ndarray) -> np.ndarray:
        """(B, 84, 84, 4) uint8, the layout the env runner acts on."""
        out = np.empty((len(idx), *self.frames.shape[1:], STACK), np.uint8)
        for k in range(STACK):  # one frame plane at a time: 8x faster than a moveaxis copy
            out[..., k] = self.frames[self.stack[idx, k]]
        return out

    # -- what RLlib's DQN asks of a replay buffer ---------------------------------------------

    def get_metrics(self) -> dict:
        return {"frames_stored": len(self), "steps_added_lifetime": self.added_steps}

    def get_state(self) -> dict:
        return {"writes": self.writes}  # the frames are not checkpointed (as RLlib's default)

    def set_state(self, state: dict) -> None:
        pass


class DQNTeacher(DQN):
    """RLlib's DQN with frame replay, read top to bottom as CleanRL's dqn_atari.py reads: act
    and store, then (after the warm-up) train on replayed batches at a fixed replay ratio, and
    hand the new weights to the actors. Every override of RLlib's DQN the teacher needs is in
    this class, and each says why; PPO and APPO use RLlib's algorithms as they are.

    Differs from RLlib's own training step in five ways:
    - the Learner gets a ready batch from `FrameReplayBuffer` (no per-sample episode objects,
      no learner connector);
    - no priorities to update (this buffer is uniform; prioritised replay uses RLlib's DQN);
    - the replay ratio is kept per env step sampled, not per sample call (RLlib's round-robin
      weights), so it is exact however many steps a call returns;
    - when the env runner and the Learner share this process (no remote env runners, a local
      Learner) the env runner's module uses the Learner's parameter tensors: nothing to copy or
      `ray.put` after each update (RLlib's sync_weights does both);
    - in that case one call also runs the whole iteration (`min_sample_timesteps_per_iteration`
      env steps, still sample-then-update every few steps) and reduces the env runner's and the
      Learner's metrics once, at its end, instead of after every 4-step sample and every update
      (a profile put them at about 1.5 ms of a 40 ms step). Each Tune result still counts
      every step and update.

    (Sampling in a thread while the Learner updates was tried and measured slower on 2 cores:
    the two contend for the GIL and the cores, 39 ms per step against 36 ms in sequence.)
    """

    def setup(self, config) -> None:
        self.batches_owed = 0.0  # fraction of a batch carried from one sample call to the next
        super().setup(config)

    def _create_local_replay_buffer_if_necessary(self, config):  # RLlib's private hook: rllib_compat
        # RLlib's DQN on the new API stack validates that its buffer is an EpisodeReplayBuffer
        # type, so the config names that type; the teacher replays frames instead.
        buffer = config["replay_buffer_config"]
        return FrameReplayBuffer(capacity=buffer["capacity"], seed=config.get("seed"))

    # -- one iteration ----------------------------------------------------------------------

    def training_step(self) -> None:
        from ray.rllib.utils.metrics import (
            ENV_RUNNER_RESULTS,
            ENV_RUNNER_SAMPLING_TIMER,
            LEARNER_RESULTS,
            NUM_ENV_STEPS_SAMPLED_LIFETIME,
            REPLAY_BUFFER_ADD_DATA_TIMER,
            REPLAY_BUFFER_RESULTS,
            TIMERS,
        )

        config, buffer, metrics = self.config, self.local_replay_buffer, self.metrics
        in_process = self.env_runner_group.num_remote_env_runners() == 0 and self.learner_group.is_local
        sampled = metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        until = sampled + (config.min_sample_timesteps_per_iteration or 0) if in_process else sampled
        # After a restore the buffer starts empty (replay is not checkpointed): refill it to
        # `learning_starts` steps, as at the start, before training again.
        starts = config.num_steps_sampled_before_learning_starts
        refill = max(min(starts, buffer.capacity // 2), 2 * config.total_train_batch_size)
        # The replay ratio holds exactly over time: batches owed = env steps sampled (once
        # learning has started) x training_intensity / batch size. A sample call can return a
        # step more than asked (a vector env whose episode just ended).
        per_step = (config.training_intensity or 0) / config.total_train_batch_size
        updated = False
        while True:
            with metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
                episodes, env_runner_results = self._sample(with_metrics=not in_process)
            if env_runner_results is not None:
                metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
            steps = sum(len(episode) for episode in episodes)
            sampled += steps
            with metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
                buffer.add(episodes)
            if sampled >= starts and buffer.added_steps >= refill:
                # Without a training_intensity, one batch per sample call (RLlib's native ratio).
                self.batches_owed += steps * per_step if per_step else 1
                updates = int(self.batches_owed)
                self.batches_owed -= updates
                if updates:
                    self._send_weights(self._learn(updates, sampled, reduce=not in_process), in_process)
                    updated = True
            if sampled >= until:
                break
        if in_process:
            metrics.aggregate([self.env_runner_group.local_env_runner.get_metrics()], key=ENV_RUNNER_RESULTS)
            if updated:
                metrics.aggregate([_without_td_errors(self._local_learner().metrics.reduce())], key=LEARNER_RESULTS)
        for key, value in buffer.get_metrics().items():
            metrics.log_value((REPLAY_BUFFER_RESULTS, key), value, reduce="item")

    def _sample(self, with_metrics: bool):
        """(episodes, env runner metrics or None), as RLlib's DQN samples."""
        out = rllib_compat.sample_episodes(self.env_runner_group, self.config.sample_timeout_s, with_metrics)
        return out if with_metrics else (out, None)

    def _learn(self, updates: int, sampled: int, reduce: bool):
        """`updates` Learner updates on batches from the buffer -> the Learner's results, or
        None when `reduce` is False (the local Learner's metrics are reduced once, later, which
        RLlib's Learner allows through a private argument: rllib_compat.update_learners)."""
        from ray.rllib.utils.metrics import (
            LEARNER_RESULTS,
            LEARNER_UPDATE_TIMER,
            NUM_ENV_STEPS_SAMPLED_LIFETIME,
            REPLAY_BUFFER_SAMPLE_TIMER,
            TIMERS,
        )

        config, buffer, metrics = self.config, self.local_replay_buffer, self.metrics
        timesteps = {NUM_ENV_STEPS_SAMPLED_LIFETIME: sampled}  # schedules and target updates read it
        learner_results = None
        for _ in range(updates):
            with metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
                batch = buffer.sample(config.total_train_batch_size, n_step=config.n_step, gamma=config.gamma)
            with metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                learner_results = rllib_compat.update_learners(self.learner_group, batch, timesteps, reduce)
            if reduce:
                learner_results = [_without_td_errors(result) for result in learner_results]
                metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        return learner_results if reduce else None

    def _send_weights(self, learner_results, in_process: bool) -> None:
        from ray.rllib.utils.metrics import ALL_MODULES, SYNCH_WORKER_WEIGHTS_TIMER, TIMERS

        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            group = self.env_runner_group
            if in_process and self._share_weights():
                # The env runner's module reads the Learner's parameters themselves, updated in
                # place by the optimizer: only the weights' version number (which the recorder
                # writes as each step's policy version) needs to follow.
                rllib_compat.set_weights_seq_no(group.local_env_runner,
                                                rllib_compat.weights_seq_no(self._local_learner()))
            else:
                policies = None if learner_results is None else set(learner_results[0].keys()) - {ALL_MODULES}
                group.sync_weights(from_worker_or_learner_group=self.learner_group, policies=policies,
                                   inference_only=True)

    def _local_learner(self):
        return next(iter(self.learner_group.foreach_learner(lambda learner: learner))).get()

    def _share_weights(self) -> bool:
        """Learner and env runner in one process: point the env runner's module at the
        Learner's parameter tensors (once), so acting always uses the latest update, as a
        single-process DQN loop does, with no copy per update. False (and nothing changed)
        if they differ."""
        runner = self.env_runner_group.local_env_runner
        if getattr(runner, "understudy_shares_learner_weights", False):
            return True
        from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID

        source = dict(self._local_learner().module[DEFAULT_MODULE_ID].named_parameters())
        target = dict(runner.module.named_parameters())
        if not target or any(name not in source or source[name].shape != p.shape
                             or source[name].device != p.device  # a GPU Learner: copy weights
                             for name, p in target.items()):
            return False
        with torch.no_grad():
            for name, p in target.items():
                p.data = source[name].data
        runner.understudy_shares_learner_weights = True
        return True


def _without_td_errors(learner_result: dict) -> dict:
    """The per-sample TD errors are for priorities, not for the logs."""
    from ray.rllib.utils.metrics import TD_ERROR_KEY

    for module_results in learner_result.values():
        module_results.pop(TD_ERROR_KEY, None)
    return learner_result


class DQNTeacherLearner(DQNTorchLearner):
    """RLlib's DQN Learner with two CPU costs taken out of every update (measured on 2 cores,
    a 30 ms update of the Nature CNN on 32 samples):

    - Adam runs fused (one kernel over all parameters): 0.3 ms a step instead of 3.2 ms for
      torch's default per-tensor loop on CPU. Same algorithm, same hyperparameters (its
      epsilon from `learner_config_dict["adam_epsilon"]`, the preset's 1.5e-4).
    - One fused norm over all gradients serves both the non-finite check and RLlib's clipping
      by global norm (DQN's default, `grad_clip` 40), instead of RLlib's `isfinite` on every
      parameter twice (about 3 ms) and a second norm, per parameter, for the clip.
      Non-finite gradients are zeroed where non-finite, as RLlib does. The config sets
      `torch_skip_nan_gradients=True`, which only turns RLlib's own per-parameter checks off.
    """

    def configure_optimizers_for_module(self, module_id, config=None):
        params = self.get_parameters(rllib_compat.learner_module(self, module_id))
        eps = self.config.learner_config_dict.get("adam_epsilon", 1e-8)  # 1e-8: torch's default
        self.register_optimizer(module_id=module_id, optimizer=torch.optim.Adam(params, eps=eps, fused=True),
                                params=params, lr_or_lr_schedule=config.lr)

    def postprocess_gradients(self, gradients_dict):
        grads = [g for g in gradients_dict.values() if g is not None]
        if not grads:
            return super().postprocess_gradients(gradients_dict)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if not torch.isfinite(norm):
            logger.warning("non-finite gradients in this update: set to zero where non-finite")
            gradients_dict = {k: None if g is None else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                              for k, g in gradients_dict.items()}
            return super().postprocess_gradients(gradients_dict)
        modules = list(self.module.keys())
        config = self.config.get_config_for_module(modules[0])
        optimizers = self.get_optimizers_for_module(modules[0])
        if len(modules) != 1 or len(optimizers) != 1 or config.grad_clip_by != "global_norm" or not config.grad_clip:
            return super().postprocess_gradients(gradients_dict)
        # RLlib's clip by global norm, on the norm already taken: scale by min(1, clip / norm).
        torch._foreach_mul_(grads, torch.clamp(config.grad_clip / (norm + 1e-6), max=1.0))
        self.metrics.log_value(key=(modules[0], f"gradients_{optimizers[0][0]}_global_norm"), value=norm, window=1)
        return gradients_dict
