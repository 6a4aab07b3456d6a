"""What each stage asks the Ray cluster for, and the one place that chooses CPU or GPU.

Every stage config has `device: auto | cpu | gpu`:
- `cpu`: never a GPU;
- `auto`: a GPU when the Ray cluster has one now, else the CPU (a laptop, a CPU-only cluster);
- `gpu`: ask for one. On a cluster whose GPU group autoscales from zero (k8s/raycluster.yaml)
  `auto` sees no GPU until a GPU pod exists, so the full scales say `gpu` where the work is GPU
  work and the autoscaler brings a GPU pod up. A local Ray without a GPU can never get one:
  there `gpu` is refused instead of waiting forever.

The placements below are the very requests the stages make (teach: RLlib's own resource request
for the teacher's config; distill: the Tune trial and its Ray Train workers; evaluate: one Ray
task per agent, game and training run), so `understudy plan` and tests/test_placements.py check
what will really be asked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from understudy.platform.config import ConfigError, DistillConfig, EvaluateConfig, TeachConfig, teacher_settings

# Agents that run an imitator's network while they play; the others (teacher, random, no-op)
# act with a small CNN or no network and stay on the CPU.
MODEL_AGENTS = ("imitator", "ed", "finetune", "context_reset", "reward_blind", "warmup")
# A frozen imitator playing a few copies of a game uses a fraction of a GPU: four playing tasks
# share one, so a GPU pod's 8 CPUs and its GPU are used together.
EVAL_GPU_SHARE = 0.25


def gpus_for(device: str, cluster_gpus: float, on_cluster: bool, field_name: str) -> int:
    """GPUs per learner / worker / playing task (0 or 1) for a stage's `device` setting."""
    if device == "cpu":
        return 0
    if device == "auto":
        return 1 if cluster_gpus >= 1 else 0
    if device == "gpu":
        if cluster_gpus < 1 and not on_cluster:
            raise ConfigError(f"{field_name}: 'gpu', but this local Ray has no GPU and cannot get one "
                              "(no RAY_ADDRESS); valid here: auto, cpu")
        return 1
    raise ConfigError(f"{field_name}: {device!r}; valid: auto, cpu, gpu")


