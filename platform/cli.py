"""`understudy`: one subcommand per stage, `pipeline` to run them all, `experiment` for a ready
experiment, and `demo`: a short Atari teach-and-record stage, then Dark Room's in-context
learning curve (platform/demo.py).

Configs are validated before Ray starts, and so are the places a run needs (preflight.py): the
Ray cluster (RAY_ADDRESS), an MLflow tracking server, object storage and its credentials.
Exit codes: 0 done, 1 a stage failed or a service is unreachable, 2 bad input.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time

from understudy.algorithms import rllib_compat
from understudy.histories import settings
from understudy.platform import preflight
from understudy.platform.config import ConfigError, PipelineConfig, load_config, stage_config
from understudy.platform.workspace import StageInvalid, StageMissing, Workspace

DEMO_CONFIG = "tune_configs/demo.yaml"
REQUIRED_MODULES = ["torch", "ray.rllib", "ray.tune", "ale_py", "cv2", "pyarrow", "mlflow", "gymnasium"]


def check_dependencies() -> None:
    """Fail fast here: a missing module inside a Ray actor can hang instead of failing."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    if missing:
        raise SystemExit(f"understudy: missing dependencies: {'; '.join(missing)}. "
                         "Run ./dev setup (or pip install -e .) first.")


def keep_credentials_out_of_ray() -> None:
    """Tune copies AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/session tokens from the driver into
    every trial actor's runtime_env, and Ray's runtime-env agent logs runtime_envs in full: the
    secret would land in the cluster's log files and metadata. Trials do not need it passed:
    on a local Ray they inherit this process's environment, on a cluster the pods get it from
    their own Secret (k8s/secrets.yaml). tests/test_security.py greps Ray's logs for it."""
    rllib_compat.keep_out_of_trials({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                     "AWS_SESSION_TOKEN"})


def init_ray():
    import ray

    keep_credentials_out_of_ray()
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:  # a cluster, e.g. inside `ray job submit`
        ray.init(address=address, log_to_driver=True)
    else:
        # Ray's "Started a local Ray instance" goes to stderr at INFO: keep a failure one line.
        ray.init(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                 num_cpus=int(settings.NUM_CPUS.get()))


def _banner(text: str) -> float:
    print(f"\n=== {text} ===", flush=True)
    return time.perf_counter()


def _done(stage: str, started: float) -> None:
    print(f"=== {stage} done in {time.perf_counter() - started:.0f}s ===", flush=True)


def cmd_teach(cfg, ws, resume: bool = False):
    from understudy.platform.teach import run_teach

    t = _banner(f"teach: {cfg.algorithm} on {', '.join(cfg.games)}, seeds {cfg.seeds}, "
                f"{cfg.env_steps} env steps each")
    manifest = run_teach(cfg, ws, resume=resume)
    shown = 10  # Dark Room records one run per goal: dozens
    for r in manifest.runs[:shown]:
        print(f"  {r.run_id}: {r.recorded_episodes} episodes, {r.recorded_steps} steps "
              f"in {r.shards} shard(s)")
    if len(manifest.runs) > shown:
        rest = manifest.runs[shown:]
        print(f"  ... and {len(rest)} more runs ({sum(r.recorded_episodes for r in rest)} episodes)")
    _done("teach", t)
    return manifest


def cmd_distill(cfg, ws, resume: bool = False):
    from understudy.platform.distill import run_distill, selected_games

    t = _banner(f"distill: {cfg.algorithm} on {', '.join(selected_games(cfg))} from teach stage {cfg.teacher!r}")
    manifest = run_distill(cfg, ws, resume=resume)
    for trial in manifest.trials:
        print(f"  {trial.mlflow_run_id}: heldout_accuracy {trial.heldout_accuracy}, "
              f"train_loss {trial.train_loss}")
    print(f"  best ({manifest.best_by}): {manifest.checkpoint}")
    _done("distill", t)
    return manifest


