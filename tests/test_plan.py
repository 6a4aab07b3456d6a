"""`understudy plan NAME [--scale S]`: a cost plan for every ready experiment and pipeline before
anything runs, and one line with exit code 2 for an experiment or scale that does not exist."""
from __future__ import annotations

import math

import pytest

from understudy.platform import experiment, plan, resources
from understudy.platform.cli import main
from understudy.platform.config import load_experiment, read_yaml


def scales_of(name):
    scales = read_yaml(experiment.experiment_path(name)).get("scales") or {}
    return ["demo", *[s for s in scales if s != "demo"]]


@pytest.mark.parametrize("name", experiment.available())
def test_plan_prints_every_stage_of_every_ready_experiment_at_every_scale(name, capsys):
    for scale in scales_of(name):
        assert main(["plan", name, "--scale", scale]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"plan: experiment {name} (scale {scale})")
        for stage in ("teach", "distill", "evaluate"):
            assert f"\n{stage} '{name}-" in out, (scale, stage)
        for line in ("env steps:", "gradient updates:", "evaluation env steps:", "asks:", "at once:",
                     "estimated wall-clock:", "speed:", "assumptions:"):
            assert line in out, (scale, line)
        assert "never (does not fit) here" not in out.split("evaluate")[0] or scale == "full"
        assert "never (does not fit) on the cluster" not in out  # placements fit the shipped cluster


@pytest.mark.parametrize("pipeline", ["tune_configs/pipelines/demo.yaml", "tune_configs/pipelines/smoke.yaml"])
def test_plan_prints_a_pipeline(pipeline, capsys):
    assert main(["plan", pipeline]) == 0
    assert capsys.readouterr().out.startswith("plan: pipeline ")


@pytest.mark.parametrize("argv,message", [
    (["plan", "no_such_experiment"], "no such file or ready experiment; ready ones: "),
    (["plan", "darkroom_ad", "--scale", "huge"], "scale 'huge' is not defined; valid: "),
    (["plan", "tune_configs/pipelines/demo.yaml", "--scale", "full"], "a pipeline has no scales"),
])
def test_plan_of_something_that_does_not_exist_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_the_plan_counts_what_the_config_says():
    """Figures a reader can check by hand: multigame_holdout at full scale."""
    cfg = load_experiment(experiment.experiment_path("multigame_holdout"), "full")
    cluster = resources.shipped_cluster()
    teach, distill, evaluate = plan.plan(cfg, cluster)
    games = len(cfg.teach.games)
    assert teach.trials == games * len(cfg.teach.seeds)
    assert teach.env_steps == games * 10_000_000
    dqn = cfg.teach.dqn
    per_trial = (10_000_000 - dqn.learning_starts) * dqn.training_intensity / dqn.batch_size
    assert teach.gradient_updates == teach.trials * int(per_trial)
    assert teach.cluster == teach.trials  # one CPU each: all 46 at once on 48 CPUs
    assert teach.here == 2
    assert distill.trials == 5 and distill.cluster == 2 and distill.here == 0  # 8 CPUs + a GPU each
    assert distill.gradient_updates <= 5 * cfg.distill.epochs * cfg.distill.max_batches_per_epoch
    speed = plan.teacher_speed("dqn", "Breakout")
    assert speed.per_s is not None and "learning_dqn_breakout.json" in speed.source
    assert math.isclose(teach.hours(teach.cluster), 10_000_000 / speed.per_s / 3600)
    assert math.isclose(teach.hours(2), 23 * 10_000_000 / speed.per_s / 3600)
    assert evaluate.trials == sum(p.count for p in evaluate.placements)


def test_an_unmeasured_speed_is_said_not_guessed():
    speed = plan.teacher_speed("appo", "Breakout")
    assert speed.per_s is None and "not measured" in speed.source
    cost = plan.StageCost("teach", "x", trials=1, work=[(None, 1, speed.source)])
    assert cost.hours(1) is None


def test_a_leave_one_out_experiment_is_planned_rotation_by_rotation():
    from understudy.platform import experiment
    from understudy.platform.plan import plan

    cfg = experiment.load("minatar_holdout", "full")
    costs = plan(cfg)
    assert [c.stage for c in costs] == ["teach"] + ["distill", "distill", "evaluate"] * 5
    assert costs[0].trials == 15  # 5 games x 3 teacher seeds, once for every rotation
    games = ["asterix", "breakout", "freeway", "seaquest", "spaceinvaders"]
    assert [c.name for c in costs if c.stage == "evaluate"] == [f"minatar_holdout-no-{g}-evaluate" for g in games]
    # every MinAtar episode ends by the family's clock: evaluation steps are bounded by it
    first = next(c for c in costs if c.stage == "evaluate")
    # 18 tasks: imitator, ed and scratch 3 runs each, random and no-op one run beside each of
    # the 3 imitator runs, the teacher 3: 60 episodes x 4 copies each at most 10,000 steps
    assert 0 < first.eval_env_steps <= 60 * 4 * 10_000 * 18