def stage_gpus(device: str, field_name: str) -> int:
    """`gpus_for` against the running Ray cluster (ray.init has been called)."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    chosen = gpus_for(device, gpus, on_cluster=bool(os.environ.get("RAY_ADDRESS")), field_name=field_name)
    where = "GPU" if chosen else "CPU"
    print(f"[{field_name.split('.')[0]}] device {device}: on the {where} (the cluster has {gpus:g} GPU(s) now)",
          flush=True)
    return chosen


@dataclass(frozen=True)
class Placement:
    """`count` identical requests, each a Ray placement group of `bundles` (resource dicts,
    Ray's names: CPU, GPU, memory in bytes) that must be placed together."""
    stage: str
    what: str
    bundles: tuple[dict, ...]
    count: int
    strategy: str = "PACK"
    note: str = ""

    @property
    def total(self) -> dict:
        out: dict = {}
        for bundle in self.bundles:
            for k, v in bundle.items():
                out[k] = out.get(k, 0) + v
        return out


def _bundle(cpu: float, gpu: float = 0, memory: float = 0) -> dict:
    out = {"CPU": float(cpu)}
    if gpu:
        out["GPU"] = float(gpu)
    if memory:
        out["memory"] = float(memory)
    return out


def teach_placements(cfg: TeachConfig, gpus: int) -> list[Placement]:
    """One Tune trial per (game, seed): RLlib's resource request for the teacher's config."""
    if cfg.local_source is not None:  # a history source recording in the driver (algorithms/sources.py)
        return [Placement("teach", f"{cfg.local_source.description} (in the driver)", (_bundle(0),), 1)]
    from understudy.algorithms.teachers import teacher_config_from

    config = teacher_config_from(teacher_settings(cfg), game=cfg.games[0], seed=cfg.seeds[0],
                                 env_steps=cfg.env_steps, record=None, num_gpus_per_learner=gpus)
    request = config.algo_class.default_resource_request(config)
    bundles = tuple({k: float(v) for k, v in b.items() if v} for b in request.bundles)
    return [Placement("teach", f"{cfg.algorithm} teacher trial (Learner + {cfg.num_env_runners} env runner(s))",
                      bundles, len(cfg.games) * len(cfg.seeds), request.strategy)]


def distill_trial_resources(cfg: DistillConfig, gpus: int) -> dict:
    """What the Tune trial itself asks (`tune.with_resources`). A data-parallel trial is only
    Ray Train's driver: its workers' resources are in Ray Train's own placement group, so the
    trial asks for no CPU (Tune needs it to ask for something)."""
    if cfg.workers == 1:
        return {"cpu": cfg.cpus_per_trial, **({"gpu": gpus} if gpus else {})}
    return {"cpu": 0, "memory": 2**20}


def train_worker_resources(cfg: DistillConfig) -> dict:
    """Each Ray Train worker's CPUs (its GPU comes from ScalingConfig(use_gpu=...))."""
    return {"CPU": cfg.cpus_per_trial}


def distill_trials(cfg: DistillConfig) -> int:
    """Trials the sweep runs: grid points x samples x seeds."""
    points = 1
    for domain in cfg.search.values():
        if domain.grid is not None:
            points *= len(domain.grid)
    return points * cfg.num_samples * len(cfg.run_seeds)


def distill_placements(cfg: DistillConfig, gpus: int) -> list[Placement]:
    trials = distill_trials(cfg)
    if cfg.workers == 1:
        return [Placement("distill", f"{cfg.algorithm} imitator trial ({cfg.name})",
                          (_bundle(cfg.cpus_per_trial, gpus),), trials)]
    worker = _bundle(cfg.cpus_per_trial, gpus)
    return [Placement("distill", f"{cfg.algorithm} imitator trial ({cfg.name}): Ray Train's driver",
                      (_bundle(0, memory=2**20),), trials),
            Placement("distill", f"{cfg.algorithm} imitator trial ({cfg.name}): {cfg.workers} Ray Train workers",
                      (worker,) * cfg.workers, trials)]


def evaluation_task_resources(agent: str, gpus: int) -> dict:
    """`ray.remote` options of one agent's playing task."""
    return {"num_cpus": 1, "num_gpus": EVAL_GPU_SHARE if gpus and agent in MODEL_AGENTS else 0}


def runs_of(agent: str, imitator_runs: int, teacher_runs: int) -> int:
    """Training runs an agent plays as: imitator seeds (the imitator, its controls, and random
    and no-op, which play one run beside each imitator run on its env seeds), or teacher seeds."""
    if agent in ("imitator", "finetune", "ed", "context_reset", "reward_blind", "warmup", "random", "noop"):
        return imitator_runs
    return teacher_runs if agent in ("teacher", "scratch") else 1


def evaluate_placements(cfg: EvaluateConfig, gpus: int, imitator_runs: int, teacher_runs: int) -> list[Placement]:
    """One task per agent, game and training run (imitator seeds, teacher seeds)."""
    out = []
    for agent in cfg.agents:
        runs = runs_of(agent, imitator_runs, teacher_runs)
        task = evaluation_task_resources(agent, gpus)
        out.append(Placement("evaluate", f"{agent} playing task", (_bundle(task["num_cpus"], task["num_gpus"]),),
                             runs * len(cfg.games)))
    return out


# ---- the shipped cluster ----------------------------------------------------------------------

@dataclass(frozen=True)
class NodeGroup:
    """A RayCluster group: the Ray resources of one of its pods, and how many pods it may have."""
    name: str
    resources: dict
    max_replicas: int
    replicas: int = 0  # pods at the start; an autoscaler adds more up to max_replicas


@dataclass
class Cluster:
    groups: list[NodeGroup] = field(default_factory=list)

    def nodes(self) -> list[dict]:
        """Every pod at the groups' maximum replicas, as free resources."""
        return [dict(g.resources) for g in self.groups for _ in range(g.max_replicas)]

    @property
    def gpus_at_start(self) -> float:
        """GPUs before the autoscaler adds a pod: what `device: auto` finds on a fresh cluster."""
        return sum(g.resources.get("GPU", 0) * g.replicas for g in self.groups)

    @property
    def total(self) -> dict:
        out: dict = {}
        for node in self.nodes():
            for k, v in node.items():
                out[k] = out.get(k, 0) + v
        return out


def _quantity(value) -> float:
    """A Kubernetes quantity ('4', '500m', '16Gi') as a number (bytes for memory)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _pod_resources(spec: dict, start_params: dict) -> dict:
    """Ray's resources for a pod as KubeRay starts it: num-cpus (rayStartParams) or the
    container's CPU limit, nvidia.com/gpu as GPUs, the memory limit as memory."""
    limits = spec["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpus = float(start_params["num-cpus"]) if "num-cpus" in start_params else _quantity(limits["cpu"])
    out = {"CPU": cpus, "memory": _quantity(limits["memory"])}
    if "nvidia.com/gpu" in limits:
        out["GPU"] = _quantity(limits["nvidia.com/gpu"])
    return out


def shipped_cluster(path: str | os.PathLike | None = None) -> Cluster:
    """The RayCluster in k8s/raycluster.yaml (shipped with the package): head and worker groups
    at their maximum replicas."""
    from pathlib import Path

    import yaml

    from understudy.platform import shipped

    path = Path(path) if path else shipped.folder(shipped.K8S) / "raycluster.yaml"
    spec = yaml.safe_load(path.read_text())["spec"]
    head = spec["headGroupSpec"]
    groups = [NodeGroup("head", _pod_resources(head, head.get("rayStartParams", {})), 1, 1)]
    for g in spec["workerGroupSpecs"]:
        groups.append(NodeGroup(g["groupName"], _pod_resources(g, g.get("rayStartParams", {})),
                                int(g.get("maxReplicas", g.get("replicas", 1))), int(g.get("replicas", 0))))
    return Cluster(groups)


def _fits(bundle: dict, node: dict) -> bool:
    return all(node.get(k, 0) >= v for k, v in bundle.items())


def pack(placement: Placement, nodes: list[dict]) -> bool:
    """Place one request's bundles on `nodes` (free resources, updated in place), largest first;
    PACK and SPREAD may use several nodes, STRICT_PACK needs one node for all."""
    bundles = sorted(placement.bundles, key=lambda b: (-b.get("GPU", 0), -b.get("CPU", 0)))
    if placement.strategy == "STRICT_PACK":
        need = placement.total
        for node in nodes:
            if _fits(need, node):
                for k, v in need.items():
                    node[k] -= v
                return True
        return False
    trial = [dict(n) for n in nodes]
    for bundle in bundles:
        node = next((n for n in trial if _fits(bundle, n)), None)
        if node is None:
            return False
        for k, v in bundle.items():
            node[k] -= v
    nodes[:] = trial
    return True


def concurrent(placements: list[Placement], cluster: Cluster) -> int:
    """How many of a stage's requests (a trial: all its placements together) the cluster holds
    at once at its maximum size; 0: not even one fits, and the stage would wait forever."""
    nodes = cluster.nodes()
    count = max(p.count for p in placements)
    for placed in range(count):
        if not all(pack(p, nodes) for p in placements):
            return placed
    return count
