"""`understudy plan NAME [--scale S]`: what a ready experiment (or a pipeline) will cost, before
anything runs. Per stage: env steps, trials, gradient updates, evaluation env steps, what each
placement asks of the Ray cluster (platform/resources.py, the stages' own requests) and how many
fit at once, and an estimated wall-clock on this machine and on the shipped RayCluster
(k8s/raycluster.yaml at its maximum replicas).

Every speed comes from a benchmark's JSON under docs/bench/ and is named in the output with its
source; a speed that was never measured is shown as such, not guessed. The assumptions are
printed with the plan.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from understudy.algorithms import teacher_kinds
from understudy.envs import family_of
from understudy.platform import resources, shipped
from understudy.platform.config import DistillConfig, EvaluateConfig, TeachConfig

BENCH = shipped.folder(shipped.BENCH_RESULTS)  # docs/bench/, shipped with the package
THIS_MACHINE_CPUS = 2  # where the docs/bench figures were measured (their "machine" fields)

ASSUMPTIONS = (
    "speeds are those measured on a 2-core CPU machine (docs/bench/*.json); a cluster CPU is "
    "taken to be as fast as one core there",
    "no GPU speed has been measured (no GPU was available): a GPU placement is estimated at its "
    "CPU speed, an upper bound on its time",
    "a trial uses the speed measured for its algorithm and env family; concurrency is what the "
    "placements allow at once (this machine: its CPUs; the cluster: its groups at maximum replicas)",
    "imitator updates: seconds per update measured in a real distill stage of the same model, batch and CPUs "
    "(bench/stage_speeds.py), else for the update alone (bench/imitator_updates.py); "
    "epochs without max_batches_per_epoch are estimated from the teachers' env steps (rows / (batch x window))",
    "device: auto is planned as the CPU on the shipped cluster (its GPU group starts with no pod, "
    "and auto takes a GPU only where one exists); device: gpu makes the autoscaler add GPU pods",
    "evaluation: episodes are as long as they were in an earlier run of this very stage (the same "
    "evaluate, teach and imitator configs; bench/stage_speeds.py); where there was none, episodes "
    "without a cap are counted at the longest an episode may be (ALE: 27,000 steps; MinAtar: its "
    "10,000-step clock), and that stage's env steps and time are upper bounds",
)


def _load(name: str) -> dict:
    path = BENCH / name
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class Speed:
    per_s: float | None  # None: never measured
    source: str


def teacher_speed(algorithm: str, game: str) -> Speed:
    """Env steps per second of one teacher trial (one CPU), from bench/learning.py's
    interleaved wall-clock runs: the file the teacher kind names for the game's family
    (algorithms/teacher_kinds.py)."""
    family = family_of(game).name
    kind = teacher_kinds.get(algorithm)
    name = kind.speeds.get(family) if kind is not None else None
    data = _load(name) if name else {}
    if data.get("teacher_wall_s") and data.get("speed_env_steps", {}).get("teacher"):
        steps = data["speed_env_steps"]["teacher"]
        return Speed(steps / data["teacher_wall_s"], f"docs/bench/{name}: teacher {steps} env steps "
                                                     f"in {data['teacher_wall_s']:.1f}s")
    return Speed(None, f"{algorithm} on {family}: not measured")


def update_speed(key: str, cfg=None) -> Speed:
    """Seconds per update measured in a real distill stage of the same algorithm, model, batch,
    CPUs and precision (bench/stage_speeds.py: held-out evaluation and checkpoints included; a
    stage recorded before precision was a setting trained in float32), else the update alone
    measured for this stage (`key`) or for another stage with the same algorithm, model and
    batch (bench/imitator_updates.py)."""
    if cfg is not None:
        same = (cfg.algorithm, cfg.model.model_dump(exclude_none=True), cfg.batch_size, cfg.cpus_per_trial,
                cfg.precision)
        real = [s for s in _load("stage_speeds.json").get("distill", [])
                if (s["algorithm"], s["model"], s["batch_size"], s["cpus_per_trial"],
                    s.get("precision", "float32")) == same]
        if real:
            newest = max(real, key=lambda s: s["finished"])
            return Speed(1.0 / newest["seconds_per_update"],
                         f"docs/bench/stage_speeds.json: the real distill stage {newest['stage']} "
                         f"({newest['finished']}): {newest['seconds_per_update']:.3g}s per update, "
                         "held-out evaluation and checkpoints included")
    models = _load("imitator_updates.json").get("models", {})
    data, source = models.get(key), key
    if not data and cfg is not None:
        same = (cfg.algorithm, cfg.model.model_dump(exclude_none=True), cfg.batch_size)
        source, data = next(((k, m) for k, m in sorted(models.items())
                             if (m["algorithm"], m["model"], m["batch_size"]) == same), (key, None))
    if not data:
        return Speed(None, f"{key}: not measured (run bench/imitator_updates.py)")
    return Speed(1.0 / data["seconds_per_update"],
                 f"docs/bench/imitator_updates.json {source}"
                 + ("" if source == key else " (the same model and batch)")
                 + f": {data['seconds_per_update']:.3g}s per update, the update alone")


def episode_steps(cfg: EvaluateConfig, teach: TeachConfig, distill: DistillConfig) -> tuple[dict, str] | None:
    """The mean episode length per agent and game measured in an earlier run of this very
    evaluation stage (bench/stage_speeds.py), with its source; None where it never ran."""
    from understudy.platform.config import config_digest

    digests = {"evaluate": config_digest(cfg), "teacher": config_digest(teach), "imitator": config_digest(distill)}
    runs = [e for e in _load("stage_speeds.json").get("episode_steps", []) if e["digests"] == digests]
    if not runs:
        return None
    newest = max(runs, key=lambda e: e["finished"])
    return newest["mean_episode_steps"], (f"docs/bench/stage_speeds.json: episode lengths of the real run of "
                                          f"{newest['stage']} ({newest['finished']})")


def play_speed(agent: str, game: str, model: dict | None = None) -> Speed:
    """Env steps per second of one playing task: measured in a real evaluation stage for this
    agent and env family (and, for a model, the same model), else by a bench."""
    family = family_of(game).name
    real = [p for p in _load("stage_speeds.json").get("evaluate", [])
            if p["agent"] == agent and p["family"] == family and p.get("env_steps_per_s")
            and (agent not in resources.MODEL_AGENTS or (model is not None and p["model"] == model))]
    if real:
        newest = max(real, key=lambda p: p["finished"])
        return Speed(newest["env_steps_per_s"],
                     f"docs/bench/stage_speeds.json: {agent} on {family} in the real evaluation "
                     f"{newest['stage']} ({newest['finished']}): {newest['env_steps_per_s']:.0f} env steps/s")
    if agent in resources.MODEL_AGENTS:
        data = _load("eval.json")
        if data.get("cached_steps_per_s"):
            return Speed(data["cached_steps_per_s"],
                         f"docs/bench/eval.json: AD (context {data['context']}, d_model {data['d_model']}, "
                         f"{data['layers']} layers) at {data['envs']} envs, the largest imitator")
    name, key, what = STEPPING.get(family, (None, None, None))
    data = _load(name) if name else {}
    if data.get("median_steps_per_s", {}).get(key):
        return Speed(data["median_steps_per_s"][key], f"docs/bench/{name}: {what}")
    return Speed(None, f"{agent} on {family}: not measured")


# Env stepping alone, per env family (bench/collection.py): the speed of an agent with no model.
STEPPING = {"ale": ("collection.json", "raw8", "raw ALE stepping, 8 envs")}


@dataclass
class StageCost:
    stage: str
    name: str
    trials: int
    env_steps: int = 0
    gradient_updates: int = 0
    eval_env_steps: int = 0
    placements: list = field(default_factory=list)
    work: list = field(default_factory=list)  # (seconds of work on one placement, count, source)
    here: int = 0  # requests that run at once on this machine
    cluster: int = 0  # ... on the shipped cluster
    notes: list = field(default_factory=list)
    # Trials of a teach or distill stage are alike and run in waves; evaluation tasks differ,
    # and a free slot takes the next one (their total over the slots).
    tasks_differ: bool = False
    bounded: bool = False  # its env steps and time are upper bounds (episode lengths not known)

    def hours(self, concurrent: int) -> float | None:
        """Wall-clock: every request's work, `concurrent` at a time (None: a speed is missing or
        nothing fits); tasks that differ take their total over the slots, but never less than
        the longest task."""
        if concurrent <= 0 or any(s is None for s, _, _ in self.work):
            return None
        if self.tasks_differ:
            seconds = max(sum(s * n for s, n, _ in self.work) / concurrent,
                          max((s for s, _, _ in self.work), default=0))
        else:
            seconds = sum(s * math.ceil(n / concurrent) for s, n, _ in self.work)
        return seconds / 3600


def _teacher_updates(cfg: TeachConfig) -> int:
    """Gradient updates of one RLlib teacher trial: its kind's count (algorithms/teacher_kinds.py)."""
    kind = teacher_kinds.get(cfg.algorithm)
    return kind.updates(getattr(cfg, kind.name), cfg.env_steps, cfg.env_steps_per_iter)


