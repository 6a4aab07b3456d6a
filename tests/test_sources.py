"""History sources that record in the driver (algorithms/sources.py): they register themselves,
teach configs are validated against what each records, plan prices them, `platform/` never
names them, and the annealed source runs as a teach stage in Rung 1's experiment end to end on
tasks split so that training and held-out tasks never meet."""
import json
import re
from pathlib import Path

import pytest

from understudy.algorithms import sources
from understudy.envs import minatar_columns as mc
from understudy.platform.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = "MinAtar/SpaceInvaders-columns"


def teach(**over):
    return {"kind": "teach", "algorithm": "annealed", "games": [COLUMNS], "env_steps": 600,
            "annealed": {"goal_split": "train_v2"}, **over}


def error_of(data) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


def test_builtin_sources_register_themselves_and_a_taken_name_is_refused():
    assert {"qlearning", "annealed"} <= set(sources.names())
    assert sources.local_source("ppo") is None  # RLlib teachers are not local sources
    annealed = sources.local_source("annealed")
    assert annealed.block == "annealed" and annealed.from_scratch is None
    assert sources.local_source("qlearning").from_scratch is not None
    with pytest.raises(ValueError, match="already registered"):
        sources.register(sources.LocalSource(name="annealed", description="x", block="annealed",
                                             settings=annealed.settings, families=("darkroom",),
                                             record=lambda *a, **k: []))


def test_platform_never_branches_on_a_source_name():
    """What a source does comes from the registry: no comparison with its name in platform/."""
    names = "|".join(re.escape(n) for n in sources.names())
    pattern = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = [f"{p.name}:{i}: {line.strip()}" for p in sorted((ROOT / "platform").glob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_teach_config_is_checked_against_the_source():
    cfg = parse_config(teach(seeds=[0, 1]))
    assert cfg.local_source.name == "annealed" and cfg.tasks_per_game == 70
    # the source records a per-task family it has an expert for, one game
    msg = error_of(teach(games=["Pong"]))
    assert "'annealed'" in msg and "minatar_columns" in msg and "Pong" in msg
    assert "annealed" in error_of(teach(games=["MinAtar/Breakout"]))
    msg = error_of(teach(annealed={"goal_split": "test"}))
    assert "annealed.goal_split" in msg and "heldout_v2" in msg and "'test'" in msg
    assert "less than one episode" in error_of(teach(env_steps=50))
    msg = error_of(teach(annealed={"goal_split": "train", "noise_start": 1.5}))
    assert "noise_start" in msg
    # an RLlib teacher cannot record a per-task family's tasks: the message names the sources that can
    msg = error_of({"kind": "teach", "algorithm": "ppo", "games": [COLUMNS], "env_steps": 600, "cnn": "minatar"})
    assert "annealed" in msg and COLUMNS in msg
    # Dark Room has an expert too: the annealed source records it as well as Q-learning does
    assert parse_config(teach(games=["DarkRoom"], env_steps=200, annealed={"goal_split": "train"})).tasks_per_game == 65


def test_scratch_is_refused_for_a_source_that_does_not_learn(tmp_path):
    import yaml

    from understudy.platform.config import load_experiment

    data = yaml.safe_load((ROOT / "tune_configs" / "experiments" / "minatar_columns_ad.yaml").read_text())
    data["evaluate"]["agents"].append("scratch")
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_experiment(path, "tiny")
    assert "scratch" in str(err.value) and "annealed" in str(err.value) and "not a learner" in str(err.value)


def test_plan_prices_the_source_by_its_tasks_and_measured_speed():
    from understudy.platform import plan, resources

    cfg = parse_config(teach(seeds=[0, 1, 2]))
    cluster = resources.Cluster([resources.NodeGroup("one", {"CPU": 2.0, "memory": 2**34}, 1)])
    cost = plan.teach_cost(cfg, cluster)
    assert cost.env_steps == 600 * 70 * 3 and cost.trials == 3 and cost.gradient_updates == 0
    seconds, _, source = cost.work[0]
    assert seconds == pytest.approx(600 * 70 * 3 / sources.local_source("annealed").steps_per_s)
    assert "measured" in source


def test_minatar_columns_experiment_end_to_end_on_disjoint_tasks(ray_session, tmp_path, capsys):
    """Rung 1's experiment at the tiny scale: annealed histories on split v2's training tasks,
    AD and ED distilled from them, and every agent and control playing split v2's held-out tasks
    on paired env seeds; an evaluation of tasks the imitator was trained on is refused."""
    from understudy.platform import cli

    ws = tmp_path / "ws"
    name = "minatar_columns_ad"
    assert cli.main(["--workspace", str(ws), "experiment", name, "--scale", "tiny"]) == 0
    stage = json.loads((ws / "stages" / f"teach-{name}-teach.json").read_text())
    trained = {tuple(r["goal"]) for r in stage["runs"]}
    assert stage["algorithm"] == "annealed" and trained == {tuple(t) for t in mc.task_goals("train_v2")}
    run = json.loads(next((Path(stage["shard_root"])).glob("*/run.json")).read_text())
    assert run["goal_split"] == "train_v2" and run["hyperparameters"]["episodes"] == 3
    rows = json.loads((ws / "results" / f"{name}.json").read_text())
    arms = {"imitator", "context_reset", "reward_blind", "warmup", "ed", "random"}
    assert {r["arm"] for r in rows} == arms and all(r["heldout"] for r in rows)
    played = {tuple(r["goal"]) for r in rows}
    assert played == {tuple(t) for t in mc.task_goals("heldout_v2")} and not played & trained
    for task in {r["task"] for r in rows}:  # paired: every arm of a run plays a task on one env seed
        seeds = {(r["run_seed"], r["eval_seed"]) for r in rows if r["task"] == task}
        assert len(seeds) == len({s for s, _ in seeds})
    assert all(len(r["episode_returns"]) == 3 for r in rows if r["arm"] != "ed" and r["arm"] != "random")

    # Version 1's held-out tasks overlap split 2's training tasks: evaluating them is refused.
    bad = tmp_path / "evaluate.yaml"
    bad.write_text(f"kind: evaluate\nname: overlap\nteacher: {name}-teach\nimitator: {name}-imitator\n"
                   f"games: [{COLUMNS}]\ngoal_split: heldout\nagents: [imitator]\nepisodes: 2\n")
    capsys.readouterr()
    assert cli.main(["--workspace", str(ws), "evaluate", str(bad)]) != 0
    err = capsys.readouterr().err
    overlap = sorted({tuple(int(c) for c in t) for t in mc.task_goals("heldout")} & trained)
    assert overlap and "goal_split 'heldout'" in err and str(overlap[0]) in err
