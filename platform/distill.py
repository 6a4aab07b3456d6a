"""Stage 2, distill: Tune trains imitators (BC, DT, AD, recurrent AD) on recorded learning
histories: one trial, or a sweep with an ASHA scheduler, checkpointed every epoch, resumable,
every trial an MLflow run. A trial that asks for several workers trains data-parallel with
Ray Train inside the trial.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

from ray import tune

from understudy.algorithms import imitators
from understudy.histories import shards
from understudy.histories.data import index_runs
from understudy.platform import plots, reproducibility, resources, stages, storage, tracking
from understudy.platform.config import DistillConfig
from understudy.platform.manifests import DistillManifest
from understudy.platform.stages import StageFailed
from understudy.platform.workspace import Workspace

METRICS = ("train_loss", "train_accuracy", "heldout_loss", "heldout_accuracy", "samples_per_s",
           "data_wait_s", "train_targets", "lr")  # lr: the one trained with (PBT perturbs it)


# ---- the data a trial sees ---------------------------------------------------------------------

def select_data(cfg: DistillConfig, root: str, run_ids: list[str], exclude=frozenset()):
    """(train histories, held-out histories, num_actions) exactly as a trial will read them."""
    from understudy.histories import data

    games = selected_games(cfg)
    d = cfg.data
    selection = data.Selection(games=tuple(games), cutoff_env_steps=d.cutoff_env_steps,
                               cutoff_policy_version=d.cutoff_policy_version, gap=d.gap,
                               expert_last=d.expert_last, cap_return_fraction=d.cap_return_fraction)
    recorded = data.index_runs(root, run_ids, frozenset(exclude))
    if d.cutoff_env_steps is not None and recorded:
        longest = max(recorded, key=lambda h: h.steps)
        if d.cutoff_env_steps >= longest.steps:  # it would cut nothing: not the experiment asked for
            raise StageFailed(f"distill.data.cutoff_env_steps={d.cutoff_env_steps} lies beyond every history it "
                              f"reads: the longest, run {longest.run_id} ({longest.game}), holds {longest.steps} "
                              f"env steps; give a cutoff below {longest.steps}, or leave cutoff_env_steps out "
                              "to train on whole histories")
    try:
        histories = selection.apply(recorded)
    except ValueError as err:
        raise StageFailed(f"distill.data.cap_return_fraction: {err}") from None
    if not histories:
        raise StageFailed(f"distill.data: no episodes left of runs {run_ids} after the selection "
                          f"{selection}; loosen the cutoff or check the games")
    transforms = step_transforms(cfg)
    train, heldout = data.split_heldout(histories, d.heldout_episodes)
    if not any(h.episodes for h in train):
        longest = max(len(h.episodes) for h in histories)
        raise StageFailed(f"distill: data.heldout_episodes {d.heldout_episodes} holds out every episode of the "
                          f"selected histories (at most {longest} episodes each after {selection}); nothing is left "
                          f"to train on: lower data.heldout_episodes below {longest}")
    return train, heldout, data.num_actions_of(histories, transforms)


def context_span(cfg: DistillConfig, train) -> dict:
    """How many of its data's episodes a cross-episode context holds; refuses (StageFailed) a
    context shorter than twice the 95th-percentile episode length, unless allow_short_context.
    {} for models whose context stays inside one episode, or that take no `context` (steps)."""
    imitator = imitators.get(cfg.algorithm)
    if not imitator.cross_episode or "context" not in imitator.parameters():
        return {}
    import numpy as np

    context = cfg.model.context or imitator.default("context")
    steps = np.array([e.steps for h in train for e in h.episodes])
    p95, mean = float(np.percentile(steps, 95)), float(steps.mean())
    span = {"context_steps": context, "episode_steps_p95": p95, "episode_steps_mean": round(mean, 1),
            "episodes_per_context": round(context / mean, 2), "allow_short_context": cfg.allow_short_context,
            **improvement_per_context(train, context_steps=context)}
    if context < 2 * p95:
        what = (f"model.context {context} steps holds {context / p95:.1f} episodes of 95th-percentile length "
                f"{p95:.0f} ({context / mean:.1f} of mean length {mean:.0f}, over {len(steps)} training episodes)")
        if not cfg.allow_short_context:
            raise StageFailed(f"distill: {what}; an in-context learner must see at least 2: set model.context "
                              f">= {int(np.ceil(2 * p95))}, or allow_short_context: true to train anyway (logged)")
        print(f"[distill] allow_short_context: {what}, below 2; training anyway", flush=True)
    else:
        print(f"[distill] context {context} steps: {context / mean:.1f} episodes of mean length {mean:.0f}, "
              f"{context / p95:.1f} of 95th-percentile length {p95:.0f}", flush=True)
    check_window_gain(cfg, span)
    if "return_gain_per_context" in span:
        print(f"[distill] across one context the teacher's return rises by {span['return_gain_per_context']:+.3g} "
              f"(median over histories {span['return_gain_per_context_median']:+.3g}, each history's slope times "
              f"the episodes of its own length a context holds) in these histories (its episodes' spread: "
              f"{span['return_std']:.3g}); an in-context learner can "
              "only copy the improvement its windows show (data.gap spreads a window over more of the history)",
              flush=True)
    return span


# A training window must rise by at least this many single episodes' spread (noise_h below)
# for the median history: below it the learning AD could copy is lost in the episodes' noise.
MIN_WINDOW_GAIN = 0.5
MIN_JUDGED_EPISODES = 10  # fewer selected episodes per history: slope and noise are not estimable


def check_window_gain(cfg: DistillConfig, span: dict) -> None:
    """Refuses (StageFailed) data whose median history rises by less than MIN_WINDOW_GAIN of one
    episode's spread across a context, unless allow_flat_windows (then logged in the span). ED's
    data (expert_last) is meant to hold no learning and is not judged."""
    ratio = span.get("gain_over_noise_by_history")
    span["allow_flat_windows"] = cfg.allow_flat_windows
    if not ratio or cfg.data.expert_last is not None:
        return
    if span["judged_episodes_median"] < MIN_JUDGED_EPISODES:
        print(f"[distill] window gain not judged: the median history keeps {span['judged_episodes_median']:.0f} "
              f"episodes, under the {MIN_JUDGED_EPISODES} its slope and noise need", flush=True)
        return
    median = span["gain_over_noise_median"]  # None: infinite (most histories rise without noise)
    if median is None or median >= MIN_WINDOW_GAIN:
        return
    what = (f"across one context (model.context {span['context_steps']} steps) the median history's return "
            f"rises by {median:.3g} of one episode's spread (its own successive-episode noise), below "
            f"{MIN_WINDOW_GAIN}; {span['histories_at_min_gain']} of {len(ratio)} histories reach it "
            f"(data.gap {cfg.data.gap}, median gain {span['return_gain_per_context_median']:+.3g})")
    if not cfg.allow_flat_windows:
        raise StageFailed(f"distill: {what}. A cross-episode imitator can only copy learning its windows show: "
                          "raise data.gap (subsample the histories) or model.context, use histories that learn "
                          "faster, or set allow_flat_windows: true to train anyway (logged)")
    print(f"[distill] allow_flat_windows: {what}; training anyway", flush=True)


def improvement_per_context(train, episodes_per_context: float | None = None, *,
                            context_steps: float | None = None) -> dict:
    """How much the teacher improves within one training window, per history h (its selected
    episodes, after cutoff and gap, in training order):

        slope_h    = least-squares slope of raw return per selected episode
        episodes_h = context_steps / mean steps of h's selected episodes
        gain_h     = slope_h * episodes_h

    Each history's own episode length: a game of 2,500-step episodes fits ~0.2 of them in a
    512-step context, and scaling its slope by the episodes per context pooled over all games
    overstated its gain many times. With gap subsampling the selected episodes are every gap-th
    one, so slope_h is already per selected episode (gap times the per-played-episode slope) and
    episodes_h counts selected episodes: no further factor. Returns the mean and median of gain_h
    over histories of 3 or more episodes, the per-history values in `train`'s order (and their
    run ids and episodes_h), and the mean spread of single episodes' returns beside them (a gain
    far below the spread: a window shows almost none). {} without such a history.

    Beside each gain, one episode's spread in its own history, noise_h = SD(r_t+1 - r_t) / sqrt(2)
    (the successive differences remove the learning trend, which the plain SD of a learning
    history would count as noise), and gain_h / noise_h: the window's rise in units of single
    episodes' noise. The slope is a straight line through the whole history, so for a curve that
    rises and then flattens it understates the windows where the rise is and overstates the flat
    ones.

    `context_steps` is the context in env steps; the older positional `episodes_per_context`
    (context / the mean episode length pooled over `train`) is turned back into it."""
    import numpy as np

    if (episodes_per_context is None) == (context_steps is None):
        raise ValueError("improvement_per_context: give context_steps= (env steps), or the older "
                         "episodes_per_context, not both or neither")
    if context_steps is None:
        steps = [e.steps for h in train for e in h.episodes]
        context_steps = episodes_per_context * (float(np.mean(steps)) if steps else 0.0)
    gains, spreads, noises, ratios, per_episodes, run_ids = [], [], [], [], [], []
    for h in train:
        returns = np.array([e.ret for e in h.episodes], dtype=float)
        if len(returns) < 3:
            continue
        episodes = context_steps / float(np.mean([e.steps for e in h.episodes]))
        gain = float(np.polyfit(np.arange(len(returns)), returns, 1)[0]) * episodes
        noise = float(np.diff(returns).std(ddof=1) / np.sqrt(2))
        gains.append(gain)
        spreads.append(returns.std())
        noises.append(noise)
        ratios.append(gain / noise if noise > 0 else (float("inf") if gain > 0 else 0.0))
        per_episodes.append(episodes)
        run_ids.append(getattr(h, "run_id", None))
    if not gains:
        return {}
    return {"return_gain_per_context": round(float(np.mean(gains)), 4),
            "return_gain_per_context_median": round(float(np.median(gains)), 4),
            "return_gain_per_context_by_history": [round(g, 4) for g in gains],
            "episodes_per_context_by_history": [round(e, 3) for e in per_episodes],
            "history_run_ids": run_ids,
            "return_std": round(float(np.mean(spreads)), 4),
            "episode_noise_by_history": [round(n, 4) for n in noises],
            "gain_over_noise_by_history": [round(r, 4) if np.isfinite(r) else None for r in ratios],
            "gain_over_noise_median": round(float(np.median(ratios)), 4) if np.isfinite(np.median(ratios)) else None,
            "histories_at_min_gain": int(sum(r >= MIN_WINDOW_GAIN for r in ratios)),
            "judged_episodes_median": float(np.median([len(h.episodes) for h in train if len(h.episodes) >= 3]))}


def returns_by_run(histories) -> dict[str, list[float]]:
    """Per teacher run, the raw return of each of its episodes in training order."""
    return {h.run_id: [e.ret for e in h.episodes] for h in histories}


def data_returns(train) -> dict[str, list[float]]:
    """Per game, the raw return of every training episode, in training order."""
    out: dict[str, list[float]] = {}
    for h in train:
        out.setdefault(h.game, []).extend(e.ret for e in h.episodes)
    return out


def selected_games(cfg: DistillConfig) -> list[str]:
    """The games whose histories a trial reads: data.games, or the stage's games narrowed to
    data.suite, or the stage's games."""
    if cfg.data.games is not None:
        return list(cfg.data.games)
    if cfg.data.suite is not None:
        from understudy.envs import resolve_suite

        suite = resolve_suite(cfg.data.suite)[1]
        return [g for g in suite if g in cfg.train_games] or suite
    return cfg.train_games