def _this_machine() -> resources.Cluster:
    return resources.Cluster([resources.NodeGroup("this machine", {"CPU": float(THIS_MACHINE_CPUS),
                                                                   "memory": 24 * 2**30}, 1)])


def _gpus(device: str, cluster: resources.Cluster) -> int:
    """What `device` asks for on `cluster`: `auto` finds the GPUs of the pods a fresh cluster
    starts with (the shipped GPU group starts at zero, so there `auto` is the CPU)."""
    return {"cpu": 0, "gpu": 1}.get(device, 1 if cluster.gpus_at_start >= 1 else 0)


def teach_cost(cfg: TeachConfig, cluster: resources.Cluster) -> StageCost:
    source = cfg.local_source
    if source is not None:  # a history source recording in the driver (algorithms/sources.py)
        steps = cfg.env_steps * cfg.tasks_per_game * len(cfg.seeds)
        cost = StageCost("teach", cfg.name, trials=len(cfg.seeds), env_steps=steps,
                         gradient_updates=steps if source.from_scratch is not None else 0)
        cost.placements = resources.teach_placements(cfg, 0)
        cost.here = cost.cluster = 1
        if source.steps_per_s is None:
            cost.work = [(0.0, 1, f"{source.description} in the driver: seconds")]
        else:  # env_steps is each history's cap: episodes may end sooner, an upper bound
            cost.work = [(steps / source.steps_per_s, 1, f"{source.description} in the driver at "
                          f"{source.steps_per_s:,.0f} env steps/s (measured; at most)")]
        return cost
    trials = len(cfg.games) * len(cfg.seeds)
    cost = StageCost("teach", cfg.name, trials=trials, env_steps=cfg.env_steps * trials,
                     gradient_updates=_teacher_updates(cfg) * trials)
    here = resources.teach_placements(cfg, 0)
    there = resources.teach_placements(cfg, _gpus(cfg.device, cluster))
    cost.placements = there
    cost.here, cost.cluster = resources.concurrent(here, _this_machine()), resources.concurrent(there, cluster)
    speed = teacher_speed(cfg.algorithm, cfg.games[0])  # one speed per stage: the first game's
    seconds = None if speed.per_s is None else cfg.env_steps / speed.per_s
    cost.work.append((seconds, trials, speed.source))
    return cost


