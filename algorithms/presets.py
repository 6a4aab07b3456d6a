"""Teacher hyper-parameters, each default declared once.

One dataclass per algorithm holds its RLlib settings; their defaults are the field's published
Atari settings (sources in docs/teachers.md). `PRESETS` names, per algorithm, the teach-level
settings that go with them (learning rate, network, envs, batch, reward transform): a teach
config that says `preset: atari` gets all of them, and any field it sets itself wins.
Each field's annotation carries its bounds (algorithms/bounds.py): the teach config's block of
each algorithm (platform/config.py) is built from these fields, so a name, type, bound or
default is declared here and nowhere else; `teacher_config` takes these dataclasses whole and
adds no defaults of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

from understudy.algorithms.bounds import (
    Discount,
    NonNegative,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Probability,
    Share,
)


@dataclass(frozen=True)
class PPOSettings:
    """RLlib PPO set as CleanRL's ppo_atari.py (8 envs x 128 steps per batch at the preset)."""
    num_minibatches: Positive = 4  # per epoch; minibatch = batch / num_minibatches
    num_epochs: Positive = 4
    clip_param: PositiveFloat = 0.1
    entropy_coeff: NonNegativeFloat = 0.01
    vf_loss_coeff: PositiveFloat = 0.5
    gae_lambda: Probability = 0.95
    gamma: Discount = 0.99
    grad_clip: PositiveFloat = 0.5  # global norm
    anneal_lr: bool = True  # linearly to 0 over the teacher's env-step budget
    # RLlib clips the squared value error at this (CleanRL clips the value's change instead);
    # with sign rewards the value stays within it, so it only guards against outliers.
    vf_clip_param: PositiveFloat = 10.0
    use_kl_loss: bool = False  # CleanRL's PPO has no KL penalty (RLlib's default has one)


@dataclass(frozen=True)
class APPOSettings:
    """RLlib APPO as RLlib's own tuned Atari example (rllib/tuned_examples/appo/pong_appo.py;
    what it leaves unset is APPO's default: clip 0.4, grad clip 40, no KL loss, v-trace)."""
    vtrace: bool = True
    clip_param: PositiveFloat = 0.4
    entropy_coeff: NonNegativeFloat = 0.01
    # entropy 0.01 -> 0 linearly over this many env steps (0: a constant entropy bonus)
    entropy_anneal_steps: NonNegative = 3_000_000
    vf_loss_coeff: PositiveFloat = 1.0
    grad_clip: PositiveFloat = 40.0
    use_kl_loss: bool = False
    target_network_update_freq: Positive = 2
    broadcast_interval: Positive = 5
    circular_buffer_num_batches: Positive = 4
    circular_buffer_iterations_per_batch: Positive = 2


@dataclass(frozen=True)
class DQNSettings:
    """RLlib DQN as Dopamine's and CleanRL's Atari DQN: 1-step, single-Q, Huber loss, Adam."""
    batch_size: Positive = 32
    n_step: Positive = 1
    double_q: bool = False
    dueling: bool = False
    prioritized: bool = False
    learning_starts: NonNegative = 20_000  # env steps of random play first (Dopamine's min_replay_history)
    target_update: Positive = 8_000  # env steps between target-network copies (Dopamine)
    # Frames stored (FrameReplayBuffer keeps each 84x84 frame once): 1M is 7.1 GB of memory.
    buffer_size: Positive = 1_000_000
    # Epsilon decays linearly from 1.0 over this fraction of the budget (CleanRL), or over
    # `epsilon_steps` env steps when that is given.
    epsilon_fraction: Share = 0.1
    epsilon_steps: Positive | None = None
    final_epsilon: Probability = 0.01
    training_intensity: PositiveFloat = 8.0  # trained samples per env step: a batch of 32 every 4 steps
    adam_epsilon: PositiveFloat = 1.5e-4

    def epsilon_decay_steps(self, env_steps: int) -> int:
        return self.epsilon_steps or max(1, int(self.epsilon_fraction * env_steps))


SETTINGS = {"ppo": PPOSettings, "appo": APPOSettings, "dqn": DQNSettings}

# Each named preset: teach-level settings (platform.config.TeachConfig fields) and, where it
# departs from the dataclass defaults above, the algorithm's own block.
PRESETS: dict[str, dict[str, dict]] = {
    "ppo": {"atari": {"lr": 2.5e-4, "cnn": "nature", "num_envs_per_runner": 8,
                      "env_steps_per_iter": 1024, "reward": "sign"},
            # CleanRL's ppo_atari settings on the MinAtar paper's network (no published MinAtar
            # PPO preset exists; bench/learning.py is what shows these learn).
            "minatar": {"lr": 2.5e-4, "cnn": "minatar", "num_envs_per_runner": 8,
                        "env_steps_per_iter": 1024, "reward": "sign"}},
    "appo": {"atari": {"lr": 5e-4, "cnn": "nature", "num_envs_per_runner": 5, "num_env_runners": 5,
                       "env_steps_per_iter": 500, "reward": "sign"}},
    "dqn": {"atari": {"lr": 1e-4, "cnn": "nature", "num_envs_per_runner": 1,
                      "env_steps_per_iter": 10_000, "reward": "sign"},
            # The MinAtar authors' examples/dqn.py: 100k replay, a batch of 32 every step, 5k
            # warm-up, target every 1k updates, epsilon 1 -> 0.1 over 100k steps, Huber loss
            # (they use RMSProp; RLlib's Learner here uses Adam). RLlib's episode replay.
            "minatar": {"lr": 2.5e-4, "cnn": "minatar", "num_envs_per_runner": 1,
                        "env_steps_per_iter": 10_000, "reward": "sign",
                        "dqn": {"prioritized": True, "buffer_size": 100_000, "learning_starts": 5_000,
                                "target_update": 1_000, "epsilon_steps": 100_000, "final_epsilon": 0.1,
                                "training_intensity": 32.0, "double_q": False, "adam_epsilon": 1e-8}}},
}

