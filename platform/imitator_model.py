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


def save(checkpoint_dir: str, path: str) -> None:
    """An MLflow model folder at `path` holding the checkpoint's weights and metadata."""
    import os
    import shutil
    import tempfile

    import mlflow.pyfunc
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "checkpoint")
        os.makedirs(data)
        for name in CHECKPOINT_FILES:
            shutil.copy(os.path.join(checkpoint_dir, name), data)
        mlflow.pyfunc.save_model(path, loader_module=__name__, data_path=data,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "understudy"])
