"""Teachers: RLlib (new API stack) PPO and DQN on Atari, and the hook that records everything
they play.

The recording hook is an EnvRunner: after each `sample()` it takes the episode chunks it just
produced, stitches them into whole episodes (an episode can span several sample calls and
several policy versions), and hands finished episodes to a `ShardWriter`. Unfinished episodes
are never written: if the runner dies, they are lost as a whole, not half-written.
"""
from __future__ import annotations

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO
from ray.tune.registry import register_env

from understudy.envs import AtariProtocol, game_metadata, make_atari_env, newest_frame
from understudy.platform.shards import Episode, ShardWriter, write_run_metadata

ENV_NAME = "understudy_atari"

# Small CNNs for a 2-core machine; "nature" is the DQN paper's network.
CNN_FILTERS = {
    "nature": [[32, [8, 8], 4], [64, [4, 4], 2], [64, [3, 3], 1]],
    "small": [[16, [8, 8], 4], [32, [4, 4], 2], [32, [3, 3], 2]],
}


def _env_creator(env_config: dict):
    protocol = AtariProtocol(**env_config.get("protocol", {}))
    return make_atari_env(env_config["game"], protocol, scale_obs=True,
                          max_episode_steps=env_config.get("max_episode_steps"))


register_env(ENV_NAME, _env_creator)


def run_id_for(session: str, algorithm: str, game: str, seed: int) -> str:
    return f"{algorithm}-{game}-s{seed}-{session}"


class RecordingEnvRunner(SingleAgentEnvRunner):
    """SingleAgentEnvRunner that writes every complete training episode to Arrow shards."""

    def __init__(self, *, config: AlgorithmConfig, **kwargs):
        super().__init__(config=config, **kwargs)
        record = config.env_config.get("record")
        self._writer = None
        if record and not config.in_evaluation:
            game = config.env_config["game"]
            algorithm = record["algorithm"]
            seed = int(config.seed or 0)
            run_id = run_id_for(record["session"], algorithm, game, seed)
            self._writer = ShardWriter(
                root=record["root"], run_id=run_id, env_runner=self.worker_index,
                static={"game": game, "algorithm": algorithm, "seed": seed},
                max_rows=int(record.get("shard_rows", 50_000)))
            if self.worker_index <= 1:  # one writer of the run's metadata is enough
                write_run_metadata(record["root"], run_id, {
                    "game": game, "algorithm": algorithm, "seed": seed,
                    "protocol": config.env_config.get("protocol", {}),
                    "max_episode_steps": config.env_config.get("max_episode_steps"),
                    **game_metadata(game)})
        self._open = {}  # episode id -> per-step column lists of the episode so far
        self._episodes_done = 0
        self._steps_done = 0

    def sample(self, **kwargs):
        episodes = super().sample(**kwargs)
        if self._writer is not None and not kwargs.get("random_actions"):
            for chunk in episodes:
                self._ingest(chunk)
        return episodes

    def _ingest(self, chunk) -> None:
        n = len(chunk)
        cols = self._open.setdefault(chunk.id_, {k: [] for k in (
            "step", "global_step", "policy_version", "frame", "action", "reward",
            "terminated", "truncated", "lives", "epsilon", "policy_outputs")})
        if n:
            obs = chunk.get_observations(slice(0, n))  # the observations actions were chosen on
            infos = chunk.get_infos(slice(0, n))
            start = len(cols["step"])
            cols["step"].extend(range(start, start + n))
            cols["global_step"].extend(range(self._steps_done, self._steps_done + n))
            self._steps_done += n
            cols["policy_version"].extend(
                int(v) for v in chunk.get_extra_model_outputs(WEIGHTS_SEQ_NO, slice(0, n)))
            cols["frame"].extend(newest_frame(o).tobytes() for o in obs)
            cols["action"].extend(int(a) for a in chunk.get_actions(slice(0, n)))
            cols["reward"].extend(float(r) for r in chunk.get_rewards(slice(0, n)))
            cols["terminated"].extend([False] * n)
            cols["truncated"].extend([False] * n)
            cols["lives"].extend(int(i.get("lives", 0)) for i in infos)
            cols["epsilon"].extend([None] * n)
            outputs = self._policy_outputs(chunk, n)
            cols["policy_outputs"].extend(outputs if outputs is not None else [None] * n)
        if not chunk.is_done:
            return
        del self._open[chunk.id_]
        if not cols["step"]:
            return
        cols["terminated"][-1] = bool(chunk.is_terminated)
        cols["truncated"][-1] = bool(chunk.is_truncated)
        final_info = chunk.get_infos(-1)
        env_return = float(final_info["episode"]["r"]) if "episode" in final_info else float("nan")
        self._writer.add(Episode(self.worker_index, self._episodes_done, cols, env_return))
        self._episodes_done += 1

    @staticmethod
    def _policy_outputs(chunk, n):
        for key in (Columns.ACTION_DIST_INPUTS, "q_values"):
            try:
                values = chunk.get_extra_model_outputs(key, slice(0, n))
            except (KeyError, IndexError):
                continue
            return [np.asarray(v, np.float32).ravel().tolist() for v in values]
        return None

    def stop(self):
        if self._writer is not None:
            self._writer.flush()  # whole episodes only; unfinished ones are dropped
        super().stop()

    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        state["understudy_recorder"] = {"episodes": self._episodes_done, "steps": self._steps_done}
        return state

    def set_state(self, state):
        super().set_state(state)
        rec = state.get("understudy_recorder")
        if rec:
            self._episodes_done, self._steps_done = rec["episodes"], rec["steps"]


