"""Teachers: RLlib (new API stack) PPO, APPO and DQN on Atari, and the hooks that record
everything they play.

Observations stay uint8 end to end (env, episodes, replay buffers, train batches): the
RLModules below scale pixels to [0, 1] inside their CNN encoders. That keeps a DQN replay
buffer of 100k stacks at 2.8 GB instead of 11 GB, and the recorded frames are exactly the
bytes the policy saw.

Two env runners record: `AtariVectorEnvRunner` (algorithms/atari_runner.py, the fast default,
on ale-py's C++ vector env) and `RecordingEnvRunner` below (RLlib's own SingleAgentEnvRunner
plus recording, for any gymnasium env and as the reference the fast one is compared with).
"""
from __future__ import annotations

import json
import os

import gymnasium
import numpy as np
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.torch.encoder import TorchCNNEncoder
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO
from ray.tune.registry import register_env

from understudy.algorithms import rllib_compat
from understudy.algorithms.encoders import CNNS, conv_filters
from understudy.algorithms.presets import SETTINGS
from understudy.algorithms.recording import recorder_for, run_id_for
from understudy.algorithms.teacher_kinds import names as teacher_kinds
from understudy.envs import AtariProtocol, make_atari_env, newest_frame, transform_reward

ENV_NAME = "understudy_atari"
ALGORITHMS = teacher_kinds()  # each built below (teacher_config); what each learns: teacher_kinds.py

# RLlib's conv_filters of each CNN encoder, from its one declaration (algorithms/encoders.py).
CNN_FILTERS = {name: conv_filters(name) for name in CNNS}
CNN_HEADS = {"nature": [256], "small": [256], "minatar": [128]}  # hidden units after the CNN


class _LearnedReward(gymnasium.RewardWrapper):
    """The Learner's reward (`transform_reward`); the raw score stays in info["raw_reward"]."""

    def __init__(self, env, how: str):
        super().__init__(env)
        self.how = how

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "raw_reward": float(reward)}
        return obs, float(transform_reward(reward, self.how)), terminated, truncated, info


def _env_creator(env_config: dict):
    protocol = AtariProtocol(**env_config.get("protocol", {}))
    env = make_atari_env(env_config["game"], protocol, max_episode_steps=env_config.get("max_episode_steps"))
    return _LearnedReward(env, env_config["reward"])


register_env(ENV_NAME, _env_creator)


# ---- RLModules that take uint8 pixels -------------------------------------------------------

class _ScalePixels(torch.nn.Module):
    def forward(self, x):
        return x.to(torch.float32).mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x


def _scale_pixels_in_cnns(module) -> None:
    for m in list(module.modules()):
        if isinstance(m, TorchCNNEncoder) and not isinstance(m.net[0], _ScalePixels):
            m.net = torch.nn.Sequential(_ScalePixels(), *m.net)


def _pixel_module(base):
    """A subclass of RLlib's default torch module `base` whose CNN encoders accept uint8."""

    class PixelModule(base):
        def setup(self):
            super().setup()
            _scale_pixels_in_cnns(self)

    PixelModule.__name__ = PixelModule.__qualname__ = "Pixel" + base.__name__
    return PixelModule


from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule  # noqa: E402
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule  # noqa: E402
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule  # noqa: E402

# Module-level names, so checkpoints can import them again.
PixelDefaultPPOTorchRLModule = _pixel_module(DefaultPPOTorchRLModule)
PixelDefaultAPPOTorchRLModule = _pixel_module(DefaultAPPOTorchRLModule)


class PixelDefaultDQNTorchRLModule(_pixel_module(DefaultDQNTorchRLModule)):
    def _forward_train(self, batch):  # RLlib's hook, private by name: rllib_compat
        # RLlib's double-Q pass runs the online net on obs and next obs as one batch with
        # gradients on, so the backward pass covers twice the samples the loss needs: the
        # next-obs values only choose the bootstrap action. Same values, half the backward.
        from ray.rllib.algorithms.dqn.dqn_learner import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS

        if not self.uses_double_q or self.num_atoms > 1 or Columns.STATE_IN in batch:
            return super()._forward_train(batch)
        out = {QF_PREDS: self.compute_q_values({Columns.OBS: batch[Columns.OBS]})[QF_PREDS]}
        with torch.no_grad():
            out[QF_NEXT_PREDS] = self.compute_q_values({Columns.OBS: batch[Columns.NEXT_OBS]})[QF_PREDS]
            out[QF_TARGET_NEXT_PREDS] = self.forward_target({Columns.OBS: batch[Columns.NEXT_OBS]})[QF_PREDS]
        return out