def distill_cost(cfg: DistillConfig, teach: TeachConfig, cluster: resources.Cluster, key: str) -> StageCost:
    from understudy.platform.distill import UpdatesPerTrial

    trials = resources.distill_trials(cfg)
    games = len(cfg.data.games or cfg.train_games)
    rows = teach.env_steps * len(teach.seeds) * games // cfg.data.gap  # the teachers' steps it reads
    rows *= teach.tasks_per_game  # a local source records one history per task
    # What distill's progress lines count: each worker's updates of one trial.
    updates = int(UpdatesPerTrial(rows)({"distill": cfg.model_dump()}))
    cost = StageCost("distill", cfg.name, trials=trials, gradient_updates=updates * trials)
    if cfg.data.expert_last is not None and not cfg.cycle_data:
        cost.notes.append(f"expert_last {cfg.data.expert_last}: the expert episodes' length is not known before "
                          "teach; counted as the whole history, an upper bound")
    here = resources.distill_placements(cfg, 0)
    there = resources.distill_placements(cfg, _gpus(cfg.device, cluster))
    cost.placements = there
    cost.here, cost.cluster = resources.concurrent(here, _this_machine()), resources.concurrent(there, cluster)
    speed = update_speed(key, cfg)
    seconds = None if speed.per_s is None else updates / speed.per_s
    cost.work.append((seconds, trials, speed.source))
    return cost


