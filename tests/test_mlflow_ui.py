"""What a person sees of a study in MLflow's UI, checked through a real `mlflow server`
(PostgreSQL backend store, proxied artifacts): studies open in the training-runs view,
registered imitators have signatures, and evaluations carry GIFs of episodes."""
import base64
import glob
import io
import os

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from understudy.platform import episode_gifs, tracking
from understudy.platform.workspace import Workspace


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    from services import mlflow_server

    workdir = tmp_path_factory.mktemp("mlflow")
    with mlflow_server(str(workdir), str(workdir / "mlartifacts"), dict(os.environ),
                       postgres.database_for(str(workdir))) as server:
        yield server


@pytest.fixture
def ws(server, tmp_path):
    return Workspace.resolve(str(tmp_path / "ws"), server.uri).ensure()


def test_the_ui_reads_the_experiment_kind_tag_the_platform_sets():
    """MLflow's own UI code (the installed bundle) chooses the view by this tag and value: an
    MLflow that renamed either would fail here, not silently open the GenAI view again."""
    import mlflow

    bundle = glob.glob(os.path.join(os.path.dirname(mlflow.__file__), "server", "js", "build", "static", "js",
                                    "main.*.js"))
    assert bundle
    text = open(bundle[0]).read()
    assert tracking.EXPERIMENT_KIND_TAG in text
    assert f'"{tracking.EXPERIMENT_KIND}"' in text


