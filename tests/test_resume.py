"""A distill trial killed after a checkpoint and restored from it ends with the same weights as
one never interrupted: the checkpoint holds the weights, the optimizer's state, where the data
order stood (the loader's passes over the data) and dropout's random stream. Real recorded Dark
Room histories, the platform's own training loop (distill._train_loop) and Tune's Checkpoint."""
import json
import shutil
import tempfile

import pytest
import torch
from ray import tune

from understudy.histories import shards
from understudy.platform import cli
from understudy.platform.config import DistillConfig
from understudy.platform.distill import _train_loop

TEACH = "kind: teach\nname: dr\nalgorithm: qlearning\ngames: [DarkRoom]\nenv_steps: 200\nenv_steps_per_iter: 20\n"


@pytest.fixture(scope="module")
def recorded(ray_session, tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    (base / "teach.yaml").write_text(TEACH)
    assert cli.main(["--workspace", str(base / "ws"), "teach", str(base / "teach.yaml")]) == 0
    teach = json.loads((base / "ws" / "stages" / "teach-dr.json").read_text())
    run_ids = [r["run_id"] for r in teach["runs"]]
    return {"shard_root": teach["shard_root"], "run_ids": run_ids, "skipped_shards": [],
            "data_version": shards.data_version(teach["shard_root"], run_ids), "gpus": 0}


def _train(context, epochs: int, checkpoint=None) -> list:
    # cycle_data with 30 batches an epoch: each epoch spans several passes over these small
    # histories, so the data order's position is not the epoch count; dropout on
    cfg = DistillConfig(teacher="dr", game="DarkRoom", algorithm="ad", epochs=epochs, batch_size=32, lr=1e-3,
                        model={"cnn": "grid", "stack": 1, "context": 40, "d_model": 16, "layers": 1, "heads": 2,
                               "dropout": 0.1},
                        data={"heldout_episodes": 1}, cycle_data=True, max_batches_per_epoch=30,
                        allow_unlearned=True, allow_flat_windows=True, verify_shards=False, seed=3, blocks_in_memory=65)
    kept = []

    def report(metrics, checkpoint=None):  # as Tune's report does: the checkpoint is persisted
        with checkpoint.as_directory() as d:
            kept.append(tune.Checkpoint.from_directory(shutil.copytree(d, tempfile.mkdtemp() + "/ck")))

    _train_loop(cfg, context, report, checkpoint, tune.Checkpoint.from_directory)
    return kept


def _weights(checkpoint) -> dict:
    with checkpoint.as_directory() as d:
        return torch.load(f"{d}/model.pt", weights_only=True)


def test_a_restored_trial_ends_with_the_weights_of_an_unbroken_one(recorded):
    unbroken = _train(recorded, epochs=3)
    first = _train(recorded, epochs=1)  # "killed" after its first epoch's checkpoint
    resumed = _train(recorded, epochs=3, checkpoint=first[-1])
    assert len(resumed) == 2  # epochs 2 and 3 only
    a, b = _weights(unbroken[-1]), _weights(resumed[-1])
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # and each of the three things is needed: without the data order or the random stream it drifts
    with first[-1].as_directory() as d:
        meta = json.loads(open(f"{d}/model.json").read())
    assert meta["loader_epoch"] > 1  # several passes in one epoch: the epoch count would not do


def test_a_replayed_finetune_task_plays_the_rows_of_the_first_whatever_ran_before_it(recorded):
    """The fine-tuning arm of evaluation: a `play` task of the finetune agent replayed after a
    kill (Ray retries it, or `--resume` plays it again) must give the rows it gave the first
    time. Its updates draw dropout masks from torch's global random stream, and Ray reuses
    worker processes, so that stream is whatever the tasks before left: the task seeds it."""
    from understudy.platform.players import Agent, play

    imitator = _train(recorded, epochs=1)[-1]  # dropout 0.1: the updates draw masks
    with imitator.as_directory() as checkpoint:
        played = []
        for before in (1, 2):  # two workers whose earlier tasks left different random streams
            torch.manual_seed(before)
            played.append(play._function(Agent("finetune", checkpoint), "DarkRoom", {}, 8, 1, None, False, 123,
                                         "heldout", {"lr": 1e-3, "updates": 1, "advantage_clip": 3.0}))
    assert played[0]["gradient_steps"] > 0  # the weights really were updated, with dropout on
    assert played[0]["returns"] == played[1]["returns"]
    assert played[0]["gradient_steps"] == played[1]["gradient_steps"]
