"""Stage 2, distill: Tune trains an imitator on a teacher's recorded learning history."""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from ray import tune

from understudy.platform import plots, shards, storage, tracking
from understudy.platform.config import DistillConfig
from understudy.platform.teach import StageFailed
from understudy.platform.workspace import Workspace


def train_imitator(config: dict) -> None:
    """Tune function trainable: one imitator, reported per epoch, checkpointed at the end."""
    import torch

    from understudy.algorithms import bc
    from understudy.platform.data import load_history

    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    history = load_history(config["shard_root"], config["run_ids"], config["expert_last_episodes"],
                           exclude=frozenset(config["skipped_shards"]))
    held = min(config["heldout_episodes"], history.num_episodes - 1)
    split = history.num_episodes - held
    train_rows = history.episode_rows(0, split)
    heldout_rows = history.episode_rows(split, history.num_episodes)
    model = bc.ConvPolicy(config["num_actions"], config["cnn"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    for epoch in range(1, config["epochs"] + 1):
        started = time.perf_counter()
        train_loss = bc.train_epoch(model, optimizer, history, train_rows, config["batch_size"], rng)
        metrics = {"epoch": epoch, "train_loss": train_loss, "train_rows": len(train_rows),
                   "heldout_rows": len(heldout_rows),
                   "samples_per_s": len(train_rows) / (time.perf_counter() - started)}
        if len(heldout_rows):
            metrics["heldout_loss"], metrics["heldout_accuracy"] = bc.evaluate_rows(model, history, heldout_rows)
        if epoch == config["epochs"]:
            with tempfile.TemporaryDirectory() as tmp:
                bc.save(model, tmp, {"game": config["game"], "data_version": config["data_version"],
                                     "run_ids": config["run_ids"]})
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(metrics)


def run_distill(cfg: DistillConfig, ws: Workspace) -> dict:
    teach = ws.read_stage("teach", cfg.teacher)
    run_ids = [r["run_id"] for r in teach["runs"] if r["game"] == cfg.game]
    if not run_ids:
        raise StageFailed(f"distill.game: teach stage {cfg.teacher!r} recorded no {cfg.game!r} "
                          f"runs; it has: {sorted({r['game'] for r in teach['runs']})}")
    root = teach["shard_root"]
    bad = shards.corrupted_shards(root, run_ids) if cfg.verify_shards else {}
    if bad and not cfg.skip_corrupt_shards:
        path, problem = next(iter(bad.items()))
        raise StageFailed(f"distill: {len(bad)} corrupted shard(s) in teach stage {cfg.teacher!r}'s "
                          f"history, e.g. {path} ({problem}); see `understudy shards verify`, or set "
                          "skip_corrupt_shards: true to train without them")
    for path, problem in bad.items():
        print(f"[distill] skipping corrupted shard {path}: {problem}", flush=True)
    version = shards.data_version(root, run_ids, exclude=set(bad))
    num_actions = _num_actions(cfg.game, teach["protocol"])
    session = time.strftime("%Y%m%d-%H%M%S")
    param_space = {
        "shard_root": root, "run_ids": run_ids, "game": cfg.game, "data_version": version,
        "num_actions": num_actions, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "lr": cfg.lr, "heldout_episodes": cfg.heldout_episodes,
        "expert_last_episodes": cfg.expert_last_episodes, "cnn": cfg.cnn, "seed": cfg.seed,
        "threads": cfg.cpus_per_trial, "skipped_shards": sorted(bad),
    }

    def params_of(c):
        return {"stage": cfg.name, "algorithm": cfg.algorithm, "teacher_stage": cfg.teacher,
                "data_version": version,
                **{k: v for k, v in c.items() if k not in ("run_ids", "skipped_shards")},
                "skipped_shards": ",".join(sorted(bad)) or "none",
                "run_ids": ",".join(run_ids)}

    to_mlflow = tracking.TuneToMlflow(
        ws, "distill", params_of,
        metrics={k: k for k in ("train_loss", "heldout_loss", "heldout_accuracy", "samples_per_s")},
        step_key="epoch", total=cfg.epochs, name_of=lambda t: f"{cfg.algorithm}-{cfg.game}-{t.trial_id}")
    trainable = tune.with_resources(train_imitator, {"cpu": cfg.cpus_per_trial})
    grid = tune.Tuner(
        trainable, param_space=param_space,
        run_config=tune.RunConfig(name=f"distill-{cfg.name}-{session}",
                                  storage_path=ws.ray_results, callbacks=[to_mlflow],
                                  verbose=0),
    ).fit()
    errors = [str(r.error).splitlines()[0] for r in grid if r.error]
    if errors:
        raise StageFailed(f"distill: {len(errors)} of {len(grid)} trials failed: {errors[0]}")

    client = tracking.client_for(ws)
    trials = []
    for result in grid:
        mlflow_run = to_mlflow.runs[result.metrics["trial_id"]]
        history = result.metrics_dataframe.to_dict("records")
        tracking.log_figure(client, mlflow_run, plots.training_curves(
            history, f"BC on {cfg.game} ({len(run_ids)} teacher run(s), data {version})"),
            "training_curves.png")
        client.set_tag(mlflow_run, "understudy.data_version", version)
        checkpoint = storage.checkpoint_uri(result.checkpoint)
        client.set_tag(mlflow_run, "understudy.checkpoint", checkpoint)
        with result.checkpoint.as_directory() as local:  # a download when storage is remote
            client.log_artifacts(mlflow_run, local, "model")
        trials.append({"checkpoint": checkpoint, "mlflow_run_id": mlflow_run,
                       "heldout_accuracy": result.metrics.get("heldout_accuracy"),
                       "train_loss": result.metrics.get("train_loss")})
    best = max(trials, key=lambda t: t["heldout_accuracy"] or 0.0)
    manifest = {"kind": "distill", "name": cfg.name, "algorithm": cfg.algorithm, "game": cfg.game,
                "teacher": cfg.teacher, "data_version": version, "run_ids": run_ids,
                "skipped_shards": sorted(bad),
                "num_actions": num_actions, "checkpoint": best["checkpoint"],
                "mlflow_run_id": best["mlflow_run_id"], "trials": trials}
    ws.write_stage("distill", cfg.name, manifest)
    return manifest


def _num_actions(game: str, protocol: dict) -> int:
    from understudy.envs import AtariProtocol, make_atari_env

    env = make_atari_env(game, AtariProtocol(**protocol))
    try:
        return int(env.action_space.n)
    finally:
        env.close()
