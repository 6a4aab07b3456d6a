"""`understudy demo`: the shipped config, the curve it ends with, and (slow) the whole demo at
tiny scale through a real `mlflow server`: the Atari teach-and-record stage, the Dark Room
experiment, the curve as a table, a PNG and MLflow metrics, GIFs of the agents' episodes and
registered imitators with signatures."""
import json
import os

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT
from mlflow.tracking import MlflowClient

from understudy.platform import demo
from understudy.platform.config import ConfigError, DemoConfig, load_config

DEMO = os.path.join(REPO_ROOT, "tune_configs", "demo.yaml")


def test_the_shipped_demo_is_atari_then_dark_room_at_a_scale_that_exists():
    cfg = load_config(DEMO, expect=("demo",))
    assert isinstance(cfg, DemoConfig)
    assert cfg.atari.games == ["Breakout"] and cfg.atari.env_steps <= 8192
    from understudy.platform import experiment

    exp = experiment.load(cfg.experiment, cfg.scale)
    assert exp.teach.games == ["DarkRoom"] and exp.evaluate.goal_split == "heldout"
    assert {"imitator", "ed"} <= set(cfg.curve_agents) <= set(exp.evaluate.agents)


@pytest.mark.parametrize("change,message", [
    ({"experiment": "no_such_experiment"}, "no such file or ready experiment"),
    ({"scale": "huge"}, "scale 'huge' is not defined"),
    ({"curve_agents": ["imitator", "teacher"]}, "curve_agents: ['teacher'] do not play in experiment"),
])
def test_a_demo_config_naming_what_does_not_exist_is_refused(change, message, tmp_path):
    data = {**yaml.safe_load(open(DEMO)), **change}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path, expect=("demo",))