def evaluate_cost(cfg: EvaluateConfig, teach: TeachConfig, distill: DistillConfig,
                  cluster: resources.Cluster, ed: DistillConfig | None = None) -> StageCost:
    from understudy.platform.evaluate import step_budget

    imitator_runs, teacher_runs = len(distill.run_seeds), len(teach.seeds)
    placements_there = resources.evaluate_placements(cfg, _gpus(cfg.device, cluster),
                                                     imitator_runs, teacher_runs)
    tasks = sum(p.count for p in placements_there)
    cost = StageCost("evaluate", cfg.name, trials=tasks, placements=placements_there, tasks_differ=True)
    if cfg.horizon is not None:
        cost.notes.append(f"horizon {cfg.horizon}x the histories' length replaces episodes={cfg.episodes}: "
                          "not known before distill, counted as `episodes`")
    lengths: dict = {}
    if measured := episode_steps(cfg, teach, distill):
        lengths, source = measured
        cost.notes.append(source)

    def steps_of(agent: str, game: str) -> int:
        """One run's env steps: its copies' episodes at the length measured for the agent that
        plays episodes (the imitator's for the agents that play its env steps), else the bound.
        Dark Room's episodes have one fixed length: its budget is exact."""
        if family_of(game).per_goal:
            return step_budget(cfg, game)
        mean = lengths.get("teacher" if agent == "teacher" else "imitator", {}).get(game)
        if mean is None:
            cost.bounded = True
            return step_budget(cfg, game)
        return round(mean * cfg.episodes * cfg.copies)

    for agent in cfg.agents:
        runs = resources.runs_of(agent, imitator_runs, teacher_runs)
        for game in cfg.games:
            steps = steps_of(agent, game)
            cost.eval_env_steps += steps * runs
            if agent == "scratch":
                speed = teacher_speed(teach.algorithm, game)
                cost.env_steps += steps * runs
            else:
                player = ed if agent == "ed" and ed is not None else distill
                speed = play_speed(agent, game, player.model.model_dump(exclude_none=True))
            seconds = None if speed.per_s is None else steps / speed.per_s
            cost.work.append((seconds, runs, speed.source))
    one_task = [resources.Placement("evaluate", "one task", ({"CPU": 1.0},), tasks)]
    cost.here = resources.concurrent(one_task, _this_machine())
    cost.cluster = _tasks_at_once(placements_there, cluster)
    return cost


def _tasks_at_once(placements: list[resources.Placement], cluster: resources.Cluster) -> int:
    """How many of these independent tasks the cluster runs at once: GPU tasks first (they
    can only go where a GPU is), then the rest; 0 if some kind of task fits nowhere."""
    nodes, placed = cluster.nodes(), 0
    for p in sorted(placements, key=lambda p: -p.total.get("GPU", 0)):
        fitted = 0
        while fitted < p.count and resources.pack(resources.Placement(p.stage, p.what, p.bundles, 1), nodes):
            fitted += 1
        if fitted == 0 and resources.concurrent([p], cluster) == 0:
            return 0
        placed += fitted
    return placed


def plan(cfg, cluster: resources.Cluster | None = None) -> list[StageCost]:
    """The cost of every stage of an experiment or pipeline config."""
    cluster = cluster or resources.shipped_cluster()
    name = cfg.name
    scale = getattr(cfg, "scale", "-")
    costs = [teach_cost(cfg.teach, cluster)]
    if getattr(cfg, "leave_one_out", None):
        from understudy.platform.experiment import rotations

        parts = rotations(cfg)  # one distill (and ED) and evaluation per held-out game
    else:
        parts = [cfg]
    for part in parts:
        costs.append(distill_cost(part.distill, cfg.teach, cluster, f"{name}/{scale}/distill"))
        if getattr(part, "ed", None) is not None:
            costs.append(distill_cost(part.ed, cfg.teach, cluster, f"{name}/{scale}/ed"))
        costs.append(evaluate_cost(part.evaluate, cfg.teach, part.distill, cluster, getattr(part, "ed", None)))
    return costs


def _n(x: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.0f}"


def _h(hours: float | None, concurrent: int) -> str:
    if concurrent <= 0:
        return "never (does not fit)"
    if hours is None:
        return "unknown (a speed is not measured)"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _bundles(p: resources.Placement) -> str:
    def one(b):
        parts = [f"{v:g} {k}" for k, v in b.items() if k != "memory" and v]
        if b.get("memory"):
            parts.append(f"{b['memory'] / 2**20:g} MiB")
        return "{" + ", ".join(parts or ["nothing"]) + "}"
    return " + ".join(one(b) for b in p.bundles)