def step_transforms(cfg: DistillConfig):
    from understudy.histories.data import StepTransforms

    return StepTransforms(unified_actions=cfg.data.unified_actions, reward=cfg.data.reward,
                          gla=cfg.data.gla, seed=cfg.seed)


# ---- the trial -------------------------------------------------------------------------------------

def train_imitator(config: dict) -> None:
    """Tune function trainable: one imitator, reported and checkpointed every epoch, restored
    from its last checkpoint when Tune restarts it."""
    cfg = DistillConfig.model_validate(config["distill"])
    if cfg.workers > 1:
        return _train_data_parallel(cfg, config["context"])
    _train_loop(cfg, config["context"], report=tune.report, checkpoint=tune.get_checkpoint(),
                make_checkpoint=tune.Checkpoint.from_directory)


def _train_loop(cfg: DistillConfig, context: dict, report, checkpoint, make_checkpoint,
                rank: int = 0, world: int = 1) -> None:
    import torch

    from understudy.algorithms import imitation
    from understudy.histories.data import Loader

    torch.set_num_threads(cfg.cpus_per_trial)
    torch.manual_seed(cfg.seed)
    root = context["shard_root"]
    train, heldout, num_actions = select_data(cfg, root, context["run_ids"], context["skipped_shards"])
    model = imitation.build(cfg.algorithm, num_actions, **cfg.model.model_dump(exclude_none=True))
    model.to(_train_device(context.get("gpus", 0), world))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    first_epoch, steps, loader_epoch = 1, 0, 0
    if checkpoint is not None:  # a restarted or resumed trial continues where it stopped
        with checkpoint.as_directory() as d:
            device = next(model.parameters()).device
            model.load_state_dict(torch.load(os.path.join(d, "model.pt"), map_location=device, weights_only=True))
            optimizer.load_state_dict(torch.load(os.path.join(d, "optimizer.pt"), map_location=device,
                                                 weights_only=True))
            for group in optimizer.param_groups:  # the config's: PBT may have perturbed them
                group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
            meta = json.load(open(os.path.join(d, "model.json")))
            if os.path.exists(os.path.join(d, "rng.pt")):  # older checkpoints: weights and optimizer only
                torch.set_rng_state(torch.load(os.path.join(d, "rng.pt"), weights_only=True)["torch"])
        first_epoch, steps = meta["epoch"] + 1, meta["steps"]
        # where the data order stood: passes over the data begun (older checkpoints: one per
        # training epoch, which holds without cycle_data)
        loader_epoch = meta.get("loader_epoch", meta["epoch"])
        print(f"[distill] restored from epoch {meta['epoch']} checkpoint", flush=True)
    max_batches, after_backward = cfg.max_batches_per_epoch, None
    if world > 1:
        import torch.distributed as dist

        for p in model.state_dict().values():  # start from rank 0's weights
            dist.broadcast(p, 0)
        after_backward = _average_gradients
        # Every worker must take the same number of steps, or the gradient all-reduce hangs.
        rows = sum(h.steps for h in train)
        per_worker = max(1, rows // (cfg.batch_size * world * model.sample_spec().length))
        max_batches = min(max_batches or per_worker, per_worker)
    spec = model.sample_spec()
    loader = Loader(root, train, spec, cfg.batch_size, num_actions, step_transforms(cfg),
                    cfg.block_steps, cfg.blocks_in_memory, seed=cfg.seed + 1000 * rank,
                    rank=rank, world=world, cycle=world > 1 or cfg.cycle_data, epoch=loader_epoch)
    held = Loader(root, heldout, spec, cfg.batch_size, num_actions, step_transforms(cfg),
                  cfg.block_steps, cfg.blocks_in_memory, seed=cfg.seed) if heldout else None
    for epoch in range(first_epoch, cfg.epochs + 1):
        metrics = imitation.train_epoch(model, optimizer, loader, max_batches=max_batches,
                                          after_backward=after_backward, precision=cfg.precision)
        if held is not None and rank == 0:
            held.epoch = 0  # the same held-out samples every epoch
            metrics.update(imitation.evaluate(model, held, cfg.precision))
        steps += metrics.pop("batches")
        # the threads this trial trained with, measured here (platform/reproducibility.py)
        metrics.update(epoch=epoch, steps=steps, workers=world, lr=optimizer.param_groups[0]["lr"],
                       threads=reproducibility.threads())
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                imitation.save(model, tmp, {"epoch": epoch, "steps": steps, "games": sorted({h.game for h in train}),
                                            "data_version": context["data_version"],
                                            "run_ids": context["run_ids"],
                                            "precision": cfg.precision,
                                            # the data order's position: the next pass over the data
                                            "loader_epoch": loader.epoch,
                                            # what the data path did to each step: the player does it again
                                            "transforms": asdict(step_transforms(cfg))}, optimizer)
                # dropout's random stream: a resumed trial draws the masks an unbroken one would
                torch.save({"torch": torch.get_rng_state()}, os.path.join(tmp, "rng.pt"))
            report(metrics, checkpoint=make_checkpoint(tmp) if rank == 0 else None)


@dataclass
class UpdatesPerTrial:
    """A trial's gradient updates, for progress lines: epochs x batches per epoch, where an epoch
    is `max_batches_per_epoch` batches (cycle_data) or about one window per target row of the
    training data (histories.data.Loader), capped by max_batches_per_epoch. Per trial config:
    a sweep may change the batch size or the window. (A class, not a closure: Tune pickles the
    callback that holds it.)"""
    rows: int  # target rows of the training data
    windows: dict = field(default_factory=dict)  # model config -> window length

    def window(self, algorithm: str, model: dict) -> int:
        from understudy.algorithms import imitation

        key = json.dumps([algorithm, model], sort_keys=True)
        if key not in self.windows:
            params = {k: v for k, v in model.items() if v is not None}
            self.windows[key] = imitation.build(algorithm, 18, **params).sample_spec().length
        return self.windows[key]

    def __call__(self, trial_config: dict) -> float:
        c = trial_config["distill"]
        per_epoch, world = c["max_batches_per_epoch"], c["workers"]
        if not c["cycle_data"] or world > 1:  # as _train_loop sizes a data-parallel epoch
            length = self.window(c["algorithm"], c["model"])
            windows = max(1, math.ceil(self.rows / (c["batch_size"] * world * length)))
            per_epoch = min(per_epoch or windows, windows)
        return float(per_epoch * c["epochs"])


def _train_device(gpus: int, world: int):
    """The GPU Ray gave this trial or Ray Train worker (platform/resources.py chose whether to
    ask for one), else the CPU."""
    import torch

    if not gpus:
        return torch.device("cpu")
    if world > 1:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cuda")


def _average_gradients(model) -> None:
    """Data parallelism by hand: every worker's gradients are averaged before the step."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _train_data_parallel(cfg: DistillConfig, context: dict) -> None:
    """Ray Train inside the Tune trial: `workers` processes, each reading its share of the
    blocks, gradients all-reduced; rank 0's reports and checkpoints reach Tune."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    def worker(loop_config):
        ctx = ray.train.get_context()
        _train_loop(DistillConfig.model_validate(loop_config["distill"]), loop_config["context"],
                    report=ray.train.report, checkpoint=ray.train.get_checkpoint(),
                    make_checkpoint=ray.train.Checkpoint.from_directory,
                    rank=ctx.get_world_rank(), world=ctx.get_world_size())

    class ReportToTune(TuneReportCallback):
        """Ray Train's report to Tune, plus where rank 0's checkpoint is, as a URI: the Tune
        trial itself holds no checkpoint, Ray Train's run does. A failed worker fails the trial
        (Tune's `max_failures` retries it, not Ray Train as well), and the retried trial's Ray
        Train run, with the same name, continues from its latest checkpoint."""

        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint:
                metrics = [dict(metrics[0], checkpoint_uri=storage.checkpoint_uri(checkpoint)), *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    trial = tune.get_context()
    trainer = TorchTrainer(
        worker, train_loop_config={"distill": cfg.model_dump(), "context": context},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=bool(context.get("gpus")),
                                               resources_per_worker=resources.train_worker_resources(cfg)),
        run_config=ray.train.RunConfig(name=f"{trial.get_experiment_name()}-{trial.get_trial_id()}",
                                       storage_path=context["storage_path"],
                                       callbacks=[ReportToTune()]))
    trainer.fit()


# ---- the sweep -------------------------------------------------------------------------------------

def _domain(spec):
    kind, value = next((k, v) for k, v in spec.model_dump().items() if v is not None)
    return {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}[kind](value)


def param_space(cfg: DistillConfig, context: dict) -> dict:
    """The trial config: the distill config with each `search` key replaced by its domain."""
    distill = cfg.model_dump()
    for key, spec in cfg.search.items():
        node, *path = key.split(".")
        if path:
            distill[node] = {**distill[node], path[0]: _domain(spec)}
        else:
            distill[node] = _domain(spec)
    # The trial trains one point: what chose it (search space, searcher) is not its config.
    distill["search"], distill["searcher"] = {}, type(cfg.searcher)().model_dump()
    if cfg.seeds is not None:
        distill["seed"] = tune.grid_search(list(cfg.seeds))
    return {"distill": distill, "context": context}


def pbt_mutations(cfg: DistillConfig) -> dict:
    """PBT's hyperparam_mutations, nested as the trial config is ({"distill": {...}}): a `choice`
    as a plain list (PBT moves to a neighbour in it; a Categorical domain it would multiply), the
    other domains as Tune domains (PBT multiplies by 0.8 or 1.2, or resamples)."""
    distill: dict = {}
    for key, spec in cfg.pbt.mutations.items():
        node, *path = key.split(".")
        domain = list(spec.choice) if spec.choice is not None else _domain(spec)
        if path:
            distill.setdefault(node, {})[path[0]] = domain
        else:
            distill[node] = domain
    return {"distill": distill}


@dataclass
class KeepInDomains:
    """PBT's custom_explore_fn: a value moved by x1.2 or x0.8 is clipped back into its mutation
    domain's bounds (a dropout may not reach 1, a learning rate not leave the range given)."""
    bounds: dict  # dotted key -> (low, high)

    def __call__(self, config: dict) -> dict:
        for key, (low, high) in self.bounds.items():
            node, *path = key.split(".")
            holder = config["distill"][node] if path else config["distill"]
            name = path[0] if path else node
            value = min(max(holder[name], low), high)
            holder[name] = type(holder[name])(value)
        return config


def sweep_components(cfg: DistillConfig):
    """(search_alg, scheduler) for tune.TuneConfig, as the config's `searcher` and `scheduler` say
    (None: Tune's default, BasicVariantGenerator unseeded / FIFO)."""
    from ray.tune.search import BasicVariantGenerator

    search_alg = None
    if cfg.searcher.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=cfg.searcher.metric, mode=cfg.searcher.mode, seed=cfg.searcher.seed)
    elif cfg.searcher.seed is not None:
        search_alg = BasicVariantGenerator(random_state=cfg.searcher.seed)
    scheduler = None
    if cfg.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="training_iteration", metric=cfg.asha.metric, mode=cfg.asha.mode,
            max_t=cfg.epochs, grace_period=cfg.asha.grace_period, reduction_factor=cfg.asha.reduction_factor)
    elif cfg.scheduler == "pbt":
        scheduler = tune.schedulers.PopulationBasedTraining(
            time_attr="training_iteration", metric=cfg.pbt.metric, mode=cfg.pbt.mode,
            perturbation_interval=cfg.pbt.perturbation_interval, hyperparam_mutations=pbt_mutations(cfg),
            quantile_fraction=cfg.pbt.quantile_fraction, resample_probability=cfg.pbt.resample_probability,
            synch=cfg.pbt.synch, custom_explore_fn=KeepInDomains(
                {k: tuple(d.uniform or d.loguniform) for k, d in cfg.pbt.mutations.items() if d.uniform or d.loguniform}
                | {k: (d.randint[0], d.randint[1] - 1) for k, d in cfg.pbt.mutations.items() if d.randint}))
    return search_alg, scheduler


