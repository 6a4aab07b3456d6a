"""What a stage's result depends on besides its config and data: the seeds it drew from, the
library versions it ran with, the CPU's kernels and the thread counts of the processes that did
the work. The same config, seeds and these give the same evaluation rows and imitator weights
(docs/reliability.md says where that holds bitwise and where not). Each stage records them in
its manifest (`reproducibility`) and as params of its MLflow stage run.

Thread counts are measured where the work ran: the driver here, Tune trials and evaluation tasks
in their own processes (Ray sets OMP_NUM_THREADS per worker; the platform sets torch's threads
per trial or task), reported back with their results and gathered by `worker_threads`.
"""
from __future__ import annotations

import json
import os
import sys

# distribution name -> what it is called in the record
LIBRARIES = {"torch": "torch", "ray": "ray", "numpy": "numpy", "gymnasium": "gymnasium", "ale-py": "ale_py",
             "minatar": "minatar", "mlflow": "mlflow", "pyarrow": "pyarrow"}
# environment variables that set math libraries' thread pools
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def versions() -> dict[str, str | None]:
    """Python's and each library's installed version (None: not installed)."""
    from importlib import metadata

    found = {"python": sys.version.split()[0]}
    for dist, name in LIBRARIES.items():
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def threads() -> dict[str, int | str | None]:
    """This process's thread counts: torch's intra- and inter-op pools and the math libraries'
    environment variables (None: unset)."""
    import torch

    return {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
            **{var: os.environ.get(var) for var in THREAD_VARIABLES}}


def cpu() -> dict[str, str]:
    """What decides which numeric kernels run: the machine and the CPU instructions torch uses
    (AVX2, AVX-512: different kernels, different rounding)."""
    import platform

    import torch

    return {"machine": platform.machine(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def record(seeds: dict, workers: dict | None = None) -> dict:
    """A stage's reproducibility record: its `seeds`, the versions, the CPU, and the threads of
    the driver and (`workers`: where -> their threads, see worker_threads) of its workers."""
    return {"seeds": seeds, "versions": versions(), "cpu": cpu(),
            "threads": {"driver": threads(), **(workers or {})}}


def worker_threads(reported: list[dict | None]) -> dict | list[dict] | None:
    """The threads several workers reported: one record when they all agree (the usual case),
    else every distinct one; None when none reported."""
    distinct = []
    for t in reported:
        if t is not None and t not in distinct:
            distinct.append(t)
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else distinct


def params(rec: dict) -> dict[str, str]:
    """The record as flat MLflow params: `seeds.<name>`, `versions.<library>`, `cpu.<key>`,
    `threads.<where>.<setting>` (values as JSON where they are not plain strings)."""
    flat = {}

    def put(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value if isinstance(value, str) else json.dumps(value)

    for section in ("seeds", "versions", "cpu", "threads"):
        put(section, rec.get(section, {}))
    return flat
