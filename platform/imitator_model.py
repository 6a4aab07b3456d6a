"""The imitator as an MLflow model that loads without unpickling anything.

MLflow's pytorch flavour pickles the whole model object (and warns about it on every save).
This is a pyfunc model with a loader module instead: `mlflow.pyfunc.load_model(uri)` imports
this module and calls `_load_pyfunc(<model>/data/checkpoint)`, which reads the project's own
checkpoint: the weights with torch.load(weights_only=True), what they are from JSON.
"""
from __future__ import annotations

CHECKPOINT_FILES = ("model.pt", "model.json")  # the optimizer state stays in the checkpoint


class Imitator:
    """What `mlflow.pyfunc.load_model` returns the model as: `predict` runs the network on one
    batch, a dict of arrays as training feeds it (histories.data.make_batch: obs, prev_action,
    prev_reward, new_episode, ...; BC: an array of observations) and returns the action
    logits; the torch module and its checkpoint metadata are `get_raw_model()` and `meta`."""

    def __init__(self, model, meta: dict):
        self.model, self.meta = model, meta

    def predict(self, model_input, params=None):
        import numpy as np
        import torch

        with torch.no_grad():
            if isinstance(model_input, dict):
                out = self.model({k: torch.as_tensor(np.asarray(v)) for k, v in model_input.items()})
            else:
                out = self.model(torch.as_tensor(np.asarray(model_input)))
        return out.numpy() if isinstance(out, torch.Tensor) else out

    def get_raw_model(self):
        return self.model


def _load_pyfunc(data_path: str) -> Imitator:
    from understudy.algorithms import imitation

    model, meta = imitation.load(data_path)
    return Imitator(model, meta)


class _Reads(dict):
    """A batch that remembers which of its inputs the model read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


def example_input(model):
    """One batch of what the model reads, as training feeds it (histories.data.make_batch), with
    a window of 2 steps: an array of frame stacks for a model of single steps (BC), else a dict.
    None for a model whose frames are not known (a plug-in encoder)."""
    import numpy as np

    from understudy.algorithms.encoders import ENCODERS

    spec, encoder = model.sample_spec(), ENCODERS.get(getattr(model, "spec", {}).get("cnn"))
    if encoder is None:
        return None
    height, width, per_frame = encoder.frame
    frame = (height, width, per_frame * spec.stack)
    if spec.kind == "step":
        return np.zeros((1, *frame), np.uint8)
    window = (1, 2)
    batch = {"obs": np.zeros((*window, *frame), np.uint8),
             "prev_action": np.full(window, model.spec["num_actions"], np.int64),  # none yet
             "prev_reward": np.zeros(window, np.float32), "new_episode": np.ones(window, bool),
             "timestep": np.zeros(window, np.int64), "rtg": np.zeros(window, np.float32)}
    return batch


def signature(model):
    """(signature, input example) of the model for MLflow: its inputs as tensors of any batch
    size (and any window length up to its context), found by running it on example_input and
    keeping only the inputs it read; the output is its action logits. (None, None) where no
    example can be made."""
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = example_input(model)
    if example is None:
        return None, None
    windowed = isinstance(example, dict)
    batch = _Reads({k: torch.as_tensor(v) for k, v in example.items()}) if windowed else torch.as_tensor(example)
    with torch.no_grad():
        out = model(batch)
    variable = 2 if windowed else 1  # batch (and window) dimensions: any size

    def spec(array, name=None):
        array = np.asarray(array)
        return TensorSpec(array.dtype, (-1,) * variable + array.shape[variable:], name)

    if windowed:
        example = {k: v for k, v in example.items() if k in batch.read}
    inputs = [spec(v, k) for k, v in example.items()] if windowed else [spec(example)]
    return ModelSignature(Schema(inputs), Schema([spec(out.numpy())])), example


def save(checkpoint_dir: str, path: str) -> None:
    """An MLflow model folder at `path` holding the checkpoint's weights and metadata, with its
    signature (the inputs the network reads and its logits) where it can be found."""
    import os
    import shutil
    import tempfile

    import mlflow.pyfunc
    import torch

    try:
        described, example = signature(_load_pyfunc(checkpoint_dir).get_raw_model())
    except ValueError:  # a plug-in imported only where a caller names it: saved without a signature
        described = example = None
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "checkpoint")
        os.makedirs(data)
        for name in CHECKPOINT_FILES:
            shutil.copy(os.path.join(checkpoint_dir, name), data)
        mlflow.pyfunc.save_model(path, loader_module=__name__, data_path=data,
                                 signature=described, input_example=example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "understudy"])
