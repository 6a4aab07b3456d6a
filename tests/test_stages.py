"""The skeleton every stage runs in (platform/stages.py): its MLflow stage run, the `.running`
marker `--resume` continues from, and the manifest that ends it. The stages themselves, killed
and resumed for real, are tests/test_faults.py's and tests/test_reproducibility.py's."""
import json

import pytest

from understudy.platform import stages, tracking
from understudy.platform.config import EvaluateConfig, config_digest
from understudy.platform.manifests import EvaluateManifest
from understudy.platform.workspace import Workspace

CFG = EvaluateConfig(name="e", imitator="d", teacher="t", games=["DarkRoom"], agents=["random"])
RESULT = {"rows": [], "aggregate": [], "summary_run_id": "r", "table": "", "trained_on": ["DarkRoom"]}


@pytest.fixture
def ws(tmp_path):
    return Workspace.resolve(str(tmp_path / "ws"), None, None, None).ensure()


def test_a_fresh_stage_marks_itself_and_its_manifest_ends_it(ws):
    with stages.running(ws, "evaluate", CFG, False, {"games": "DarkRoom"}, seeds={"evaluation": 0}) as stage:
        assert stage.interrupted() is None
        stage.start(session="s")
        assert json.loads(stage.marker.read_text()) == {"session": "s", "config": CFG.model_dump(mode="json")}
        manifest = stage.finish(RESULT)
    assert isinstance(manifest, EvaluateManifest) and not stage.marker.exists()
    written = ws.read_stage("evaluate", "e")
    assert (written.kind, written.name, written.config_digest) == ("evaluate", "e", config_digest(CFG))
    assert written.reproducibility.seeds == {"evaluation": 0}
    run = tracking.client_for(ws).get_run(stage.mlflow.run_id)
    assert run.info.status == "FINISHED" and run.data.params["stage"] == "e"
    assert run.data.params["games"] == "DarkRoom" and run.data.params["seeds.evaluation"] == "0"


def test_a_failed_stage_keeps_its_marker_for_resume(ws):
    with pytest.raises(RuntimeError, match="boom"):
        with stages.running(ws, "evaluate", CFG, False, {}, seeds={}) as stage:
            stage.interrupted({"config_and_checkpoints": "k1"})
            stage.start()
            raise RuntimeError("boom")
    assert tracking.client_for(ws).get_run(stage.mlflow.run_id).info.status == "FAILED"
    assert stage.marker.exists() and not ws.stage_path("evaluate", "e").exists()

    # the same inputs continue it; other inputs start afresh, saying what changed
    with stages.running(ws, "evaluate", CFG, True, {}, seeds={}) as again:
        assert again.interrupted({"config_and_checkpoints": "k1"}) == {"config": {"config_and_checkpoints": "k1"}}
    with stages.running(ws, "evaluate", CFG, True, {}, seeds={}) as other:
        assert other.interrupted({"config_and_checkpoints": "k2"}) is None


def test_resume_without_an_interrupted_run_is_refused(ws):
    with pytest.raises(stages.StageFailed, match=r"--resume: no interrupted evaluate stage named 'e' .*running\.json"):
        with stages.running(ws, "evaluate", CFG, True, {}, seeds={}) as stage:
            stage.interrupted()
