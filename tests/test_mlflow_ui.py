"""What a person sees of a study in MLflow's UI, checked through a real `mlflow server`
(PostgreSQL backend store, proxied artifacts): studies open in the training-runs view and
registered imitators have signatures."""
import glob
import os

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from understudy.platform import tracking
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