def cmd_evaluate(cfg, ws, experiment: str | None = None, resume: bool = False):
    from understudy.platform.evaluate import run_evaluate

    t = _banner(f"evaluate: {', '.join(cfg.agents)} on {', '.join(cfg.games)}, "
                f"{cfg.episodes} consecutive episodes x {cfg.copies} copies")
    manifest = run_evaluate(cfg, ws, experiment=experiment, resume=resume)
    print(manifest.table)
    _done("evaluate", t)
    return manifest


STAGES = {"teach": cmd_teach, "distill": cmd_distill, "evaluate": cmd_evaluate}


def cmd_pipeline(cfg: PipelineConfig, ws):
    started = time.perf_counter()
    for stage, run in STAGES.items():
        run(getattr(cfg, stage), ws)
    evaluate = ws.read_stage("evaluate", cfg.evaluate.name)
    print(f"\nPipeline {cfg.name!r} finished in {time.perf_counter() - started:.0f}s.\n")
    print(evaluate.table)
    print(f"\nIn MLflow, this run of study {cfg.name!r} and every run nested under it:\n  {tracking_url(ws)}")


def cmd_experiment(cfg, ws, resume: bool = False):
    from understudy.platform.experiment import run_experiment

    t = _banner(f"experiment {cfg.name} (scale {cfg.scale}): {cfg.description.strip()}")
    manifest = run_experiment(cfg, ws, STAGES, resume=resume)
    print(f"\nExperiment {cfg.name!r} ({cfg.scale}) finished in {manifest.seconds:.0f}s.\n")
    print(manifest.table)
    study = ws.study.name if ws.study else cfg.name  # the demo runs an experiment inside its own study
    print(f"\nAgain, from MLflow: understudy report {cfg.name}\n"
          f"In MLflow, this run of study {study!r} and every run nested under it:\n  {tracking_url(ws)}")
    _done("experiment", t)
    return manifest


def cmd_demo(cfg, ws):
    """The demo (platform/demo.py): Atari teach-and-record, a Dark Room experiment, its curve."""
    from understudy.platform.demo import run_demo

    t = _banner(f"demo: {cfg.description.strip()}")
    result = run_demo(cfg, ws, STAGES, cmd_experiment)
    print(f"\nDemo finished in {result['seconds']:.0f}s. The in-context learning curve: {result['title']}; "
          "each cell the mean return as a fraction of the goal's optimum\n")
    print(result["text"])
    print()
    for line in result["verdict"]:
        print(f"  {line}")
    print(f"  {'This is' if result['shows_the_finding'] else 'This is NOT'} the finding the README describes.")
    print(f"\nThe curve as a picture: {result['png']} (and in MLflow, on the parent run: in_context_curve.png,"
          " and the metrics curve/<agent> in its chart view)")
    print(f"In MLflow, this run of study {cfg.name!r} and every run nested under it:\n  {tracking_url(ws)}")
    _done("demo", t)
    return result


def tracking_url(ws) -> str:
    from understudy.platform import tracking

    return tracking.run_url(ws) if ws.study else ws.mlflow_ui_command()


def study_of(command: str, cfg, config: str) -> tuple[str, str, dict]:
    """(name, description, params) of the MLflow study an invocation logs to: a ready
    experiment's or pipeline's name; for a lone stage command `understudy-<stage>`."""
    from understudy.platform import tracking

    if command == "experiment":
        return cfg.name, cfg.description.strip() or f"Experiment {cfg.name}", {
            "experiment": cfg.name, "scale": cfg.scale, "config": config}
    if command == "demo" and cfg.kind == "demo":
        return cfg.name, cfg.description.strip() or "The demo", {
            "config": config, "experiment": cfg.experiment, "scale": cfg.scale,
            "atari_games": ",".join(cfg.atari.games), "atari_env_steps": cfg.atari.env_steps}
    if command in STAGES:
        return (tracking.lone_study(command),
                f"Lone `understudy {command}` runs: one parent run per invocation, its stage run nested under it.",
                {"config": config, "stage": cfg.name})
    return cfg.name, (f"Pipeline {cfg.name}: teach {cfg.teach.name} ({cfg.teach.algorithm} on "
                      f"{', '.join(cfg.teach.games)}) -> distill {cfg.distill.name} ({cfg.distill.algorithm}) "
                      f"-> evaluate {cfg.evaluate.name} ({', '.join(cfg.evaluate.agents)})"), {"config": config}


