"""The imitator as an MLflow model that loads without unpickling anything.

MLflow's pytorch flavour pickles the whole model object (and warns about it on every save).
This is a pyfunc model with a loader module instead: `mlflow.pyfunc.load_model(uri)` imports
this module and calls `_load_pyfunc(<model>/data/checkpoint)`, which reads the project's own
checkpoint: the weights with torch.load(weights_only=True), what they are from JSON.

The model carries the project itself: the `understudy` code that saved it is logged with it as
MLflow `code_paths` (MLflow puts it first on sys.path when it loads the model), and its pip
requirements are the project's own dependencies. understudy is not on PyPI (PyPI's
`understudy` is another project), so no requirement names it.
"""
from __future__ import annotations

CHECKPOINT_FILES = ("model.pt", "model.json")  # the optimizer state stays in the checkpoint
DISTRIBUTION = "understudy-icrl"  # pyproject.toml's name; the import package is `understudy`
# The code a model needs, without the package's data (tune_configs, bench results, k8s).
CODE_PACKAGES = ("understudy.envs", "understudy.histories", "understudy.algorithms", "understudy.platform")


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


def requirements() -> list[str]:
    """The pip requirements of a saved model: the project's dependencies as its installed
    metadata declares them (the test extras left out), with torch at the version running here."""
    import re
    from importlib import metadata

    import torch

    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # imported without being installed: torch is what it must have
        return [torch_pin]
    kept = [r for r in declared if "extra" not in r.partition(";")[2]]  # e.g. 'pytest>=8; extra == "test"'
    return [torch_pin if re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() == "torch" else r for r in kept]


def copy_code(dest: str) -> str:
    """A copy of the `understudy` code this process imports (the repo's folders under an editable
    install, site-packages under a wheel) at `dest`/understudy, caches left out; its path."""
    import os
    import shutil

    from understudy.platform import shipped

    root = os.path.join(dest, "understudy")
    for package in CODE_PACKAGES:
        shutil.copytree(shipped.folder(package), os.path.join(root, package.split(".", 1)[1]),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def save(checkpoint_dir: str, path: str) -> None:
    """An MLflow model folder at `path` holding the checkpoint's weights and metadata, the
    project's code (code/understudy) and its requirements."""
    import os
    import shutil
    import tempfile

    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "checkpoint")
        os.makedirs(data)
        for name in CHECKPOINT_FILES:
            shutil.copy(os.path.join(checkpoint_dir, name), data)
        mlflow.pyfunc.save_model(path, loader_module=__name__, data_path=data,
                                 code_paths=[copy_code(tmp)], pip_requirements=requirements())
