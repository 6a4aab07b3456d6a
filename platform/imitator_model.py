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
    """An MLflow model folder at `path` holding the checkpoint's weights and metadata, the
    project's code (code/understudy), its requirements, and its signature (the inputs the
    network reads and its logits) where it can be found."""
    import os
    import shutil
    import tempfile

    import mlflow.pyfunc

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
                                 code_paths=[copy_code(tmp)], pip_requirements=requirements())
