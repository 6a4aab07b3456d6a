"""Every private name of RLlib, Tune and Ray Data that the project uses, in one place, each with
why it is needed and what uses it.

Ray is pinned (pyproject.toml). A private name may change in any release: tests/test_rllib_compat.py
checks each name below against the installed Ray (it exists; a function or method takes the
parameters listed; an instance attribute is still set by its class), so an upgrade that renames or
reshapes one fails there, naming it, instead of deep inside a teacher trial. The same test fails
on a private Ray name used anywhere else in the project, unless it is a method override listed
here (a subclass must define it under Ray's name).

Calls go through the functions below; overrides stay in the subclasses that make them. Imports
of Ray happen inside the functions, so platform/ can use this module without loading RLlib.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Private:
    place: str  # "module:Class.name" or "module:name"
    # override: a method (or class attribute) the project's subclass defines, which Ray calls;
    # call: a method or function the project calls; keyword: a private keyword argument of one;
    # attribute: an instance attribute the class sets in its own code; value: a module-level value;
    # text: a name Tune writes or reads, found in its module's source
    kind: str
    why: str
    used_by: str
    # override, call, keyword: the parameters expected (keyword: the one parameter); text: the text
    expects: tuple[str, ...] = ()


RUNNER = "ray.rllib.env.single_agent_env_runner:SingleAgentEnvRunner"

NAMES = (
    # ---- the env runners ---------------------------------------------------------------------
    Private(f"{RUNNER}._sample", "override",
            "the fast runner replaces only the sampling loop; RLlib's public sample() around it keeps its "
            "timing, metrics and episode bookkeeping", "algorithms/atari_runner.py AtariVectorEnvRunner",
            ("self", "num_timesteps", "num_episodes", "explore", "random_actions", "force_reset")),
    Private(f"{RUNNER}._log_episode_metrics", "override",
            "the reference runner logs each episode's raw score (what RecordEpisodeStatistics saw) instead of "
            "the transformed rewards the Learner got", "algorithms/teachers.py RecordingEnvRunner",
            ("self", "length", "ret", "sec")),
    Private(f"{RUNNER}._log_episode_metrics", "call",
            "the fast runner logs its finished episodes as RLlib's own runner does", "log_episode_metrics",
            ("self", "length", "ret", "sec")),
    Private(f"{RUNNER}._increase_sampled_metrics", "call",
            "the fast runner counts its env steps and episodes in RLlib's lifetime metrics (Tune stops on them)",
            "increase_sampled_metrics", ("self", "num_steps", "num_episodes_completed")),
    Private(f"{RUNNER}._weights_seq_no", "attribute",
            "the version of the weights a runner acts with: every recorded step's policy version",
            "weights_seq_no, set_weights_seq_no"),
    Private(f"{RUNNER}._seed", "attribute", "the runner's seed: the fast runner seeds its vector env with it",
            "env_seed"),
    Private(f"{RUNNER}._done_episodes_for_metrics", "attribute",
            "the episodes RLlib is about to log, in order: the reference runner puts their raw scores in",
            "done_episodes_for_metrics"),
    # ---- the DQN teacher (algorithms/dqn_teacher.py) ------------------------------------------
    Private("ray.rllib.algorithms.dqn:DQN._create_local_replay_buffer_if_necessary", "override",
            "DQN on the new API stack accepts only its episode buffers by config; the teacher makes its frame "
            "replay here", "algorithms/dqn_teacher.py DQNTeacher", ("self", "config")),
    Private("ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module:DefaultDQNTorchRLModule._forward_train",
            "override", "RLlib's hook for the training forward pass (private by name, the documented place to "
            "override): the double-Q pass without gradients through the next observations",
            "algorithms/teachers.py PixelDefaultDQNTorchRLModule", ("self", "batch")),
    Private("ray.rllib.execution.rollout_ops:synchronous_parallel_sample", "keyword",
            "sampling the new API stack's env runners (episodes, not sample batches) from the old stack's helper, "
            "as RLlib's own DQN does", "sample_episodes", ("_uses_new_env_runners",)),
    Private("ray.rllib.execution.rollout_ops:synchronous_parallel_sample", "keyword",
            "the env runners' metrics returned with their episodes", "sample_episodes", ("_return_metrics",)),
    Private("ray.rllib.core.learner.learner:Learner.update", "keyword",
            "a local Learner's metrics reduced once per iteration instead of after every update (through "
            "LearnerGroup.update's **kwargs)", "update_learners", ("_no_metrics_reduce",)),
    Private("ray.rllib.core.learner.learner:Learner._module", "attribute",
            "the Learner's modules, to hand a module's parameters to the fused Adam", "learner_module"),
    Private("ray.rllib.core.learner.learner:Learner._weights_seq_no", "attribute",
            "the version of the Learner's weights: an env runner that shares them takes this version",
            "weights_seq_no"),
    Private("ray.rllib.policy.sample_batch:MultiAgentBatch", "value",
            "the old API stack's batch, which LearnerGroup.update still takes whole: the frame replay's train "
            "batch goes to the Learner without per-sample episodes", "train_batch"),
    Private("ray.rllib.policy.sample_batch:SampleBatch", "value", "as MultiAgentBatch", "train_batch"),
    Private("ray.rllib.policy.sample_batch:DEFAULT_POLICY_ID", "value", "as MultiAgentBatch", "train_batch"),
    # ---- Tune (platform/cli.py, platform/workspace.py) ----------------------------------------
    Private("ray.tune.execution.class_cache:ENV_VARS_TO_PROPAGATE", "value",
            "Tune copies these variables into every trial's runtime_env, which Ray logs in full: the "
            "storage credentials are taken out", "keep_out_of_trials"),
    Private("ray.tune.execution.tune_controller:TuneController", "text",
            "the name of Tune's experiment state file, which a resume after a SIGKILL repairs",
            "TUNE_STATE_FILES", ("experiment_state-{}.json",)),
    Private("ray.tune.execution.tune_controller:TuneController", "text",
            "how often Tune snapshots its experiment state: every result, so a resume never names a deleted "
            "checkpoint", "platform/workspace.py keep_tune_state_current", ("TUNE_GLOBAL_CHECKPOINT_S",)),
    Private("ray.tune.search.basic_variant:BasicVariantGenerator", "text",
            "the name of Tune's searcher state file, repaired as the experiment's", "TUNE_STATE_FILES",
            ("basic-variant-state-{}.json",)),
    Private("ray.train._internal.storage:StorageContext", "text",
            "where Tune stages its state files in the driver before copying them to storage: the intact copies "
            "a repair takes", "TUNE_STAGING", ("driver_artifacts",)),
    # ---- Ray Data (histories/arrow_datasource.py, below this layer: it names these itself) ------
    Private("ray.data.datasource.file_based_datasource:FileBasedDatasource._FILE_EXTENSIONS", "override",
            "the file extensions a file-based datasource reads, declared as Ray Data's own readers do",
            "histories/arrow_datasource.py ArrowIPCDatasource"),
    Private("ray.data.datasource.file_based_datasource:FileBasedDatasource._read_stream", "override",
            "Ray Data's extension point for a file format (its ORC reader's way): shards are Arrow IPC files",
            "histories/arrow_datasource.py ArrowIPCDatasource", ("self", "f", "path")),
    Private("ray.data.datasource.file_based_datasource:FileBasedDatasource._open_input_source", "override",
            "an IPC file's footer is at its end: it needs a seekable file, not Ray Data's stream",
            "histories/arrow_datasource.py ArrowIPCDatasource", ("self", "filesystem", "path", "open_args")),
)

# Tune's state files in an experiment's folder (glob patterns), and where the driver stages its
# copies of them under Ray's temp folder (path parts; "{experiment}" is the experiment's name).
TUNE_STATE_FILES = ("experiment_state-*.json", "basic-variant-state-*.json")
TUNE_STAGING = ("ray", "session_*", "artifacts", "*", "{experiment}", "driver_artifacts")


# ---- env runners -------------------------------------------------------------------------------

def weights_seq_no(runner_or_learner) -> int:
    """The version of the weights an env runner acts with, or a Learner holds."""
    return runner_or_learner._weights_seq_no


def set_weights_seq_no(env_runner, version: int) -> None:
    """Tell an env runner that shares a Learner's parameters which version they now are."""
    env_runner._weights_seq_no = version