def test_plan_prints_the_demo_its_atari_stage_then_its_experiment(capsys):
    from understudy.platform.cli import main

    assert main(["plan", "tune_configs/demo.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: demo demo (scale quick)")
    stages = [line.split(":")[0] for line in out.splitlines() if line.startswith(("teach ", "distill ", "evaluate "))]
    assert stages == ["teach 'demo-atari'", "teach 'darkroom_ad-teach'", "distill 'darkroom_ad-imitator'",
                      "distill 'darkroom_ad-ed'", "evaluate 'darkroom_ad-evaluate'"]
    total = [line for line in out.splitlines() if line.startswith("total: ")][0]
    assert "unmeasured" not in total.split(" here")[0]  # every part of the demo has a measured speed


def rows(agent, curves, optimum=10.0):
    return [{"agent": agent, "optimal_return": optimum, "episode_returns": list(np.asarray(c) * optimum)}
            for c in curves]


def test_the_curve_is_the_fraction_of_the_optimum_per_episode_and_says_what_it_shows():
    rising = np.linspace(0.0, 0.8, 20)
    episodes = (rows("imitator", [rising, rising + 0.1]) + rows("ed", [np.full(20, 0.1)] * 2)
                + rows("random", [np.full(22, 0.02)]) + [{"agent": "imitator", "optimal_return": None,
                                                          "episode_returns": [1.0] * 20}])  # no optimum: left out
    curves = demo.fraction_curves(episodes, ["imitator", "ed", "random", "noop"])
    assert list(curves) == ["imitator", "ed", "random"]  # noop did not play
    assert curves["imitator"].shape == (2, 20) and curves["random"].shape == (1, 22)
    np.testing.assert_allclose(curves["imitator"].mean(0), rising + 0.05)
    table = demo.curve_table(curves)
    lines = table.splitlines()
    assert lines[0] == "| episodes | imitator | ed | random |"
    assert lines[2].startswith("| 1-5 | 0.13 | 0.10 | 0.02 |")
    assert lines[-2].startswith("| 16-20 |")  # the table stops where the shortest curve does
    assert "**+0.63**" in lines[-1] and "**+0.00**" in lines[-1]
    assert demo.shows_the_finding(curves)
    words = demo.verdict(curves)
    assert "at least half of the optimum" in words[0] and "ED (frozen) 0.10 -> 0.10: flat" in words[1]
    flat = {**curves, "imitator": curves["imitator"] * 0.3}
    assert not demo.shows_the_finding(flat) and "BELOW half" in demo.verdict(flat)[0]
    assert not demo.shows_the_finding({"imitator": curves["imitator"]})  # no ED: not the finding


@pytest.mark.slow
def test_the_demo_runs_end_to_end_at_tiny_scale(ray_session, postgres, tmp_path, capsys, monkeypatch):
    """The shipped demo with its two parts shrunk: Atari PPO for 512 env steps, Dark Room at the
    experiment's tiny scale (seconds of training: too little to learn; the pieces are checked,
    not the finding)."""
    from services import mlflow_server

    from understudy.histories import shards
    from understudy.platform import cli, tracking

    data = yaml.safe_load(open(DEMO))
    data["name"] = "demo-test"
    data["atari"].update(env_steps=512, env_steps_per_iter=256, max_episode_steps=120, num_envs_per_runner=2)
    data["scale"] = "tiny"
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(data))
    ws = tmp_path / "ws"
    with mlflow_server(str(tmp_path), str(tmp_path / "mlartifacts"), dict(os.environ),
                       postgres.database_for(str(tmp_path))) as server:
        assert cli.main(["--workspace", str(ws), "--tracking-uri", server.uri, "demo", str(config)]) == 0
        out = capsys.readouterr().out
        assert "=== teach: ppo on Breakout" in out and "experiment darkroom_ad (scale tiny)" in out
        assert "The in-context learning curve:" in out
        assert "| episodes | imitator | context_reset | ed | random |" in out
        assert "the finding the README describes" in out

        # the Atari step really recorded its episodes
        atari = json.loads((ws / "stages" / "teach-demo-atari.json").read_text())
        [run] = atari["runs"]
        assert run["game"] == "Breakout" and run["recorded_episodes"] >= 1
        assert not shards.verify_run(atari["shard_root"], run["run_id"])

        # the curve, on disk and in MLflow
        summary = json.loads((ws / "results" / "demo-test-in_context_curve.json").read_text())
        assert set(summary["agents"]) == {"imitator", "context_reset", "ed", "random"}
        assert open(summary["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("demo-test")
        assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
        every = client.search_runs([exp.experiment_id])
        [parent] = [r for r in every if tracking.PARENT_TAG not in r.data.tags]
        assert parent.info.status == "FINISHED" and parent.data.params["scale"] == "tiny"
        assert {"in_context_curve.png", "in_context_curve.md"} <= {a.path for a in client.list_artifacts(
            parent.info.run_id)}
        history = client.get_metric_history(parent.info.run_id, "curve/imitator")
        assert [m.step for m in history] == list(range(1, len(summary["agents"]["imitator"]["curve"]) + 1))
        assert parent.data.metrics["late/imitator"] == pytest.approx(summary["agents"]["imitator"]["late"])

        # every evaluation agent's run has GIFs of its first and last episode
        agents = [r for r in every if r.data.params.get("agent") in ("imitator", "ed", "random", "context_reset")]
        assert len(agents) == 4
        for r in agents:
            assert {a.path for a in client.list_artifacts(r.info.run_id, "episodes")} == {
                "episodes/first_episode.gif", "episodes/last_episode.gif"}, r.data.params["agent"]

        # the registered imitators have signatures
        versions = client.search_model_versions("name = 'demo-test-ad'")
        assert versions
        import mlflow

        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)  # where models:/ URIs resolve
        info = mlflow.models.get_model_info(f"models:/demo-test-ad/{versions[0].version}")
        assert info.signature is not None and "prev_reward" in info.signature.inputs.input_names()

        # the experiment inside the demo is found by `report`, though it ran in the demo's study
        assert "Again, from MLflow: understudy report darkroom_ad" in out
        assert cli.main(["--workspace", str(ws), "--tracking-uri", server.uri, "report", "darkroom_ad"]) == 0
        assert "in study 'demo-test'" in capsys.readouterr().out