def test_a_speed_measured_in_a_real_distill_stage_is_preferred_for_the_same_model(tmp_path, monkeypatch):
    """bench/stage_speeds.py's figure (a real trial's seconds per update, held-out evaluation and
    checkpoints included) sets the distill estimate of a stage with the same algorithm, model,
    batch and CPUs; a real stage of another model does not; without one, the bench update is used."""
    import json
    import shutil

    cfg = experiment.load("minatar_holdout", "full")
    distill_cfg = experiment.rotations(cfg)[0].distill
    shutil.copy(plan.BENCH / "imitator_updates.json", tmp_path / "imitator_updates.json")
    entry = {"stage": "measured-imitator", "algorithm": distill_cfg.algorithm,
             "model": distill_cfg.model.model_dump(exclude_none=True), "batch_size": distill_cfg.batch_size,
             "cpus_per_trial": distill_cfg.cpus_per_trial, "finished": "2026-12-07 05:00", "trials": {},
             "seconds_per_update": 0.5}
    other = {**entry, "stage": "other-model", "model": {**entry["model"], "layers": 9}, "seconds_per_update": 9.0}
    monkeypatch.setattr(plan, "BENCH", tmp_path)
    bench_only = plan.distill_cost(distill_cfg, cfg.teach, resources.shipped_cluster(), "minatar_holdout/full/distill")
    (tmp_path / "stage_speeds.json").write_text(json.dumps({"distill": [entry, other]}))
    real = plan.distill_cost(distill_cfg, cfg.teach, resources.shipped_cluster(), "minatar_holdout/full/distill")
    [(seconds, trials, source)] = real.work
    assert "the real distill stage measured-imitator" in source and "imitator_updates" not in source
    assert math.isclose(seconds, real.gradient_updates / trials * 0.5)
    [(bench_seconds, _, bench_source)] = bench_only.work
    assert "imitator_updates.json" in bench_source and bench_seconds != seconds
    # a real evaluation's imitator tasks, with this model, set its play speed; random's its own
    play = {"stage": "measured-evaluate", "family": "minatar", "model": entry["model"], "tasks": 3,
            "finished": "2026-12-07 05:00"}
    (tmp_path / "stage_speeds.json").write_text(json.dumps({"evaluate": [
        {**play, "agent": "imitator", "env_steps_per_s": 700.0},
        {**play, "agent": "imitator", "model": other["model"], "env_steps_per_s": 1.0},
        {**play, "agent": "random", "model": None, "env_steps_per_s": 50_000.0}]}))
    assert plan.play_speed("imitator", "MinAtar/Freeway", entry["model"]).per_s == 700.0
    assert plan.play_speed("random", "MinAtar/Freeway").per_s == 50_000.0
    assert plan.play_speed("imitator", "MinAtar/Freeway", {"context": 3}).per_s != 700.0  # another model
    assert plan.play_speed("noop", "MinAtar/Freeway").per_s is None
    evaluate = plan.plan(cfg)[3]
    assert evaluate.stage == "evaluate" and any("measured-evaluate" in source for _, _, source in evaluate.work)


def test_episode_lengths_measured_in_an_earlier_run_of_the_same_stage_replace_the_bound(tmp_path, monkeypatch):
    """An evaluation whose evaluate, teach and imitator configs all ran before is planned at the
    episode lengths it had (bench/stage_speeds.py), not at the game's 10,000-step clock: the
    teacher at its own, the agents that play the imitator's env steps at the imitator's. A
    record of another teach config is not used."""
    import json
    import shutil

    from understudy.platform.config import config_digest

    cfg = experiment.load("minatar_holdout", "full")
    rotation = experiment.rotations(cfg)[2]  # Freeway held out
    for name in ("stage_speeds.json", "imitator_updates.json", "learning_ppo_minatar_breakout.json", "eval.json"):
        shutil.copy(plan.BENCH / name, tmp_path / name)
    monkeypatch.setattr(plan, "BENCH", tmp_path)
    speeds = json.loads((tmp_path / "stage_speeds.json").read_text())
    speeds["episode_steps"] = []
    (tmp_path / "stage_speeds.json").write_text(json.dumps(speeds))
    cluster = resources.shipped_cluster()

    def cost():
        return plan.evaluate_cost(rotation.evaluate, cfg.teach, rotation.distill, cluster, rotation.ed)

    bound = cost()
    ev = rotation.evaluate
    assert bound.bounded and bound.eval_env_steps % (ev.episodes * ev.copies * 10_000) == 0
    digests = {"evaluate": config_digest(ev), "teacher": config_digest(cfg.teach),
               "imitator": config_digest(rotation.distill)}
    lengths = {"imitator": {"MinAtar/Freeway": 2501.0}, "teacher": {"MinAtar/Freeway": 2000.0}}
    entry = {"stage": ev.name, "digests": digests, "finished": "2026-12-07 06:40", "mean_episode_steps": lengths}
    elsewhere = {**entry, "digests": {**digests, "teacher": "0" * 16}, "finished": "2026-12-08 00:00",
                 "mean_episode_steps": {"imitator": {"MinAtar/Freeway": 7.0}}}
    speeds["episode_steps"] = [entry, elsewhere]
    (tmp_path / "stage_speeds.json").write_text(json.dumps(speeds))
    measured = cost()
    assert not measured.bounded and any(ev.name in note for note in measured.notes)
    per_run = {agent: round(n * ev.episodes * ev.copies) for agent, n in
               (("imitator", 2501.0), ("teacher", 2000.0))}
    runs = {agent: resources.runs_of(agent, len(rotation.distill.run_seeds), len(cfg.teach.seeds))
            for agent in ev.agents}
    assert measured.eval_env_steps == sum(per_run.get(a, per_run["imitator"]) * runs[a] for a in ev.agents)
    assert measured.eval_env_steps < bound.eval_env_steps
    text = plan.format_plan(cfg, [measured], cluster)
    assert "at most" not in text and "<=" not in text and "upper bound where marked" not in text
    assert "at most" in plan.format_plan(cfg, [bound], cluster)