PIXEL_MODULES = {"ppo": PixelDefaultPPOTorchRLModule, "appo": PixelDefaultAPPOTorchRLModule,
                 "dqn": PixelDefaultDQNTorchRLModule}


# ---- the reference recording runner (any gymnasium env) -----------------------------------

class RecordingEnvRunner(SingleAgentEnvRunner):
    """RLlib's SingleAgentEnvRunner plus recording: after each `sample()` it stitches the
    returned episode chunks into whole episodes (an episode can span several sample calls and
    policy versions) and records each finished one."""

    def __init__(self, *, config: AlgorithmConfig, **kwargs):
        super().__init__(config=config, **kwargs)
        self.recorder = recorder_for(self)

    def sample(self, **kwargs):
        episodes = super().sample(**kwargs)
        if self.recorder is not None:
            for chunk in episodes:
                self._record_chunk(chunk, random_actions=kwargs.get("random_actions", False))
        return episodes

    def _record_chunk(self, chunk, random_actions: bool) -> None:
        n = len(chunk)
        obs = chunk.get_observations(slice(0, n))  # the observations actions were chosen on
        infos = chunk.get_infos(slice(0, n))
        actions = chunk.get_actions(slice(0, n))
        # The raw score of each step (the chunk holds what the Learner sees).
        rewards = [info["raw_reward"] for info in chunk.get_infos(slice(1, n + 1))]
        versions = (chunk.get_extra_model_outputs(WEIGHTS_SEQ_NO, slice(0, n))
                    if not random_actions else np.full(n, rllib_compat.weights_seq_no(self)))
        outputs = None
        if not random_actions:
            try:
                outputs = chunk.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS, slice(0, n))
            except KeyError:
                pass
        self.recorder.extend(chunk.id_, frames=newest_frame(np.asarray(obs)), actions=actions, rewards=rewards,
                             policy_versions=versions, lives=[info.get("lives", 0) for info in infos],
                             epsilon=1.0 if random_actions else None, policy_outputs=outputs)
        if chunk.is_done:
            final = chunk.get_infos(-1)
            env_return = float(final["episode"]["r"]) if "episode" in final else float("nan")
            self.recorder.end(chunk.id_, terminated=bool(chunk.is_terminated),
                              truncated=bool(chunk.is_truncated), env_return=env_return)

    def get_metrics(self):
        # RLlib sums the chunk's rewards (what the Learner saw); the reported episode return is
        # the raw score, which RecordEpisodeStatistics put in each episode's last info. RLlib
        # logs the finished episodes in this order.
        self._raw_returns = iter([float(eps.get_infos(-1)["episode"]["r"])
                                  for eps in rllib_compat.done_episodes_for_metrics(self)])
        return super().get_metrics()

    def _log_episode_metrics(self, length, ret, sec):  # RLlib's private hook: rllib_compat
        super()._log_episode_metrics(length, next(getattr(self, "_raw_returns", iter(())), ret), sec)

    def stop(self):
        if self.recorder is not None:
            self.recorder.close()
        super().stop()



# ---- checkpoints that keep the recorded history consistent ----------------------------------

POLICY_WEIGHTS, POLICY_META = "teacher_policy.pt", "teacher_policy.json"
RECORDING_STATE = "understudy_recording.json"


def _flush_recorder(env_runner) -> None:
    if getattr(env_runner, "recorder", None) is not None:
        env_runner.recorder.flush()


def _resync_recorder(env_runner) -> None:
    if getattr(env_runner, "recorder", None) is not None:
        env_runner.recorder.drop_open()
        env_runner.recorder.sync_from_catalog()


