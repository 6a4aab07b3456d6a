"""What every imitator shares: building one by name, the training loop, held-out evaluation,
checkpoints that load without executing code, and the policy that plays with a frozen one.

Each imitator (bc.py, dt.py, ad.py, ad_gru.py, or a plug-in) registers its model and player in
algorithms/imitators.py; its model is an nn.Module with `spec` (its constructor arguments),
`sample_spec()` (what a training sample is, see histories.data.SampleSpec) and
`loss(batch) -> (loss, {"accuracy", "targets"})`.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from understudy.algorithms import imitators
from understudy.envs import family_of
from understudy.histories.data import StepTransforms


def __getattr__(name: str):
    """MODELS (name -> model class) and CROSS_EPISODE (the in-context learners' names), read
    from the registry when asked, so they include every imitator registered or installed."""
    if name == "MODELS":
        return {n: imitators.get(n).model for n in imitators.names()}
    if name == "CROSS_EPISODE":
        return imitators.cross_episode()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(algorithm: str, num_actions: int, **params) -> torch.nn.Module:
    """The registered imitator's model; a parameter given as None keeps the model's default."""
    return imitators.get(algorithm).build(num_actions, **params)


def to_torch(batch: dict, device: torch.device | None = None) -> dict:
    """A numpy batch as tensors on `device` (the model's: the CPU, or the GPU it trains on)."""
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items() if k != "row"}
    if device is not None and device.type != "cpu":
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    return out


def device_of(model) -> torch.device:
    return next(model.parameters()).device


PRECISIONS = ("float32", "bfloat16")


def autocast(model, precision: str):
    """The forward pass's arithmetic: float32, or bfloat16 mixed precision (torch.autocast: the
    matmuls and convolutions in bfloat16, softmax, norms and the loss in float32; weights,
    gradients and optimizer state stay float32). On a CPU with AVX-512 bf16 the MinAtar AD
    update is about 1.2x faster with it (bench/limits.py), its loss curve within float32's
    seed-to-seed noise (tests/test_training_speed.py); without bf16 instructions it is slower."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return torch.autocast(device_of(model).type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def train_epoch(model, optimizer, batches, max_grad_norm: float = 1.0, max_batches: int | None = None,
                after_backward=None, precision: str = "float32") -> dict:
    """One pass over an iterable of numpy batches. Returns target-weighted mean loss and
    accuracy, the number of target samples seen, and the time spent waiting for data."""
    model.train()
    sums = {"loss": 0.0, "accuracy": 0.0, "targets": 0}
    waited, started = 0.0, time.perf_counter()
    it, n = iter(batches), 0
    while max_batches is None or n < max_batches:
        t0 = time.perf_counter()
        batch = next(it, None)
        waited += time.perf_counter() - t0
        if batch is None:
            break
        with autocast(model, precision):
            loss, info = model.loss(to_torch(batch, device_of(model)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:  # e.g. averaging gradients across data-parallel workers
            after_backward(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        k = int(info["targets"])
        sums["loss"] += loss.item() * k
        sums["accuracy"] += float(info["accuracy"]) * k
        sums["targets"] += k
        n += 1
    seconds = time.perf_counter() - started
    k = max(sums["targets"], 1)
    return {"train_loss": sums["loss"] / k, "train_accuracy": sums["accuracy"] / k,
            "train_targets": sums["targets"], "batches": n, "seconds": seconds, "data_wait_s": waited,
            "samples_per_s": sums["targets"] / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(model, batches, precision: str = "float32") -> dict:
    """Target-weighted loss and action accuracy on held-out batches."""
    model.eval()
    loss_sum, acc_sum, n = 0.0, 0.0, 0
    for batch in batches:
        with autocast(model, precision):
            loss, info = model.loss(to_torch(batch, device_of(model)))
        k = int(info["targets"])
        loss_sum, acc_sum, n = loss_sum + loss.item() * k, acc_sum + float(info["accuracy"]) * k, n + k
    if n == 0:
        return {}
    return {"heldout_loss": loss_sum / n, "heldout_accuracy": acc_sum / n}


def save(model, directory: str, extra: dict, optimizer=None) -> None:
    """Weights (and optimizer state) as tensors only, plus a JSON that says what they are."""
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump({**model.spec, **extra}, f, indent=2)


def load(directory: str, expect: str | None = None):
    """(model, meta) from a checkpoint folder. Loads weights only: a checkpoint cannot execute
    code. `expect` names the algorithm the caller needs (another one is a clear error); a
    plug-in named `module:attribute` is imported only when the caller names it here, never
    because a checkpoint does (imitators.known)."""
    meta_path = os.path.join(directory, "model.json")
    if not os.path.isfile(meta_path):
        raise ValueError(f"{directory}: not an imitator checkpoint (no model.json)")
    with open(meta_path) as f:
        meta = json.load(f)
    algorithm = meta.get("algorithm")
    imitator = imitators.get(expect) if expect else imitators.known(algorithm)
    if imitator is None or (expect and algorithm != expect):
        want = expect or ", ".join(imitators.names())
        hint = ("" if expect or not isinstance(algorithm, str) or ":" not in algorithm else
                "; a plug-in named module:attribute is imported only when the caller expects it (load(expect=...))")
        raise ValueError(f"{directory}: checkpoint is for algorithm {algorithm!r}, expected {want}{hint}")
    params = {k: meta[k] for k in imitator.parameters() if k in meta}
    model = imitator.build(meta["num_actions"], **params)
    state = torch.load(os.path.join(directory, "model.pt"), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{directory}: weights do not fit a {algorithm} model with {params}: "
                         f"{str(err).splitlines()[0]}") from None
    model.eval()
    return model, meta


def policy(model, num_envs: int, greedy: bool = True, seed: int = 0, target_return: float | None = None,
           cache: bool = True):
    """The frozen model as a player of N envs: `act(obs, prev_action, prev_reward, new_episode)`.
    Transformers play with a key/value cache unless `cache=False` (a full forward pass over
    the window every step: same actions, far slower); all on the model's device."""
    return imitators.get(model.spec["algorithm"]).player(model, num_envs, greedy, seed, target_return=target_return,
                                                         cache=cache)


class AsTrained:
    """A frozen imitator's player behind the env's own actions, rewards and frames, with every
    data transform of its training (the checkpoint's `transforms`, histories.data.StepTransforms)
    applied again at play: rewards as the model saw them (raw, clip or sign); env actions mapped
    to the model's ids (the 18 ALE ids with `unified_actions`, the model choosing only among the
    game's own actions) and back; with `gla`, a pixel and an action permutation per copy, drawn
    from `seed` (each copy is a new task, as each history was in training)."""

    def __init__(self, policy, transforms: StepTransforms, num_model_actions: int, num_env_actions: int,
                 num_envs: int, game: str, full_action_space: bool, seed: int):
        self.policy, self.transforms, self.n_model = policy, transforms, num_model_actions
        self.n_env = num_env_actions
        base = np.arange(num_env_actions)
        if transforms.unified_actions:
            from understudy.envs.atari import action_set

            base = np.asarray(action_set(game, full_action_space), np.int64)  # env index -> ALE id
        elif num_model_actions != num_env_actions:
            raise ValueError(f"the model acts with {num_model_actions} actions but {game} has {num_env_actions} "
                             "under this protocol, and it was not trained with unified_actions; teach with "
                             "protocol.full_action_space: true, or distill with data.unified_actions: true")
        to_model = np.tile(base, (num_envs, 1))
        self.pixels = None
        if transforms.gla:
            rngs = [np.random.default_rng([seed, 1_000_000 + i]) for i in range(num_envs)]
            actions = np.stack([r.permutation(num_model_actions) for r in rngs])
            to_model = np.take_along_axis(actions, to_model, 1)
            height, width = family_of(game).frame_shape[:2]
            self.pixels = np.stack([r.permutation(height * width) for r in rngs])
        self.to_model = to_model  # (N, env actions) -> model id
        self.to_env = np.full((num_envs, num_model_actions), -1, np.int64)
        np.put_along_axis(self.to_env, to_model, np.arange(num_env_actions)[None].repeat(num_envs, 0), 1)
        if (self.to_env >= 0).sum(1).min() < num_model_actions:
            policy.legal = torch.as_tensor(self.to_env >= 0)

    def model_step(self, obs, actions, rewards):
        """Observations, actions (env ids, num_env_actions for none yet) and raw rewards as the
        model saw them in training."""
        from understudy.envs import transform_reward

        actions = np.asarray(actions)
        none = actions >= self.n_env
        rows = np.arange(len(actions))
        model_actions = np.where(none, self.n_model, self.to_model[rows, np.minimum(actions, self.n_env - 1)])
        if self.pixels is not None:  # each copy its own permutation of positions (data.permute_positions)
            flat = np.asarray(obs).reshape(len(obs), self.pixels.shape[1], -1)
            obs = np.take_along_axis(flat, self.pixels[:, :, None], 1).reshape(np.shape(obs))
        return obs, model_actions, transform_reward(np.asarray(rewards, np.float32), self.transforms.reward)

    def act(self, obs, prev_action, prev_reward, new_episode):
        obs, prev_action, prev_reward = self.model_step(obs, prev_action, prev_reward)
        chosen = np.asarray(self.policy.act(obs, prev_action, prev_reward, new_episode))
        return self.to_env[np.arange(len(chosen)), chosen]

    def __getattr__(self, name):  # forget(), episodes_in_context(), ... of the wrapped player
        return getattr(self.policy, name)


def as_trained(player, meta: dict, num_env_actions: int, num_envs: int, game: str, full_action_space: bool,
               seed: int):
    """The player wrapped in its checkpoint's data transforms (old checkpoints: none recorded)."""
    transforms = StepTransforms(**meta.get("transforms", {}))
    wrapped = AsTrained(player, transforms, meta["num_actions"], num_env_actions, num_envs, game,
                        full_action_space, seed)
    wrapped.meta = meta
    return wrapped


def inference_device() -> torch.device:
    """Where a frozen model plays: the GPU when one is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