def env_seed(env_runner):
    return env_runner._seed


def done_episodes_for_metrics(env_runner) -> list:
    return env_runner._done_episodes_for_metrics


def log_episode_metrics(env_runner, length: int, ret: float, sec: float) -> None:
    env_runner._log_episode_metrics(length, ret, sec)


def increase_sampled_metrics(env_runner, num_steps: int, num_episodes: int) -> None:
    env_runner._increase_sampled_metrics(num_steps, num_episodes)


# ---- the DQN teacher ---------------------------------------------------------------------------

def sample_episodes(env_runner_group, sample_timeout_s, with_metrics: bool):
    """The episodes every env runner returns from one sample call, with their metrics if asked."""
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

    return synchronous_parallel_sample(worker_set=env_runner_group, concat=True, sample_timeout_s=sample_timeout_s,
                                       _uses_new_env_runners=True, _return_metrics=with_metrics)


def update_learners(learner_group, batch, timesteps: dict, reduce: bool):
    """One update on `batch`; without `reduce` a local Learner keeps its metrics to reduce later."""
    later = {} if reduce else {"_no_metrics_reduce": True}
    return learner_group.update(batch=batch, timesteps=timesteps, **later)


def learner_module(learner, module_id):
    return learner._module[module_id]


def train_batch(columns: dict, env_steps: int):
    """A ready train batch of `columns` for the default module, as LearnerGroup.update takes it."""
    from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch

    return MultiAgentBatch({DEFAULT_POLICY_ID: SampleBatch(columns)}, env_steps=env_steps)


# ---- Tune --------------------------------------------------------------------------------------

def keep_out_of_trials(names: set[str]) -> None:
    """Tune stops copying these environment variables into its trials' runtime_env."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(names)
