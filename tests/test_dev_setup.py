"""`./dev setup` installs torch's CPU build on a machine without an NVIDIA GPU (PyPI's Linux wheel
is the multi-GB CUDA build) and the CUDA build on one with a GPU: the route it takes is printed
by `./dev torch-route`, tested here on this machine as it is and as it would be elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO_ROOT


def route(tmp_path, gpu: bool = False, local_wheels: bool = True) -> str:
    env = dict(os.environ)
    if gpu:  # a machine whose nvidia-smi lists a GPU
        fake = tmp_path / "bin"
        fake.mkdir(exist_ok=True)
        (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-0)'\n")
        (fake / "nvidia-smi").chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"
    if not local_wheels:  # pip finds no torch wheel on local disk
        empty = tmp_path / "no-wheels"
        empty.mkdir(exist_ok=True)
        env["PIP_FIND_LINKS"] = str(empty)
        env["PIP_EXTRA_INDEX_URL"] = ""
    out = subprocess.run(["./dev", "torch-route", sys.executable], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_machine_without_a_gpu_gets_the_cpu_build(tmp_path):
    import torch

    assert route(tmp_path, local_wheels=False) == "cpu https://download.pytorch.org/whl/cpu"
    if route(tmp_path) == "cpu local":  # this machine: a CPU wheel on local disk
        assert torch.version.cuda is None and "+cpu" in torch.__version__


def test_a_machine_with_an_nvidia_gpu_gets_pypis_cuda_build(tmp_path):
    assert route(tmp_path, gpu=True) == "cuda pypi"


def test_the_pin_setup_installs_is_pyprojects():
    text = open(os.path.join(REPO_ROOT, "pyproject.toml")).read()
    out = subprocess.run(["bash", "-c", "source <(sed -n '/^torch_pin()/p' dev); torch_pin"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() and f'"{out.stdout.strip()}"' in text