def cmd_report(args, ws) -> int:
    from understudy.platform.experiment import report

    try:
        print(report(ws, args.experiment))
    except LookupError as err:
        print(f"understudy: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_shards(args, ws, root: str, stage_runs: list[str] | None = None):
    from understudy.histories import shards

    if not shards.list_runs(root):
        print(f"understudy: no recorded runs under shard root {root} (a run is a folder with "
              "run.json and a catalog/); give --root or --shard-root where `teach` wrote", file=sys.stderr)
        return 1
    if args.action == "ls":
        for run_id in shards.list_runs(root):
            catalog = shards.read_catalog(root, run_id)
            eps = sum(len(e["episodes"]) for e in catalog)
            verdict = shards.read_run_verdict(root, run_id)
            learned = ("learned: ?" if verdict is None else
                       f"learned: {'unknown' if verdict['learned'] is None else verdict['learned']}")
            if verdict and verdict.get("final_return") is not None:
                learned += f" (final {verdict['final_return']:.4g}"
                learned += f", normalised {verdict['normalised']:.3f})" if "normalised" in verdict else ")"
            print(f"{run_id}\t{len(catalog)} shards\t{eps} episodes\t{sum(e['rows'] for e in catalog)} steps"
                  f"\t{learned}")
        return 0
    runs = [args.run] if args.run else stage_runs or shards.list_runs(root)
    if args.action == "export":
        return cmd_export(args, root, runs)
    if args.action == "show":
        for run_id in runs:
            print(summarise_run(root, run_id))
        return 0
    bad = 0
    for run_id in runs:
        problems = shards.verify_run(root, run_id)
        bad += len(problems)
        print(f"{run_id}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        for p in problems:
            print(f"  {p}")
    return 1 if bad else 0


def cmd_export(args, root: str, runs: list[str]) -> int:
    """`shards export`: runs as Parquet with an episode index, a Minari dataset and a dataset
    card (histories/export.py). Exit 2 for a request that cannot be made, 1 for bad shards."""
    from understudy.histories import export, shards

    if not args.out:
        print("understudy: shards export needs --out, the new folder to write the export to", file=sys.stderr)
        return 2
    unknown = sorted(set(runs) - set(shards.list_runs(root)))
    if unknown:
        print(f"understudy: run {unknown[0]!r} is not under shard root {root} (`understudy shards ls` lists them)",
              file=sys.stderr)
        return 2
    try:
        summary = export.export_history(root, runs, args.out,
                                         args.format.split(",") if args.format else export.EXPORT_FORMATS,
                                         args.minari_id)
    except export.ExportError as err:
        print(f"understudy: {err}", file=sys.stderr)
        return 2
    except shards.ShardError as err:
        print(f"understudy: {err}", file=sys.stderr)
        return 1
    print(f"exported {len(summary.runs)} run(s), {summary.episodes} episodes, {summary.steps} steps "
          f"({', '.join(summary.formats)}) to {summary.out}; the dataset card is {summary.out}/README.md")
    if summary.minari_id:
        print(f"  Minari: MINARI_DATASETS_PATH={summary.out}/minari, minari.load_dataset({summary.minari_id!r})")
    return 0


def summarise_run(root: str, run_id: str, bins: int = 10) -> str:
    """A run in a few lines: what it is, how much was recorded, and its return curve."""
    from understudy.histories import shards

    meta = shards.read_run_metadata(root, run_id)
    catalog = shards.read_catalog(root, run_id)
    episodes = shards.episode_returns(root, run_id)
    returns = [e["return"] for e in episodes]
    lines = [f"{run_id}: {meta['algorithm']} on {meta['game']} (seed {meta['seed']}), "
             f"ale-py {meta.get('ale_py_version')}, ROM sha256 {meta.get('rom_sha256', '')[:12]}",
             f"  {len(catalog)} shards, {sum(e['bytes'] for e in catalog) / 1e6:.1f} MB, "
             f"{sum(e['rows'] for e in catalog)} steps, {len(episodes)} episodes, policy versions "
             f"{min((e['first_policy_version'] for e in episodes), default='-')}.."
             f"{max((e['last_policy_version'] for e in episodes), default='-')}"]
    if returns:
        chunks = [returns[i * len(returns) // bins:(i + 1) * len(returns) // bins] for i in range(bins)]
        means = [sum(c) / len(c) for c in chunks if c]
        lines.append("  return curve (mean per tenth of the history, first to last): "
                     + "  ".join(f"{m:.1f}" for m in means))
    from understudy.platform.teach import verdict_line

    lines.append("  " + verdict_line(shards.read_run_verdict(root, run_id)))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    # Where things go: accepted before or after the subcommand (`understudy demo --workspace X`).
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--workspace", default=argparse.SUPPRESS,
                       help="output folder (default ./workspace or $UNDERSTUDY_WORKSPACE)")
    where.add_argument("--tracking-uri", default=argparse.SUPPRESS,
                       help="MLflow tracking URI (default sqlite in the workspace)")
    where.add_argument("--shard-root", default=argparse.SUPPRESS,
                       help="where shards go: a path or s3://bucket/prefix "
                            "(default <storage>/shards or $UNDERSTUDY_SHARD_ROOT)")
    where.add_argument("--storage", default=argparse.SUPPRESS,
                       help="where checkpoints, MLflow artifacts of a local store and shards go: "
                            "a path or s3://bucket/prefix (default the workspace or "
                            "$UNDERSTUDY_STORAGE); credentials only from the environment")
    p = argparse.ArgumentParser(prog="understudy", description=__doc__, parents=[where])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("teach", "distill", "evaluate"):
        s = sub.add_parser(name, help=f"run the {name} stage (a {name} or pipeline YAML)",
                           parents=[where])
        s.add_argument("config")
        s.add_argument("--resume", action="store_true",
                       help="continue this config's interrupted run from its last checkpoints (evaluate: "
                            "play only the tasks it had not finished)")
    for name, text in (("pipeline", "run teach, distill and evaluate end to end"),
                       ("demo", "the demo: a short Atari teach-and-record stage, then frozen AD learning in "
                                "context on held-out Dark Room goals while ED stays flat (or a pipeline file)")):
        s = sub.add_parser(name, help=text, parents=[where])
        s.add_argument("config", nargs="?" if name == "demo" else None,
                       default=DEMO_CONFIG if name == "demo" else None)
    s = sub.add_parser("experiment", parents=[where],
                       help="run a ready experiment end to end: teach, distill, evaluate")
    s.add_argument("config", help="a name in tune_configs/experiments/ or a path to an experiment YAML")
    s.add_argument("--scale", help="which of the file's scales to apply (default: its own `scale`, "
                                   "usually demo)")
    s.add_argument("--resume", action="store_true",
                   help="skip its finished stages, continue interrupted ones from their checkpoints (an "
                        "evaluation from its finished tasks)")
    s = sub.add_parser("plan", help="what a ready experiment or pipeline will cost, before it runs: env "
                                    "steps, trials, updates, placements, estimated wall-clock")
    s.add_argument("config", help="a name in tune_configs/experiments/, or a path to an experiment or pipeline YAML")
    s.add_argument("--scale", help="which of the experiment's scales to plan (default: its own `scale`)")
    s = sub.add_parser("report", parents=[where],
                       help="print an experiment's latest results table from MLflow")
    s.add_argument("experiment", help="the experiment's name (e.g. darkroom_ad)")
    s = sub.add_parser("shards", help="list, summarise, verify or export recorded learning histories",
                       parents=[where])
    s.add_argument("action", choices=["ls", "show", "verify", "export"])
    s.add_argument("run", nargs="?", help="a run id (default: every run)")
    s.add_argument("--root", help="shard root (default: the workspace's)")
    s.add_argument("--stage", help="a finished teach stage's name: its shard root and runs (instead of --root)")
    s.add_argument("--out", help="export: the new folder to write (never an existing one)")
    s.add_argument("--format", help="export: comma-separated formats, parquet and/or minari (default: both)")
    s.add_argument("--minari-id", help="export: the Minari dataset id (default: <out folder name>-v0)")
    return p


def _config_path(path: str) -> str:
    """The user's own file, else the shipped config a `tune_configs/...` path names."""
    from understudy.platform.shipped import config_path

    return str(config_path(path))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:  # environment variables first: a bad one is named before any work starts
        settings.check_all()
    except settings.SettingError as err:
        print(f"understudy: setting error: {err}", file=sys.stderr)
        return 2
    if args.command == "plan":  # nothing runs: no workspace, services or Ray
        from understudy.platform.plan import run_plan

        try:
            print(run_plan(_config_path(args.config), args.scale))
        except ConfigError as err:
            print(f"understudy: config error: {err}", file=sys.stderr)
            return 2
        return 0
    ws = Workspace.resolve(*(getattr(args, k, None) for k in ("workspace", "tracking_uri",
                                                             "shard_root", "storage")))
    try:
        if args.command == "shards":
            stage_runs = None
            if args.stage:
                if args.root:
                    print("understudy: give --stage or --root, not both", file=sys.stderr)
                    return 2
                teach = ws.read_stage("teach", args.stage)
                root, stage_runs = teach.shard_root, [r.run_id for r in teach.runs]
            else:
                root = args.root or ws.shard_root
            preflight.check_object_storage({root: "--root" if args.root else "--shard-root"})
            return cmd_shards(args, ws, root, stage_runs)
        if args.command == "report":
            preflight.check_tracking_uri(ws.tracking_uri)
            return cmd_report(args, ws)
        if args.command == "experiment":
            from understudy.platform import experiment

            cfg = experiment.load(args.config, args.scale)
            path = None
        else:
            path = _config_path(args.config)
        if args.command in STAGES:
            cfg = stage_config(path, args.command)
        elif path is not None:
            cfg = load_config(path, expect=("demo", "pipeline") if args.command == "demo" else ("pipeline",))
        preflight.check_all(ws, os.environ.get("RAY_ADDRESS"))
    except ConfigError as err:
        print(f"understudy: config error: {err}", file=sys.stderr)
        return 2
    except (StageMissing, StageInvalid) as err:  # shards --stage
        print(f"understudy: {err}", file=sys.stderr)
        return 2
    except preflight.PreflightError as err:
        print(f"understudy: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # noqa: BLE001  (shards: unreadable root and such)
        print(f"understudy: error: {err}", file=sys.stderr)
        return 1
    warning = preflight.shared_storage_warning(ws, os.environ.get("RAY_ADDRESS"))
    if warning:
        print(warning, file=sys.stderr)
    check_dependencies()
    try:
        if args.command in ("teach", "pipeline", "demo", "experiment"):
            from understudy.histories.shards import check_writable

            check_writable(ws.shard_root)  # before the workspace exists: refused runs leave nothing
        ws.ensure()
    except Exception as err:  # noqa: BLE001  (unwritable workspace or shard root)
        print(f"understudy: error: {err}", file=sys.stderr)
        return 2
    init_ray()
    from understudy.platform import tracking

    # A new local store announces its table creation on stderr; an error must stay one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

    name, description, params = study_of(args.command, cfg, path or args.config)
    try:
        # One MLflow parent run for this invocation; every stage's run is nested under it.
        with tracking.study(ws, name, description, f"understudy {args.command} {args.config}".strip(),
                            params) as ws:
            if getattr(args, "resume", False):
                # the runs the interrupted invocation left RUNNING are not running any more
                tracking.tolerant(ws, "ending the runs an interrupted invocation left running",
                                  lambda: tracking.close_interrupted_runs(ws))
            if args.command in STAGES:
                STAGES[args.command](cfg, ws, resume=args.resume)
            elif args.command == "experiment":
                cmd_experiment(cfg, ws, resume=args.resume)
            elif cfg.kind == "demo":
                cmd_demo(cfg, ws)
            else:
                cmd_pipeline(cfg, ws)
    except (StageMissing, StageInvalid) as err:
        print(f"understudy: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"understudy: {args.command} failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
