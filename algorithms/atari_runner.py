"""A fast RLlib EnvRunner for Atari and MinAtar: the family's vector env (ale-py's C++ one for
ALE), one batched forward pass per step for all its envs, and recording of every step as it is
taken.

RLlib's default SingleAgentEnvRunner runs connector pipelines and grows an Episode object per
env per step in Python; here the loop keeps plain per-env lists and builds the
SingleAgentEpisode chunks that the Learner expects once per `sample()` call. It keeps the
roles of the new API stack: the RLModule computes actions, the Learner consumes episodes,
weights arrive through `set_state` (inherited), metrics go to the MetricsLogger.
"""
from __future__ import annotations

import time
import uuid

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from understudy.algorithms.recording import recorder_for
from understudy.envs import family_of, transform_reward
from understudy.envs.families import ALE


class _OpenEpisode:
    """The not-yet-returned part (chunk) of one env's current episode."""

    def __init__(self, obs: np.ndarray, lives: int, t_started: int = 0, id_: str | None = None):
        self.id_ = id_ or uuid.uuid4().hex
        self.t_started = t_started
        self.obs = [obs]
        self.actions, self.rewards, self.extra = [], [], {}
        self.lives = lives
        self.episode_return = 0.0  # the whole episode's, across chunks
        self.length = 0
        self.started = time.perf_counter()

    def to_chunk(self, spaces, terminated=False, truncated=False) -> SingleAgentEpisode:
        return SingleAgentEpisode(
            id_=self.id_, observations=self.obs, actions=self.actions, rewards=self.rewards,
            extra_model_outputs={k: v for k, v in self.extra.items()},
            terminated=terminated, truncated=truncated, t_started=self.t_started,
            observation_space=spaces[0], action_space=spaces[1], len_lookback_buffer=0,
        ).to_numpy()

    def continuation(self) -> "_OpenEpisode":
        nxt = _OpenEpisode(self.obs[-1], self.lives, self.t_started + len(self.actions), self.id_)
        nxt.episode_return, nxt.length, nxt.started = self.episode_return, self.length, self.started
        return nxt


