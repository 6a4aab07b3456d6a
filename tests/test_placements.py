"""Devices and placements (platform/resources.py): where each stage's work runs, and whether
what every ready experiment asks for fits the shipped RayCluster (k8s/raycluster.yaml) at its
maximum replicas. The placements are the stages' own requests, so a stage that asked for
something else would fail here, not wait forever on a cluster."""
from __future__ import annotations

import os
import shlex

import pytest
import yaml

from understudy.platform import experiment, resources
from understudy.platform.config import ConfigError, load_experiment, read_yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def all_scales():
    for name in experiment.available():
        scales = read_yaml(experiment.experiment_path(name)).get("scales") or {}
        for scale in ["demo", *[s for s in scales if s != "demo"]]:
            yield name, scale


def devices(device: str) -> list[int]:
    """The GPU counts a stage with this `device` may ask for: auto may find GPUs or not."""
    return {"cpu": [0], "gpu": [1], "auto": [0, 1]}[device]


# ---- the device choice -----------------------------------------------------------------------

@pytest.mark.parametrize("device,gpus,on_cluster,expected", [
    ("cpu", 0, False, 0), ("cpu", 4, True, 0),  # never a GPU
    ("auto", 0, False, 0), ("auto", 0, True, 0),  # falls back to the CPU
    ("auto", 1, False, 1), ("auto", 2, True, 1),  # one per learner / worker when there are some
    ("gpu", 0, True, 1),  # a cluster's autoscaler can add a GPU pod
    ("gpu", 1, False, 1),
])
def test_the_device_is_chosen_in_one_place_and_falls_back_to_the_cpu(device, gpus, on_cluster, expected):
    assert resources.gpus_for(device, gpus, on_cluster, "distill.device") == expected


def test_asking_a_local_ray_without_a_gpu_for_one_is_refused_not_left_waiting():
    with pytest.raises(ConfigError, match=r"distill.device: 'gpu'.*no GPU.*valid here: auto, cpu"):
        resources.gpus_for("gpu", 0, False, "distill.device")


def test_on_this_machine_auto_trains_and_plays_on_the_cpu(ray_session):
    """The CPU path the end-to-end tests run: the real local Ray has no GPU."""
    from understudy.platform.distill import _train_device

    assert resources.stage_gpus("auto", "distill.device") == 0
    assert str(_train_device(0, world=1)) == "cpu"
    assert resources.evaluation_task_resources("imitator", 0) == {"num_cpus": 1, "num_gpus": 0}


def test_a_gpu_choice_reaches_every_request():
    """Teach: RLlib's own resource request for the teacher's config holds the Learner's GPU.
    Distill: the trial (or each Ray Train worker) asks for one. Evaluate: imitators' playing
    tasks share a GPU; the teacher, random and scratch agents stay on the CPU."""
    cfg = load_experiment(experiment.experiment_path("breakout_to_spaceinvaders"), "demo")
    (teach,) = resources.teach_placements(cfg.teach, 1)
    assert teach.total == {"CPU": 1.0, "GPU": 1.0}
    (cpu_teach,) = resources.teach_placements(cfg.teach, 0)
    assert "GPU" not in cpu_teach.total
    assert resources.distill_trial_resources(cfg.distill, 1) == {"cpu": cfg.distill.cpus_per_trial, "gpu": 1}
    parallel = cfg.distill.model_copy(update={"workers": 2})
    assert resources.distill_trial_resources(parallel, 1)["cpu"] == 0  # Ray Train's driver only
    workers = resources.distill_placements(parallel, 1)[1]
    assert workers.bundles == ({"CPU": float(cfg.distill.cpus_per_trial), "GPU": 1.0},) * 2
    tasks = {p.what.split()[0]: p.total for p in resources.evaluate_placements(cfg.evaluate, 1, 1, 1)}
    assert tasks["imitator"]["GPU"] == resources.EVAL_GPU_SHARE
    assert "GPU" not in tasks["teacher"] and "GPU" not in tasks["random"]


# ---- placements against the shipped cluster --------------------------------------------------

def test_the_shipped_cluster_is_read_from_the_manifest():
    cluster = resources.shipped_cluster()
    groups = {g.name: g for g in cluster.groups}
    assert groups["head"].resources["CPU"] == 0  # no trials on the head
    assert groups["cpu"].resources["CPU"] == 4 and groups["cpu"].max_replicas == 8
    assert groups["gpu"].resources == {"CPU": 8.0, "GPU": 1.0, "memory": 32 * 2**30}
    assert groups["gpu"].max_replicas == 2 and cluster.gpus_at_start == 0


@pytest.mark.parametrize("name,scale", list(all_scales()))
def test_every_placement_of_every_ready_experiment_fits_the_shipped_cluster(name, scale):
    cfg = load_experiment(experiment.experiment_path(name), scale)
    cluster = resources.shipped_cluster()
    for gpus in devices(cfg.teach.device):
        assert resources.concurrent(resources.teach_placements(cfg.teach, gpus), cluster) >= 1, \
            f"{name} ({scale}): a teach trial with {gpus} GPU does not fit"
    for stage in (cfg.distill, cfg.ed):
        if stage is None:
            continue
        for gpus in devices(stage.device):
            placements = resources.distill_placements(stage, gpus)
            assert resources.concurrent(placements, cluster) >= 1, \
                f"{name} ({scale}): a {stage.name} trial with {gpus} GPU(s) does not fit: {placements}"
    for gpus in devices(cfg.evaluate.device):
        for p in resources.evaluate_placements(cfg.evaluate, gpus, len(cfg.distill.run_seeds), len(cfg.teach.seeds)):
            assert resources.concurrent([p], cluster) >= 1, f"{name} ({scale}): {p.what} does not fit"


def test_a_placement_that_cannot_fit_is_caught():
    """What full scale asked before: 4 Ray Train workers of 8 CPUs, on a cluster whose only
    8-CPU pods are its two GPU pods."""
    cfg = load_experiment(experiment.experiment_path("breakout_to_spaceinvaders"), "full")
    too_big = cfg.distill.model_copy(update={"workers": 4, "cpus_per_trial": 8})
    cluster = resources.shipped_cluster()
    assert resources.concurrent(resources.distill_placements(too_big, 0), cluster) == 0
    assert resources.concurrent(resources.distill_placements(too_big.model_copy(update={"workers": 2}), 0),
                                cluster) == 1
    nine = resources.Placement("x", "9 CPUs in one bundle", ({"CPU": 9.0},), 1)
    assert resources.concurrent([nine], cluster) == 0  # no pod has 9 CPUs, though the cluster has 48
    strict = resources.Placement("x", "two 4-CPU bundles on one node", ({"CPU": 4.0},) * 2, 3, "STRICT_PACK")
    assert resources.concurrent([strict], cluster) == 2  # only the two 8-CPU pods hold both


def test_the_rayjob_runs_a_ready_experiment_whose_placements_fit():
    with open(os.path.join(REPO_ROOT, "k8s", "rayjob.yaml")) as f:
        job = yaml.safe_load(f)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[1] == "experiment"
    name = os.path.splitext(os.path.basename(argv[2]))[0]
    scale = argv[argv.index("--scale") + 1]
    assert (name, scale) in set(all_scales())  # covered by the fit test above
    cfg = load_experiment(experiment.experiment_path(name), scale)
    cluster = resources.shipped_cluster()
    assert resources.concurrent(resources.teach_placements(cfg.teach, 0), cluster) >= len(cfg.teach.seeds)
