"""A fast RLlib EnvRunner for Atari and MinAtar: the family's vector env (ale-py's C++ one for
ALE), one batched forward pass per step for all its envs, and recording of every step as it is
taken.

RLlib's default SingleAgentEnvRunner runs connector pipelines and grows an Episode object per
env per step in Python; here each step's columns are written for the whole batch of envs at
once into per-env buffers, and the SingleAgentEpisode chunks the Learner expects are cut from
them when an episode ends or `sample()` returns. It keeps the
roles of the new API stack: the RLModule computes actions, the Learner consumes episodes,
weights arrive through `set_state` (inherited), metrics go to the MetricsLogger.
"""
from __future__ import annotations

import math
import time
import uuid

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from understudy.algorithms import rllib_compat
from understudy.algorithms.recording import recorder_for
from understudy.envs import family_of, transform_reward
from understudy.envs.families import ALE

# Steps an env's buffer holds before they are moved out to that env's list of spilled runs:
# memory stays (num_envs x CHUNK) however long an episode lasts.
CHUNK = 128


class _EpisodeState:
    """What is known of one env's current episode besides its buffered steps."""

    def __init__(self, t_started: int = 0, id_: str | None = None):
        self.id_ = id_ or uuid.uuid4().hex
        self.t_started = t_started  # the episode step the current chunk starts at
        self.episode_return = 0.0  # the whole episode's raw score, across chunks
        self.length = 0
        self.started = time.perf_counter()
        self.spilled: list[dict] = []  # runs of steps moved out of the buffer, oldest first


class _StepBuffers:
    """Per-env columns of the steps each env has taken since its chunk began, written a whole
    batch of envs at a time with fancy indexing (no per-env Python per step). Row i, position
    p holds the step env i took at chunk step p; `obs[i, p]` is the observation it acted on and
    `obs[i, p + 1]` what came back."""

    def __init__(self, num_envs: int, obs_space, num_actions: int):
        n, c = num_envs, CHUNK
        self.obs = np.zeros((n, c + 1, *obs_space.shape), obs_space.dtype)
        self.action = np.zeros((n, c), np.int64)
        self.reward = np.zeros((n, c), np.float32)  # the raw score
        self.version = np.zeros((n, c), np.int64)
        self.global_step = np.zeros((n, c), np.int64)
        self.lives = np.zeros((n, c), np.int64)
        self.epsilon = np.zeros((n, c), np.float32)
        self.outputs = np.zeros((n, c, num_actions), np.float32)  # logits or Q-values
        self.logp = np.zeros((n, c), np.float32)
        self.pos = np.zeros(n, np.int64)  # steps in each env's buffer

    STEP_COLUMNS = ("action", "reward", "version", "global_step", "lives", "epsilon", "outputs", "logp")

    def take(self, i: int) -> dict:
        """Env i's buffered steps (copies) and the observations around them; the buffer keeps
        only the newest observation, as the first of what follows."""
        p = int(self.pos[i])
        run = {k: getattr(self, k)[i, :p].copy() for k in self.STEP_COLUMNS}
        run["obs"] = self.obs[i, :p + 1].copy()
        self.obs[i, 0] = self.obs[i, p]
        self.pos[i] = 0
        return run