def _point(trial_config: dict, cfg: DistillConfig) -> tuple:
    """The searched values of a trial (its point in the search space), without its seed."""
    values = []
    for key in sorted(cfg.search):
        node, *path = key.split(".")
        value = trial_config[node][path[0]] if path else trial_config[node]
        values.append((key, value))
    return tuple(values)


def choose_runs(trials: list[dict], metric: str, mode: str, by_point: bool = True) -> list[dict]:
    """The trials of the best searched point, one per seed: the point whose seeds have the best
    mean `metric` (never the best single seed, which would pick a lucky run). Without `by_point`
    (PBT, whose trials copy each other's weights and settings) the single best trial."""
    groups: dict[tuple, list[dict]] = {}
    for i, t in enumerate(trials):
        groups.setdefault(t["point"] if by_point else i, []).append(t)

    def score(group):
        values = [t[metric] for t in group if t.get(metric) is not None]
        if not values:
            return float("inf")
        mean = sum(values) / len(values)
        return mean if mode == "min" else -mean

    return sorted(min(groups.values(), key=score), key=lambda t: t["seed"])


def check_teachers_learned(cfg: DistillConfig, teach, run_ids: list[str]) -> list[str]:
    """The learning gate: refuse histories of teachers that did not learn (or that teach could
    not judge), naming them and their returns, unless `allow_unlearned`. Returns the runs let
    through that did not learn."""
    from understudy.platform.teach import verdict_line

    failed = [r for r in teach.runs if r.run_id in run_ids and not (r.verdict or {}).get("learned")]
    if not failed:
        return []
    named = "; ".join(f"{r.run_id}: {verdict_line(r.verdict)}" for r in failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    if not cfg.allow_unlearned:
        raise StageFailed(f"distill: {len(failed)} of {len(run_ids)} teacher run(s) of teach stage {cfg.teacher!r} "
                          f"did not learn or could not be judged ({named}{more}); train the teachers longer "
                          "(on whole episodes), or set "
                          "allow_unlearned: true to distil them anyway (logged)")
    print(f"[distill] allow_unlearned: distilling {len(failed)} run(s) whose teacher did not learn "
          f"({named}{more})", flush=True)
    return [r.run_id for r in failed]


def run_distill(cfg: DistillConfig, ws: Workspace, resume: bool = False) -> DistillManifest:
    """Train the imitators as Tune trials: one MLflow run for the stage, a run per trial nested
    under it, each trained model registered (registered_model_name)."""
    with stages.running(ws, "distill", cfg, resume, {"algorithm": cfg.algorithm, "teacher_stage": cfg.teacher},
                        seeds={"training": cfg.run_seeds}) as stage:
        return _run_distill(cfg, stage)


def registered_model_name(study: str, algorithm: str) -> str:
    """One registered model per study and algorithm; a version per trained run. A plug-in's
    `module:attribute` reads module.attribute (MLflow refuses ':' in a model's name)."""
    return f"{study}-{algorithm.replace(':', '.')}"


def _teacher_runs(cfg: DistillConfig, ws: Workspace):
    """(teach manifest, the run ids of the selected games); refuses games the teachers never played."""
    teach = ws.read_stage("teach", cfg.teacher)
    games = selected_games(cfg)  # only these runs are read, hashed into the data version
    missing = [g for g in games if g not in {r.game for r in teach.runs}]
    if missing:
        raise StageFailed(f"distill.games: teach stage {cfg.teacher!r} recorded no runs of {missing}; "
                          f"it has: {sorted({r.game for r in teach.runs})}")
    return teach, [r.run_id for r in teach.runs if r.game in games]


def check_before_training(cfg: DistillConfig, ws: Workspace) -> None:
    """The refusals the stage makes about its data before it trains (games, teachers that did
    not learn, a context too short for its episodes), made now and silently: an experiment asks
    this of every distill stage right after teach, so a refused stage stops it before hours of
    other stages' training, not after them."""
    import contextlib
    import io

    teach, run_ids = _teacher_runs(cfg, ws)
    with contextlib.redirect_stdout(io.StringIO()):
        check_teachers_learned(cfg, teach, run_ids)
        train, _, _ = select_data(cfg, teach.shard_root, run_ids)
        context_span(cfg, train)


def _run_distill(cfg: DistillConfig, stage: stages.Stage) -> DistillManifest:
    ws = stage.ws
    teach, run_ids = _teacher_runs(cfg, ws)
    games, root = selected_games(cfg), teach.shard_root
    unlearned = check_teachers_learned(cfg, teach, run_ids)
    uncataloged = [r for r in run_ids if not shards.read_catalog(root, r)]
    if uncataloged:
        named = ", ".join(uncataloged[:3]) + (f" and {len(uncataloged) - 3} more" if len(uncataloged) > 3 else "")
        raise StageFailed(f"distill: {len(uncataloged)} run(s) of teach stage {cfg.teacher!r} ({named}) have no "
                          f"catalog under shard root {root} (no complete shard to read); see `understudy "
                          "shards verify`, or re-run the teach stage")
    bad = shards.corrupted_shards(root, run_ids) if cfg.verify_shards else {}
    if bad and not cfg.skip_corrupt_shards:
        path, problem = next(iter(bad.items()))
        raise StageFailed(f"distill: {len(bad)} corrupted shard(s) in teach stage {cfg.teacher!r}'s "
                          f"history, e.g. {path} ({problem}); see `understudy shards verify`, or set "
                          "skip_corrupt_shards: true to train without them")
    for path, problem in bad.items():
        print(f"[distill] skipping corrupted shard {path}: {problem}", flush=True)
    version = shards.data_version(root, run_ids, exclude=set(bad))
    train, heldout, num_actions = select_data(cfg, root, run_ids, frozenset(bad))
    data_games = sorted({h.game for h in train})
    span = context_span(cfg, train)
    print(f"[distill] data {version}: {sum(len(h.episodes) for h in train)} training episodes "
          f"({sum(h.steps for h in train)} steps) of {data_games}, "
          f"{sum(len(h.episodes) for h in heldout)} held out", flush=True)

    resumed = stage.interrupted()
    experiment_path = (resumed["experiment"] if resumed
                       else f"{ws.ray_results}/distill-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    experiment = experiment_path.rsplit("/", 1)[1]
    context = {"shard_root": root, "run_ids": run_ids, "data_version": version,
               "skipped_shards": sorted(bad), "storage_path": ws.ray_results,
               "gpus": resources.stage_gpus(cfg.device, "distill.device")}

    def params_of(trial_config):
        c = trial_config["distill"]
        flat = {k: v for k, v in c.items() if not isinstance(v, dict) and k not in ("search",)}
        flat.update({f"model.{k}": v for k, v in c["model"].items()})
        flat.update({f"data.{k}": v for k, v in c["data"].items()})
        return {"stage": cfg.name, "teacher_stage": cfg.teacher, "data_version": version, **span,
                "data_games": ",".join(data_games), "data_run_ids": ",".join(run_ids),
                "skipped_shards": ",".join(sorted(bad)) or "none", "num_actions": num_actions,
                "unlearned_runs": ",".join(unlearned) or "none", **flat}

    # The shards every trial reads: the dataset input of the stage run and of each trial run.
    dataset = tracking.shards_dataset(
        f"teach {cfg.teacher}", version, root,
        {"runs": len(run_ids), "games": data_games, "train_episodes": sum(len(h.episodes) for h in train),
         "train_steps": sum(h.steps for h in train), "skipped_shards": len(bad)})
    client = tracking.client_for(ws)
    client.log_inputs(stage.mlflow.run_id, [dataset])
    client.set_tag(stage.mlflow.run_id, "understudy.data_version", version)
    to_mlflow = tracking.TuneToMlflow(
        ws, "distill", stage.mlflow, params_of, metrics={k: k for k in METRICS}, step_key="steps",
        experiment=experiment, datasets=[dataset], total=UpdatesPerTrial(sum(h.steps for h in train)),
        name_of=lambda t: f"{cfg.name}-{cfg.algorithm}-{'+'.join(games)}-{t.trial_id}")
    trainable = tune.with_resources(train_imitator, resources.distill_trial_resources(cfg, context["gpus"]))
    search_alg, scheduler = sweep_components(cfg)
    grid = stage.fit(
        trainable, param_space(cfg, context), experiment_path, to_mlflow,
        tune_config=tune.TuneConfig(num_samples=cfg.num_samples, scheduler=scheduler, search_alg=search_alg,
                                    max_concurrent_trials=cfg.max_concurrent_trials),
        # PBT: a trial exploits another's latest checkpoint, which must outlive its next saves.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if cfg.scheduler == "pbt" else 2),
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures))
    unfinished = [r for r in grid if r.checkpoint is None and "checkpoint_uri" not in (r.metrics or {})]
    if unfinished:  # Tune returns early when the run is interrupted (Ctrl-C, SIGTERM)
        raise StageFailed(f"distill: interrupted with {len(unfinished)} of {len(grid)} trials unfinished; "
                          f"continue with --resume (the stage's marker {stage.marker} is kept)")

    trials = []
    model_name = registered_model_name(stage.mlflow.name, cfg.algorithm)
    for result in grid:
        # A data-parallel trial's checkpoints are Ray Train's; its reports say where.
        checkpoint = (storage.checkpoint_uri(result.checkpoint) if result.checkpoint is not None
                      else result.metrics["checkpoint_uri"])
        mlflow_run = [None]

        def log_results():  # the trained model is safe in `checkpoint` whatever happens here
            run = mlflow_run[0] = to_mlflow.run_for(result, client)
            history = result.metrics_dataframe.to_dict("records")
            tracking.log_figure(client, run, plots.training_curves(
                history, f"{cfg.algorithm.upper()} on {', '.join(data_games)} ({len(run_ids)} teacher run(s), "
                         f"data {version})"), "training_curves.png")
            client.set_tag(run, "understudy.data_version", version)
            client.set_tag(run, "understudy.checkpoint", checkpoint)
            with storage.local_copy(checkpoint) as local:  # a download when storage is remote
                client.log_artifacts(run, local, "checkpoint")
                tracking.log_imitator_model(client, stage.mlflow.experiment_id, run, local, model_name, version)

        to_mlflow.after_fit(f"trial {result.metrics['trial_id']}: plot, tags, checkpoint and model "
                            "artifacts", log_results)
        trials.append({"checkpoint": checkpoint, "mlflow_run_id": mlflow_run[0],
                       "seed": result.config["distill"]["seed"], "point": _point(result.config["distill"], cfg),
                       "epochs": result.metrics.get("epoch"), "workers": result.metrics.get("workers"),
                       "threads": result.metrics.get("threads"),
                       **{k: result.metrics.get(k) for k in ("heldout_accuracy", "heldout_loss", "train_loss")}})
    metric, mode = cfg.objective
    metric = metric if any(t.get(metric) is not None for t in trials) else "train_loss"
    runs = choose_runs(trials, metric, mode, by_point=cfg.scheduler != "pbt")
    best = runs[0]
    for t in trials:
        t["point"] = dict(t["point"])
    stage.log_worker_threads([t["threads"] for t in trials])
    return stage.finish({
        "algorithm": cfg.algorithm, "game": games[0], "games": games, "data_games": data_games,
        "teacher": cfg.teacher, "data_version": version, "run_ids": run_ids,
        "data": cfg.data.model_dump(), "skipped_shards": sorted(bad),
        "config": cfg.model_dump(), "shard_root": root,
        "num_actions": num_actions, "checkpoint": best["checkpoint"],
        "mlflow_run_id": best["mlflow_run_id"], "best_by": metric, "trials": trials,
        "runs": runs,
        "data_best_return": max((e.ret for h in train for e in h.episodes), default=None),
        "data_returns": data_returns(train), "context_span": span,
        "split_returns": returns_by_run(train),
        "history_returns": returns_by_run(index_runs(root, run_ids, frozenset(bad)))},
        safe_in="the trained models are in their checkpoints (this stage's manifest)")