def recording_algorithm(algo_class, extra_results=None):
    """`algo_class` (PPO, APPO, DQN) whose checkpoints also pin the recorded history; with
    `extra_results` (a function returning a dict), what it returns, measured in the trial's
    process, is added to every training result.

    Saving a checkpoint first flushes every env runner's finished episodes to shards, then
    notes which shards exist. Restoring from it takes every shard written after that out of
    the catalog (to rewound/): the learner goes back to that point, so the history it plays
    from there replaces what was recorded after the checkpoint, with no policy version
    duplicated and none missing. Episodes still running at save time belong to no shard yet
    and are dropped whole on restore."""

    class Teacher(algo_class):
        def step(self):
            result = super().step()
            return {**result, **extra_results()} if extra_results else result

        def _recorded_run(self):
            record = self.config.env_config.get("record")
            if not record:
                return None, None
            run_id = run_id_for(record["session"], record["algorithm"],
                                self.config.env_config["game"], int(self.config.seed or 0))
            return record["root"], run_id

        def save_checkpoint(self, checkpoint_dir: str):
            root, run_id = self._recorded_run()
            if root:
                from understudy.histories.shards import read_catalog

                self.env_runner_group.foreach_env_runner(_flush_recorder, local_env_runner=True)
                state = {"run_id": run_id, "root": root,
                         "shards": [e["shard"] for e in read_catalog(root, run_id)]}
                os.makedirs(checkpoint_dir, exist_ok=True)
                with open(os.path.join(checkpoint_dir, RECORDING_STATE), "w") as f:
                    json.dump(state, f)
            result = super().save_checkpoint(checkpoint_dir)
            _export_policy(self, checkpoint_dir)
            return result

        def load_checkpoint(self, checkpoint_dir: str) -> None:
            super().load_checkpoint(checkpoint_dir)
            path = os.path.join(checkpoint_dir, RECORDING_STATE)
            root, run_id = self._recorded_run()
            if root and os.path.exists(path):
                from understudy.histories.shards import rewind_run

                with open(path) as f:
                    state = json.load(f)
                rewind_run(root, run_id, set(state["shards"]))
                self.env_runner_group.foreach_env_runner(_resync_recorder, local_env_runner=True)

    Teacher.__name__ = Teacher.__qualname__ = algo_class.__name__
    return Teacher


# ---- configs --------------------------------------------------------------------------------