def teacher_config(*, algorithm: str, game, seed, env_steps_per_iter: int, protocol: dict,
                   max_episode_steps: int | None, record: dict | None, cnn: str = "small",
                   num_envs: int = 1, lr: float = 2.5e-4, hparams: dict | None = None
                   ) -> AlgorithmConfig:
    """An RLlib config for one teacher; `game` and `seed` may be Tune search spaces."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig

    hp = dict(hparams or {})
    model = DefaultModelConfig(conv_filters=CNN_FILTERS[cnn], conv_activation="relu",
                               head_fcnet_hiddens=[256])
    env_config = {"game": game, "protocol": protocol, "max_episode_steps": max_episode_steps,
                  "record": record}
    if algorithm == "ppo":
        config = (PPOConfig()
                  .training(lr=lr, train_batch_size_per_learner=env_steps_per_iter,
                            minibatch_size=hp.pop("minibatch_size", 64),
                            num_epochs=hp.pop("num_epochs", 2), gamma=0.99, lambda_=0.95,
                            clip_param=0.1, vf_clip_param=10.0, entropy_coeff=0.01, **hp)
                  .env_runners(rollout_fragment_length=env_steps_per_iter // num_envs))
    elif algorithm == "dqn":
        config = (DQNConfig()
                  .training(lr=lr, train_batch_size_per_learner=hp.pop("batch_size", 32),
                            n_step=hp.pop("n_step", 1), double_q=hp.pop("double_q", True),
                            dueling=hp.pop("dueling", False),
                            num_steps_sampled_before_learning_starts=hp.pop("learning_starts", 200),
                            target_network_update_freq=hp.pop("target_update", 500),
                            replay_buffer_config={"type": "EpisodeReplayBuffer",
                                                  "capacity": hp.pop("buffer_size", 10_000)},
                            **hp)
                  .env_runners(rollout_fragment_length=4))
    else:
        raise ValueError(f"algorithm: {algorithm!r} is not a teacher; valid: ppo, dqn")
    return (config
            .environment(ENV_NAME, env_config=env_config)
            .env_runners(env_runner_cls=RecordingEnvRunner, num_env_runners=0,
                         num_envs_per_env_runner=num_envs)
            .rl_module(model_config=model)
            .debugging(seed=seed))


# ---- playing with a trained teacher ---------------------------------------------------------

def load_teacher_policy(checkpoint_dir: str):
    """obs batch (N, 84, 84, 4) float32 in [0, 1] -> greedy actions, from a Tune/RLlib checkpoint.

    Loads only the RLModule (no env runners, no learner)."""
    import os

    import torch
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = os.path.join(checkpoint_dir, COMPONENT_LEARNER_GROUP, COMPONENT_LEARNER,
                        COMPONENT_RL_MODULE, "default_policy")
    module = RLModule.from_checkpoint(path)

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: torch.as_tensor(obs)})
        if Columns.ACTIONS in out:
            return np.asarray(out[Columns.ACTIONS])
        return out[Columns.ACTION_DIST_INPUTS].argmax(-1).numpy()

    return act