class AtariVectorEnvRunner(SingleAgentEnvRunner):
    """SingleAgentEnvRunner with a lean sampling loop over ale-py's AtariVectorEnv.

    env_config: game, protocol (AtariProtocol fields), reward (the transform the Learner sees;
    episodes, recordings and metrics keep the raw score), max_episode_steps, record (optional:
    root, session, algorithm, shard_rows) and env_threads (C++ threads for the vector env).
    """

    def __init__(self, *, config, **kwargs):
        self._state: list[_EpisodeState | None] | None = None  # per env id; set by _reset_all
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
    # the action last sent for it (a transition: the env is `active`) or, when no action is
    # pending (the env is new or its last step ended an episode), the first observation of a
    # new episode. Per batch, every column is written for all envs at once; Python runs per
    # env only when an episode starts or ends, or a buffer fills.

    def _sample(self, *, num_timesteps=None, num_episodes=None, explore: bool,  # RLlib's private hook: rllib_compat
                random_actions: bool = False, force_reset: bool = False):
        if num_timesteps is None and num_episodes is None:
            num_episodes = self.num_envs
        if force_reset or num_episodes is not None or self._needs_initial_reset or self._state is None:
            self._reset_all()
        if self.module is not None and self.module.training:
            self.module.eval()  # once, instead of RLlib toggling train/eval on every forward
        buf, done_chunks, finished = self._buf, [], []
        ts = episodes_done = 0
        runners = self.config.num_env_runners or 1
        while (ts < num_timesteps) if num_timesteps is not None else (episodes_done < num_episodes):
            obs, rewards, terminated, truncated, info = self._batch
            ids = np.asarray(info["env_id"])
            lives = np.asarray(info["lives"])
            active = self._active[ids]
            j = np.flatnonzero(active)
            if len(j):  # transitions: the pending action's step, written for all envs at once
                i = ids[j]
                p = buf.pos[i]
                buf.obs[i, p + 1] = obs[j]
                buf.reward[i, p] = rewards[j]
                buf.lives[i, p] = self._lives[i]  # the lives the action was chosen with
                for name, pending in self._pending.items():
                    getattr(buf, name)[i, p] = pending[i]
                if self.recorder is not None:
                    buf.global_step[i, p] = self.recorder.take_steps(len(j))
                buf.pos[i] = p + 1
                self._lives[i] = lives[j]
                ts += len(j)
                ended = np.asarray(terminated)[j] | np.asarray(truncated)[j]
                for k in np.flatnonzero(ended):
                    env = int(i[k])
                    state = self._state[env]
                    done_chunks.append(self._emit(env, bool(terminated[j[k]]), bool(truncated[j[k]])))
                    finished.append((state.length, state.episode_return, time.perf_counter() - state.started))
                    self._active[env] = False
                    episodes_done += 1
                for env in i[~ended & (buf.pos[i] == CHUNK)]:  # a full buffer spills its steps
                    self._state[env].spilled.append(buf.take(env))
            for k in np.flatnonzero(~active):  # a new episode starts with this observation
                env = int(ids[k])
                self._state[env] = _EpisodeState()
                buf.obs[env, 0] = obs[k]
                buf.pos[env] = 0
                self._lives[env] = lives[k]
                self._active[env] = True
            # Act for this batch (an env that just finished gets an ignored autoreset action).
            t_global = (self.num_env_steps_sampled_lifetime // runners + ts) * runners
            actions, logp, outputs, epsilon = self._act(obs, explore, random_actions, t_global)
            for name, value in (("action", actions), ("logp", logp), ("outputs", outputs),
                                ("epsilon", epsilon), ("version", rllib_compat.weights_seq_no(self))):
                self._pending[name][ids] = value
            self.env.send(actions)
            self._batch = self.env.recv()
        if num_timesteps is not None:  # ongoing episodes go out as chunks and continue
            for env in np.flatnonzero(self._active):
                if self._buf.pos[env] or self._state[env].spilled:
                    done_chunks.append(self._emit(int(env), False, False))
        # Episode metrics are means, minima and maxima over a window of the latest episodes:
        # only the newest window's worth of this call's episodes can be in it.
        window = math.ceil(self.config.metrics_num_episodes_for_smoothing / runners)
        for length, ret, sec in finished[-window:]:
            rllib_compat.log_episode_metrics(self, length, ret, sec)
        rllib_compat.increase_sampled_metrics(self, ts, episodes_done)
        return done_chunks

    def _emit(self, env: int, terminated: bool, truncated: bool) -> SingleAgentEpisode:
        """Env `env`'s steps since its chunk began -> a SingleAgentEpisode chunk for the Learner
        (rewards transformed) and a run of the recording (raw scores)."""
        state = self._state[env]
        runs = state.spilled + [self._buf.take(env)]
        state.spilled = []
        cols = runs[0] if len(runs) == 1 else {
            k: np.concatenate([r[k][:-1] for r in runs[:-1]] + [runs[-1][k]]) if k == "obs"
            else np.concatenate([r[k] for r in runs]) for k in runs[0]}
        n = len(cols["action"])
        state.episode_return += float(cols["reward"].sum())
        state.length += n
        if self.recorder is not None:
            self.recorder.extend(
                state.id_, frames=self.family.newest_frame(cols["obs"][:-1]), actions=cols["action"],
                rewards=cols["reward"], policy_versions=cols["version"], lives=cols["lives"],
                epsilon=cols["epsilon"] if self._is_dqn else None,
                policy_outputs=cols["outputs"], global_steps=cols["global_step"])
            if terminated or truncated:
                self.recorder.end(state.id_, terminated=terminated, truncated=truncated,
                                  env_return=state.episode_return)
        extra = {WEIGHTS_SEQ_NO: cols["version"]}
        if not self._is_dqn:
            extra.update({Columns.ACTION_DIST_INPUTS: cols["outputs"], Columns.ACTION_LOGP: cols["logp"]})
        chunk = SingleAgentEpisode(
            id_=state.id_, observations=cols["obs"], infos=[{} for _ in range(n + 1)], actions=cols["action"],
            rewards=transform_reward(cols["reward"], self._reward).astype(np.float32),
            extra_model_outputs=extra, terminated=terminated, truncated=truncated, t_started=state.t_started,
            observation_space=self._spaces[0], action_space=self._spaces[1], len_lookback_buffer=0)
        state.t_started += n  # where the episode's next chunk starts
        return chunk

    def _reset_all(self) -> None:
        if self.recorder is not None:
            self.recorder.drop_open()  # unfinished episodes are dropped whole
        obs, info = self.env.reset(seed=rllib_compat.env_seed(self) if self._needs_initial_reset else None)
        n = len(obs)
        zeros = np.zeros(n, bool)
        # The reset batch is handled like any received batch with nothing pending.
        self._batch = (obs, np.zeros(n, np.float32), zeros, zeros, info)
        num_actions = int(self._spaces[1].n)
        self._buf = _StepBuffers(self.num_envs, self._spaces[0], num_actions)
        self._state = [None] * self.num_envs
        self._active = np.zeros(self.num_envs, bool)
        self._lives = np.zeros(self.num_envs, np.int64)
        # per env: the action in flight and what the policy said with it (a _StepBuffers column each)
        self._pending = {name: np.zeros_like(getattr(self._buf, name)[:, 0])
                         for name in ("action", "logp", "outputs", "epsilon", "version")}
        self._is_dqn = hasattr(self.module, "compute_q_values")
        self._needs_initial_reset = False

    @torch.inference_mode()
    def _act(self, obs: np.ndarray, explore: bool, random_actions: bool, t: int):
        """Batched actions for all envs -> (actions, their log-probabilities, the policy outputs
        to record: Q-values or logits, epsilon). Random actions are the uniform policy: zero logits."""
        n, num_actions = len(obs), self._spaces[1].n
        if random_actions:
            return (np.random.randint(num_actions, size=n), np.full(n, -np.log(num_actions), np.float32),
                    np.zeros((n, num_actions), np.float32), 1.0)
        batch = {Columns.OBS: torch.from_numpy(np.ascontiguousarray(obs))}
        if self._is_dqn:  # epsilon-greedy on Q-values
            q = self.module.compute_q_values(batch)["qf_preds"]
            epsilon = 0.0
            if explore:
                self.module.epsilon_schedule.update(t)
                epsilon = float(self.module.epsilon_schedule.get_current_value())
            greedy = q.argmax(-1).numpy()
            explore_mask = np.random.random(n) < epsilon
            actions = np.where(explore_mask, np.random.randint(q.shape[-1], size=n), greedy)
            return actions, np.zeros(n, np.float32), q.numpy(), epsilon
        out = (self.module.forward_exploration(batch, t=t) if explore
               else self.module.forward_inference(batch))
        logits = out[Columns.ACTION_DIST_INPUTS]
        # The categorical distribution RLlib's PPO module uses, without torch.distributions'
        # per-call argument checks (a third of the acting time at 128 envs).
        logp_all = torch.log_softmax(logits, -1)
        actions = torch.multinomial(logp_all.exp(), 1, replacement=True)[:, 0] if explore else logits.argmax(-1)
        logp = logp_all.gather(1, actions[:, None])[:, 0]
        return actions.numpy(), logp.numpy(), logits.numpy(), 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self):
        if self.recorder is not None:
            self.recorder.close()  # finished episodes only; open ones are dropped
        super().stop()