def format_plan(cfg, costs: list[StageCost], cluster: resources.Cluster) -> str:
    groups = ", ".join(f"{g.name}: {g.max_replicas} x {_bundles(resources.Placement('', '', (g.resources,), 1))}"
                       for g in cluster.groups)
    lines = [f"plan: {cfg.kind} {cfg.name}" + (f" (scale {cfg.scale})" if hasattr(cfg, "scale") else ""),
             f"cluster (k8s/raycluster.yaml at maximum replicas): {groups}",
             f"this machine: {THIS_MACHINE_CPUS} CPUs, no GPU", ""]
    total_here = total_there = 0.0
    unknown_here = unknown_there = never_here = never_there = False
    for c in costs:
        lines.append(f"{c.stage} {c.name!r}: {c.trials} {'tasks' if c.stage == 'evaluate' else 'trials'}")
        if c.env_steps:
            lines.append(f"  env steps:            {_n(c.env_steps)}"
                         + ("  (scratch baseline)" if c.stage == "evaluate" else ""))
        if c.gradient_updates:
            lines.append(f"  gradient updates:     {_n(c.gradient_updates)}")
        if c.eval_env_steps:
            lines.append(f"  evaluation env steps: {'<= ' if c.bounded else ''}{_n(c.eval_env_steps)}")
        for p in c.placements:
            lines.append(f"  asks: {p.count} x {_bundles(p)} ({p.what})")
        lines.append(f"  at once:              {c.here} here, {c.cluster} on the cluster")
        here, there = c.hours(c.here), c.hours(c.cluster)
        # uncapped episodes of unknown length are counted at the game's clock: a bound
        bound = "at most " if c.bounded and here is not None else ""
        lines.append(f"  estimated wall-clock: {bound}{_h(here, c.here)} here, "
                     f"{bound}{_h(there, c.cluster)} on the cluster")
        for source in sorted({s for _, _, s in c.work}):
            lines.append(f"    speed: {source}")
        for note in c.notes:
            lines.append(f"    note: {note}")
        total_here += here or 0.0
        total_there += there or 0.0
        unknown_here |= here is None and c.here > 0
        unknown_there |= there is None and c.cluster > 0
        never_here |= c.here <= 0
        never_there |= c.cluster <= 0
        lines.append("")
    def total(hours, unknown, never):
        return "never (a stage does not fit)" if never else _h(hours, 1) + (" + unmeasured parts" if unknown else "")

    lines.append(f"total: {total(total_here, unknown_here, never_here)} here, "
                 f"{total(total_there, unknown_there, never_there)} on the cluster"
                 + (" (evaluation at its upper bound where marked)" if any(c.bounded for c in costs) else ""))
    lines.append("assumptions:")
    lines += [f"  - {a}" for a in ASSUMPTIONS]
    return "\n".join(lines)


def run_plan(name: str, scale: str | None) -> str:
    """The plan of a ready experiment (its name, or a path to an experiment file) at `scale`, of
    a pipeline file, or of a demo file (its Atari stage and its experiment); ConfigError (one
    line) for a name, file or scale that does not exist."""
    from understudy.platform import experiment
    from understudy.platform.config import ConfigError, load_config, read_yaml

    path = experiment.experiment_path(name)
    data = read_yaml(path, "experiment or pipeline file")
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "demo":  # its Atari teach stage, then its experiment at the demo's scale (or --scale)
        cfg = load_config(path, expect=("demo",))
        cluster = resources.shipped_cluster()
        exp = experiment.load(cfg.experiment, scale or cfg.scale)
        return format_plan(cfg.model_copy(update={"scale": exp.scale}),
                           [teach_cost(cfg.atari, cluster), *plan(exp, cluster)], cluster)
    if kind == "pipeline":
        if scale not in (None, "demo"):
            raise ConfigError(f"{path}: a pipeline has no scales (got --scale {scale}); plan it without --scale")
        cfg = load_config(path, expect=("pipeline",))
    else:
        cfg = experiment.load(str(path), scale)
    cluster = resources.shipped_cluster()
    return format_plan(cfg, plan(cfg, cluster), cluster)