def teacher_config(*, algorithm: str, game, seed, env_steps: int, env_steps_per_iter: int,
                   protocol: dict, max_episode_steps: int | None, record: dict | None, cnn: str,
                   num_envs: int, lr: float, reward: str, settings, num_env_runners: int = 0,
                   runner: str = "vector", env_threads: int = 1,
                   num_gpus_per_learner: int = 0) -> AlgorithmConfig:
    """An RLlib config for one teacher with `env_steps` of budget; `game` and `seed` may be Tune
    search spaces. `settings` is the algorithm's dataclass (algorithms/presets.py): every
    hyper-parameter comes from there or from these arguments, none is defaulted here.
    `num_gpus_per_learner` is where the Learner runs (platform/resources.py chooses it); it is
    not a hyper-parameter, and env runners always act on the CPU."""
    from understudy.algorithms.atari_runner import AtariVectorEnvRunner

    if not isinstance(settings, SETTINGS[algorithm]):
        raise TypeError(f"{algorithm} teacher: settings must be {SETTINGS[algorithm].__name__}, "
                        f"got {type(settings).__name__}")
    s = settings
    env_config = {"game": game, "protocol": protocol, "max_episode_steps": max_episode_steps,
                  "record": record, "env_threads": env_threads, "reward": reward}
    per_runner = max(1, env_steps_per_iter // max(1, num_env_runners))
    if algorithm == "ppo":
        from ray.rllib.algorithms.ppo import PPOConfig

        config = (PPOConfig()
                  .training(lr=[[0, lr], [env_steps, 0.0]] if s.anneal_lr else lr,
                            train_batch_size_per_learner=env_steps_per_iter,
                            minibatch_size=max(1, env_steps_per_iter // s.num_minibatches),
                            num_epochs=s.num_epochs, gamma=s.gamma, lambda_=s.gae_lambda,
                            clip_param=s.clip_param, vf_clip_param=s.vf_clip_param,
                            vf_loss_coeff=s.vf_loss_coeff, entropy_coeff=s.entropy_coeff,
                            grad_clip=s.grad_clip, grad_clip_by="global_norm",
                            use_kl_loss=s.use_kl_loss)
                  .env_runners(rollout_fragment_length=max(1, per_runner // num_envs)))
    elif algorithm == "appo":
        from ray.rllib.algorithms.appo import APPOConfig

        config = (APPOConfig()
                  .training(lr=lr, train_batch_size_per_learner=env_steps_per_iter, vtrace=s.vtrace,
                            clip_param=s.clip_param, vf_loss_coeff=s.vf_loss_coeff, grad_clip=s.grad_clip,
                            entropy_coeff=([[0, s.entropy_coeff], [s.entropy_anneal_steps, 0.0]]
                                           if s.entropy_anneal_steps else s.entropy_coeff),
                            use_kl_loss=s.use_kl_loss, target_network_update_freq=s.target_network_update_freq,
                            broadcast_interval=s.broadcast_interval,
                            circular_buffer_num_batches=s.circular_buffer_num_batches,
                            circular_buffer_iterations_per_batch=s.circular_buffer_iterations_per_batch)
                  .env_runners(rollout_fragment_length=max(1, min(per_runner, 50) // num_envs)))
    elif algorithm == "dqn":
        from ray.rllib.algorithms.dqn import DQNConfig

        # Uniform replay stores frames once (algorithms/dqn_teacher.py); prioritised replay is
        # RLlib's own episode buffer.
        # (DQNTeacher replays frames where the config names RLlib's EpisodeReplayBuffer.)
        buffer = {"type": "PrioritizedEpisodeReplayBuffer" if s.prioritized else "EpisodeReplayBuffer",
                  "capacity": s.buffer_size}
        if s.prioritized:
            buffer.update(alpha=0.6, beta=0.4)
        # Each sample call returns the env steps of one update (fragment x envs), so the
        # training step alternates one call and one update, the least overhead for this ratio
        # (the ratio itself is kept per env step, algorithms/dqn_teacher.py). With 4 envs a call
        # is one batched step of all 4. RLlib requires fragments of at least n_step steps.
        steps_per_update = max(1, round(s.batch_size / s.training_intensity))
        fragment = max(1, steps_per_update // num_envs, s.n_step)
        from understudy.algorithms.dqn_teacher import DQNTeacher

        config = (DQNConfig(algo_class=None if s.prioritized else DQNTeacher)
                  .training(lr=lr, train_batch_size_per_learner=s.batch_size, n_step=s.n_step,
                            double_q=s.double_q, dueling=s.dueling, td_error_loss_fn="huber",
                            num_steps_sampled_before_learning_starts=s.learning_starts,
                            target_network_update_freq=s.target_update,
                            epsilon=[(0, 1.0), (s.epsilon_decay_steps(env_steps), s.final_epsilon)],
                            replay_buffer_config=buffer, training_intensity=s.training_intensity,
                            learner_config_dict={"adam_epsilon": s.adam_epsilon})
                  .env_runners(rollout_fragment_length=fragment)
                  .reporting(min_sample_timesteps_per_iteration=env_steps_per_iter))
        if not s.prioritized:  # the lean update path that goes with the frame replay
            from understudy.algorithms.dqn_teacher import DQNTeacherLearner

            config.learners(learner_class=DQNTeacherLearner).framework(torch_skip_nan_gradients=True)
    else:
        raise ValueError(f"algorithm: {algorithm!r} is not a teacher; valid: {', '.join(ALGORITHMS)}")
    model = DefaultModelConfig(conv_filters=CNN_FILTERS[cnn], conv_activation="relu",
                               head_fcnet_hiddens=CNN_HEADS[cnn])
    env_runner_cls = AtariVectorEnvRunner if runner == "vector" else RecordingEnvRunner
    return (config
            .environment(ENV_NAME, env_config=env_config)
            .env_runners(env_runner_cls=env_runner_cls, num_env_runners=num_env_runners,
                         num_envs_per_env_runner=num_envs, num_cpus_per_env_runner=1)
            .learners(num_gpus_per_learner=num_gpus_per_learner)
            .rl_module(rl_module_spec=RLModuleSpec(module_class=PIXEL_MODULES[algorithm],
                                                   model_config=model))
            # A remote env runner that dies is replaced; its unfinished episodes were never
            # written, and the new one continues the runner's history after its last episode.
            .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=100,
                             delay_between_env_runner_restarts_s=1.0)
            .debugging(seed=seed))


def teacher_config_from(hyperparameters: dict, *, game, seed, env_steps: int, record: dict | None,
                        **overrides) -> AlgorithmConfig:
    """`teacher_config` from a teacher's recorded settings (a teach manifest's
    `hyperparameters`: every argument but the game, seed, budget and recording)."""
    hp = {**hyperparameters, **overrides}
    hp.pop("preset", None)  # a label: its values are already in the other settings
    algorithm = hp.pop("algorithm")
    settings = SETTINGS[algorithm](**hp.pop("settings"))
    return teacher_config(algorithm=algorithm, game=game, seed=seed, env_steps=env_steps,
                          record=record, settings=settings, **hp)


# ---- playing with a trained teacher ---------------------------------------------------------

def _export_policy(algo, checkpoint_dir: str) -> None:
    """Next to RLlib's checkpoint (pickles, for resuming training), the acting policy alone as
    plain tensors and JSON, which the platform loads without executing code."""
    from ray.rllib.core.rl_module.rl_module import DEFAULT_MODULE_ID

    def export(learner):
        module = learner.module[DEFAULT_MODULE_ID]
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in module.get_state(inference_only=True).items()}
        return {"observation_shape": list(module.observation_space.shape),
                "num_actions": int(module.action_space.n), "model_config": dict(module.model_config)}, state

    meta, state = next(iter(algo.learner_group.foreach_learner(export))).get()
    meta = {"format": 1, "algorithm": type(algo).__name__.lower(), **meta}
    for name, write in ((POLICY_WEIGHTS, lambda f: torch.save(state, f)),
                        (POLICY_META, lambda f: f.write(json.dumps(meta, indent=1).encode()))):
        tmp = os.path.join(checkpoint_dir, f".{name}.tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, os.path.join(checkpoint_dir, name))


def load_teacher_module(checkpoint_dir: str):
    """The teacher's acting RLModule from a checkpoint `understudy teach` wrote: built from its
    JSON description (only this platform's module classes), weights via
    `torch.load(weights_only=True)`. Nothing in the checkpoint is unpickled."""
    import gymnasium as gym

    meta_path = os.path.join(checkpoint_dir, POLICY_META)
    if not os.path.exists(meta_path):
        raise ValueError(f"{checkpoint_dir} is not a teacher checkpoint written by `understudy teach` "
                         f"(no {POLICY_META})")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("algorithm") not in PIXEL_MODULES:
        raise ValueError(f"{meta_path}: algorithm {meta.get('algorithm')!r}; valid: {', '.join(PIXEL_MODULES)}")
    module = PIXEL_MODULES[meta["algorithm"]](
        observation_space=gym.spaces.Box(0, 255, tuple(meta["observation_shape"]), np.uint8),
        action_space=gym.spaces.Discrete(meta["num_actions"]), inference_only=True,
        model_config=meta["model_config"])
    module.set_state(torch.load(os.path.join(checkpoint_dir, POLICY_WEIGHTS), weights_only=True))
    module.eval()
    return module


def load_teacher_policy(checkpoint_dir: str):
    """uint8 obs batch (N, 84, 84, 4) -> greedy actions."""
    module = load_teacher_module(checkpoint_dir)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        out = module.forward_inference({Columns.OBS: torch.as_tensor(obs)})
        if Columns.ACTIONS in out:
            return np.asarray(out[Columns.ACTIONS])
        return out[Columns.ACTION_DIST_INPUTS].argmax(-1).numpy()

    return act