class AtariVectorEnvRunner(SingleAgentEnvRunner):
    """SingleAgentEnvRunner with a lean sampling loop over ale-py's AtariVectorEnv.

    env_config: game, protocol (AtariProtocol fields), reward (the transform the Learner sees;
    episodes, recordings and metrics keep the raw score), max_episode_steps, record (optional:
    root, session, algorithm, shard_rows) and env_threads (C++ threads for the vector env).
    """

    def __init__(self, *, config, **kwargs):
        self._open: list[_OpenEpisode | None] | None = None  # per env id
        self._pending: list | None = None  # per env id: the action in flight and its outputs
        self._batch = None  # the last received batch, not yet acted on
        self.recorder = None
        super().__init__(config=config, **kwargs)
        self.recorder = recorder_for(self)

    def make_env(self) -> None:
        if self.env is not None:
            self.env.close()
        cfg = self.config.env_config
        num_envs = self.config.num_envs_per_env_runner
        self.family = family_of(cfg["game"])
        options = {}
        if self.family is ALE:
            # Asynchronous halves: the policy acts on one half while the C++ threads step the other.
            batch = num_envs // 2 if cfg.get("async_envs", True) and num_envs >= 2 and num_envs % 2 == 0 else 0
            options = {"protocol": cfg.get("protocol", {}), "batch_size": batch,
                       "num_threads": cfg.get("env_threads", 0)}
        self.env = self.family.make_vector_env(cfg["game"], num_envs, max_episode_steps=cfg.get("max_episode_steps"),
                                               **options)
        self.num_envs = num_envs
        self._reward = cfg["reward"]
        self._needs_initial_reset = True
        self._spaces = (self.env.single_observation_space, self.env.single_action_space)

    # -- sampling ---------------------------------------------------------------------------
    # The loop is recv -> act -> send. What `recv` returns for an env is either the result of
    # the action last sent for it (a transition) or, when no action is pending (the env is new
    # or its last step ended an episode), the first observation of a new episode.

    def _sample(self, *, num_timesteps=None, num_episodes=None, explore: bool,
                random_actions: bool = False, force_reset: bool = False):
        if num_timesteps is None and num_episodes is None:
            num_episodes = self.num_envs
        if force_reset or num_episodes is not None or self._needs_initial_reset or self._open is None:
            self._reset_all()
        if self.module is not None and self.module.training:
            self.module.eval()  # once, instead of RLlib toggling train/eval on every forward
        done_chunks: list[SingleAgentEpisode] = []
        ts = episodes_done = 0
        runners = self.config.num_env_runners or 1
        while (ts < num_timesteps) if num_timesteps is not None else (episodes_done < num_episodes):
            obs, rewards, terminated, truncated, info = self._batch
            # One contiguous copy for the batch (the env reuses its buffers); episodes keep
            # per-env views of it.
            obs = np.ascontiguousarray(obs)
            ids = info["env_id"]
            for j, i in enumerate(ids):
                ep, pending = self._open[i], self._pending[i]
                if pending is None:  # a new episode starts with this observation
                    self._open[i] = _OpenEpisode(obs[j], int(info["lives"][j]))
                    continue
                ts += 1
                reward = float(rewards[j])  # the raw score: recorded and reported
                action, extra, epsilon, outputs, version = pending
                if self.recorder is not None:
                    self.recorder.step(ep.id_, frame=self.family.newest_frame(ep.obs[-1]), action=action,
                                       reward=reward, policy_version=version, lives=ep.lives,
                                       epsilon=epsilon, policy_outputs=outputs)
                ep.obs.append(obs[j])
                ep.actions.append(action)
                ep.rewards.append(float(transform_reward(reward, self._reward)))  # what the Learner sees
                for k, v in extra.items():
                    ep.extra.setdefault(k, []).append(v)
                ep.lives = int(info["lives"][j])
                ep.episode_return += reward
                ep.length += 1
                if terminated[j] or truncated[j]:
                    term, trunc = bool(terminated[j]), bool(truncated[j])
                    done_chunks.append(ep.to_chunk(self._spaces, term, trunc))
                    self._log_episode_metrics(ep.length, ep.episode_return, time.perf_counter() - ep.started)
                    if self.recorder is not None:
                        self.recorder.end(ep.id_, terminated=term, truncated=trunc,
                                          env_return=ep.episode_return)
                    self._open[i] = None
                    episodes_done += 1
            # Act for this batch (an env that just finished gets an ignored autoreset action).
            t_global = (self.num_env_steps_sampled_lifetime // runners + ts) * runners
            actions, extra, epsilon, outputs = self._act(obs, explore, random_actions, t_global)
            for j, i in enumerate(ids):
                self._pending[i] = None if self._open[i] is None else (
                    int(actions[j]), {k: v[j] for k, v in extra.items()}, epsilon,
                    None if outputs is None else outputs[j], self._weights_seq_no)
            self.env.send(actions)
            self._batch = self.env.recv()
        ongoing = []
        if num_timesteps is not None:
            for i, ep in enumerate(self._open):
                if ep is not None and ep.actions:
                    ongoing.append(ep.to_chunk(self._spaces))
                    self._open[i] = ep.continuation()
        self._increase_sampled_metrics(ts, episodes_done)
        return done_chunks + ongoing

    def _reset_all(self) -> None:
        if self.recorder is not None:
            self.recorder.drop_open()  # unfinished episodes are dropped whole
        obs, info = self.env.reset(seed=self._seed if self._needs_initial_reset else None)
        n = len(obs)
        zeros = np.zeros(n, bool)
        # The reset batch is handled like any received batch with nothing pending.
        self._batch = (obs, np.zeros(n, np.float32), zeros, zeros, info)
        self._open = [None] * self.num_envs
        self._pending = [None] * self.num_envs
        self._needs_initial_reset = False

    @torch.inference_mode()
    def _act(self, obs: np.ndarray, explore: bool, random_actions: bool, t: int):
        """Batched actions for all envs -> (actions, extra model outputs per env, epsilon,
        policy outputs to record: Q-values or logits)."""
        n = len(obs)
        if random_actions:
            return (np.random.randint(self.env.single_action_space.n, size=n), {}, 1.0, None)
        batch = {Columns.OBS: torch.from_numpy(obs)}
        weights = np.full(n, self._weights_seq_no)
        if hasattr(self.module, "compute_q_values"):  # DQN: epsilon-greedy on Q-values
            q = self.module.compute_q_values(batch)["qf_preds"]
            epsilon = 0.0
            if explore:
                self.module.epsilon_schedule.update(t)
                epsilon = float(self.module.epsilon_schedule.get_current_value())
            greedy = q.argmax(-1).numpy()
            explore_mask = np.random.random(n) < epsilon
            actions = np.where(explore_mask, np.random.randint(q.shape[-1], size=n), greedy)
            return actions, {WEIGHTS_SEQ_NO: weights}, epsilon, q.numpy()
        out = (self.module.forward_exploration(batch, t=t) if explore
               else self.module.forward_inference(batch))
        logits = out[Columns.ACTION_DIST_INPUTS]
        if explore:
            dist = torch.distributions.Categorical(logits=logits)
            actions = dist.sample()
        else:
            actions = logits.argmax(-1)
            dist = torch.distributions.Categorical(logits=logits)
        extra = {Columns.ACTION_DIST_INPUTS: logits.numpy(),
                 Columns.ACTION_LOGP: dist.log_prob(actions).numpy(), WEIGHTS_SEQ_NO: weights}
        return actions.numpy(), extra, None, logits.numpy()

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self):
        if self.recorder is not None:
            self.recorder.close()  # finished episodes only; open ones are dropped
        super().stop()