def test_studies_open_in_the_training_runs_view(ws, server):
    client = MlflowClient(server.uri)
    opened = tracking.open_study(ws, "ui-kind", "a study", "understudy test", {})
    exp = client.get_experiment(opened.study.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert exp.tags[tracking.DESCRIPTION_TAG] == "a study"
    # a lone stage command's study too
    with tracking.stage_run(ws, "evaluate", "alone", {}):
        pass
    lone = client.get_experiment_by_name(tracking.lone_study("evaluate"))
    assert lone.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # a study made before the tag existed gets it when next opened; a kind chosen in the UI stays
    old = client.create_experiment("ui-kind-old")
    chosen = client.create_experiment("ui-kind-chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.open_study(ws, "ui-kind-old", "old", "understudy test", {})
    tracking.open_study(ws, "ui-kind-chosen", "chosen", "understudy test", {})
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_registered_imitator_has_a_signature_and_predicts_through_it(ws, server, tmp_path, monkeypatch):
    import mlflow
    import mlflow.pyfunc

    from understudy.algorithms import imitation

    torch.manual_seed(0)
    model = imitation.build("ad", 5, cnn="grid", stack=1, context=8, d_model=16, layers=1, heads=2,
                            dropout=0.0).eval()
    imitation.save(model, str(tmp_path / "ck"), {})
    client = MlflowClient(server.uri)
    exp = client.create_experiment("ui-signature")
    run = client.create_run(exp).info.run_id
    version = tracking.log_imitator_model(client, exp, run, str(tmp_path / "ck"), "ui-signature-ad", "v1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)  # where models:/ URIs resolve
    uri = f"models:/ui-signature-ad/{version}"
    signature = mlflow.models.get_model_info(uri).signature
    assert signature is not None
    inputs = {s.name: s for s in signature.inputs.inputs}
    assert sorted(inputs) == ["new_episode", "obs", "prev_action", "prev_reward"]
    assert inputs["obs"].shape == (-1, -1, 84, 84, 1) and inputs["obs"].type == np.dtype("uint8")
    assert inputs["prev_action"].type == np.dtype("int64")
    assert signature.outputs.inputs[0].shape == (-1, -1, 5)
    batch = {"obs": np.zeros((2, 3, 84, 84, 1), np.uint8), "prev_action": np.full((2, 3), 5),
             "prev_reward": np.zeros((2, 3), np.float32), "new_episode": np.ones((2, 3), bool)}
    loaded = mlflow.pyfunc.load_model(uri)
    with torch.no_grad():
        expected = model({k: torch.as_tensor(v) for k, v in batch.items()}).numpy()
    np.testing.assert_allclose(loaded.predict(batch), expected, rtol=1e-5, atol=1e-5)


def test_behaviour_cloning_declares_its_frame_stacks():
    from understudy.algorithms import imitation
    from understudy.platform import imitator_model

    model = imitation.build("bc", 18, cnn="small", stack=4).eval()
    signature, example = imitator_model.signature(model)
    assert example.shape == (1, 84, 84, 4)
    assert [s.shape for s in signature.inputs.inputs] == [(-1, 84, 84, 4)]
    assert [s.shape for s in signature.outputs.inputs] == [(-1, 18)]


def frames_of(text: str) -> list[Image.Image]:
    gif = Image.open(io.BytesIO(base64.b64decode(text)))
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(gif.convert("RGB").copy())
    return frames


def duration_ms(text: str) -> int:
    gif = Image.open(io.BytesIO(base64.b64decode(text)))
    total = 0
    for i in range(gif.n_frames):
        gif.seek(i)
        total += gif.info["duration"]
    return total


def test_a_clip_keeps_the_first_and_last_episode_of_copy_0_within_its_frame_cap():
    """Dark Room through the players' own loop: three 20-step episodes per copy; the clip holds
    copy 0's first and third, each at most MAX_FRAMES frames, the agent's lit cell moving."""
    from understudy.envs.darkroom import NUM_ACTIONS, DarkRoomFrames, darkroom_goals
    from understudy.platform.players import _Stateless, play_episodes

    rng = np.random.default_rng(0)
    player = _Stateless(lambda obs: rng.integers(NUM_ACTIONS, size=len(obs)))
    clip = episode_gifs.EpisodeClip(max_frames=8)
    played = play_episodes(DarkRoomFrames(darkroom_goals("heldout")[:2]), player, 1, NUM_ACTIONS, 3, 0, clip=clip)
    assert [len(p) for p in played] == [3, 3]
    # 20 steps kept within 8 frames: every 4th (20 -> 10 -> 5)
    assert len(clip.first) == len(clip.last) == 5 and clip.first_stride == clip.last_stride == 4
    gifs = clip.gifs(stacked=True)
    first, last = frames_of(gifs["first"]), frames_of(gifs["last"])
    # (a GIF merges a frame into the one before when they are the same: a step that stayed put)
    assert 1 < len(first) <= 5 and 1 <= len(last) <= 5 and first[0].size == (84, 84)
    assert len({f.tobytes() for f in first}) > 1  # it moves
    assert duration_ms(gifs["first"]) == 5 * 4 * episode_gifs.FRAME_MS  # each frame shown for the steps it stands for


def test_minatar_frames_are_coloured_and_enlarged():
    obs = np.zeros((10, 10, 4), bool)
    obs[2, 3, 0] = obs[7, 7, 3] = True
    picture = episode_gifs.image(obs, stacked=False)
    assert picture.shape == (60, 60, 3)
    assert picture[0, 0].sum() == 0
    assert picture[2 * 6, 3 * 6].sum() > 0 and picture[7 * 6, 7 * 6].sum() > 0
    assert not np.array_equal(picture[2 * 6, 3 * 6], picture[7 * 6, 7 * 6])


def test_an_evaluation_task_logs_gifs_of_its_first_and_last_episode(ray_session, ws, server):
    """A real evaluation task (players.play, a Ray task) on Dark Room returns its GIFs, and
    they reach the agent's run as MLflow artifacts that open as animations."""
    import ray

    from understudy.platform.players import Agent, play

    result = ray.get(play.remote(Agent("random", run_seed=0), "DarkRoom", {}, 2, 1, None, False, 7,
                                 goal_split="heldout"))
    assert set(result["gifs"]) == {"first", "last"}
    client = MlflowClient(server.uri)
    run = client.create_run(client.create_experiment("ui-gifs")).info.run_id
    assert episode_gifs.log_gifs(client, run, result["gifs"]) == ["episodes/first_episode.gif",
                                                                 "episodes/last_episode.gif"]
    assert {a.path for a in client.list_artifacts(run, "episodes")} == {"episodes/first_episode.gif",
                                                                        "episodes/last_episode.gif"}
    local = client.download_artifacts(run, "episodes/last_episode.gif", str(ws.root))
    with Image.open(local) as gif:
        assert gif.format == "GIF" and 1 < gif.n_frames <= episode_gifs.MAX_FRAMES


def documented_filters() -> list[tuple[str, str]]:
    """(filter, what it finds) from docs/tracking.md's block of filters."""
    from conftest import REPO_ROOT

    text = open(os.path.join(REPO_ROOT, "docs", "tracking.md")).read()
    block = text.split("filter syntax", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    return [tuple(part.strip() for part in line.split("  -- ")) for line in block.strip().splitlines()]


def test_the_filters_docs_show_find_the_runs_they_say(ws, server):
    """A study laid out as the platform lays it out (parent run, stage runs, a trial, agent runs,
    the answer on the parent run): every filter in docs/tracking.md is valid MLflow syntax and
    finds runs of it."""
    client = MlflowClient(server.uri)
    filters = documented_filters()
    assert len(filters) >= 6
    ws = tracking.open_study(ws, "ui-filters", "filters", "understudy experiment ui-filters", {})
    with tracking.stage_run(ws, "distill", "f-imitator", {}) as stage:
        trial = tracking.start_run(client, stage.experiment_id, "trial", {"lr": 0.001}, parent=stage.run_id)
        client.log_metric(trial, "heldout_accuracy", 0.4)
        tracking.end_run(client, trial)
    with tracking.stage_run(ws, "evaluate", "f-evaluate", {}, {"understudy.summary": "true"}) as stage:
        for agent in ("imitator", "ed", "random"):
            run = tracking.start_run(client, stage.experiment_id, agent, {"agent": agent, "game": "DarkRoom",
                                                                           "held_out": True},
                                     parent=stage.run_id)
            tracking.log_metric_series(client, run, "episode_return", [0.0, 1.0])
            tracking.end_run(client, run)
    client.log_metric(ws.study.run_id, "iqm/imitator/heldout", 0.7)
    tracking.end_run(client, ws.study.run_id)
    commit = tracking.code_version().removesuffix("+dirty")
    for text, what in filters:
        if "mlflow.source.git.commit" in text:  # the docs' example commit is not this one
            if commit == "unknown":
                continue
            text = text.split("LIKE")[0] + f"LIKE '{commit[:7]}%'"
        found = client.search_runs([ws.study.experiment_id], text)
        assert found, (text, what)
