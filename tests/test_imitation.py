"""Imitators on real shards from a tiny real teacher run (RLlib PPO on Breakout, two seeds):
the streaming loader's windows and selections, the models, and Tune sweeps into MLflow."""
import glob
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from understudy.algorithms import imitation, imitators
from understudy.histories import data, shards

pytestmark = pytest.mark.slow

TEACH = {"kind": "teach", "name": "tiny", "algorithm": "ppo", "games": ["Breakout"], "seeds": [0, 1],
         "env_steps": 768, "env_steps_per_iter": 256, "max_episode_steps": 30,
         "num_envs_per_runner": 2, "protocol": {"full_action_space": True},
         "ppo": {"num_minibatches": 4, "num_epochs": 1}}


@pytest.fixture(scope="module")
def teacher(ray_session, tmp_path_factory):
    from understudy.platform import cli
    from understudy.platform.workspace import Workspace

    tmp = tmp_path_factory.mktemp("imitation")
    (tmp / "teach.yaml").write_text(yaml.safe_dump(TEACH))
    assert cli.main(["--workspace", str(tmp / "ws"), "teach", str(tmp / "teach.yaml")]) == 0
    ws = Workspace.resolve(str(tmp / "ws"))
    run_ids = shards.list_runs(ws.shard_root)
    assert len(run_ids) == 2
    return ws, ws.shard_root, run_ids


def groups_and_batches(loader, seed=0):
    rng = np.random.default_rng(seed)
    for group in loader._groups(rng):
        for batch in loader._batches_of(group, rng):
            yield group, batch


def test_distill_refuses_teachers_that_did_not_learn(teacher, tmp_path, capsys):
    """The learning gate: teach records a verdict per run (these 30-step episodes cannot be
    judged against whole-game references), `shards ls` shows it, and distill refuses those
    histories in one line naming the runs and why unless the config says allow_unlearned."""
    from understudy.platform import cli

    ws, root, run_ids = teacher
    manifest = ws.read_stage("teach", "tiny")
    for run in manifest.runs:
        assert run.verdict["learned"] is None and run.verdict["basis"] == "last 100 training episodes"
        assert "episodes cut at 30 steps" in run.verdict["why"]
    assert shards.read_run_verdict(root, run_ids[0])["learned"] is None
    capsys.readouterr()
    assert cli.main(["--workspace", str(ws.root), "shards", "ls"]) == 0
    assert capsys.readouterr().out.count("learned: unknown") == 2
    assert cli.main(["--workspace", str(ws.root), "distill", distill_yaml(tmp_path, allow_unlearned=False)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "did not learn or could not be judged" in err and all(r in err for r in run_ids)
    assert "allow_unlearned: true" in err and "episodes cut at 30 steps" in err


def test_the_learning_verdict_is_human_normalised_over_whole_games():
    from understudy.platform.teach import learning_verdict

    curve = [(10_000, 1.0), (20_000, 4.0)]  # Breakout: random 1.7, human 30.5
    verdict = learning_verdict("Breakout", curve, [], margin=0.05)
    assert verdict["learned"] is True and verdict["basis"] == "greedy evaluation"
    assert verdict["normalised"] == pytest.approx((4.0 - 1.7) / (30.5 - 1.7))
    assert learning_verdict("Breakout", [(1, 2.0)], [], margin=0.05)["learned"] is False
    assert learning_verdict("Breakout", [], [3.0] * 200 + [5.0] * 100, margin=0.05)["final_return"] == 5.0
    assert learning_verdict("Pong", [(1, 0.0)], [], margin=0.05, capped_at=30)["learned"] is None
    assert learning_verdict("MinAtar/Breakout", [(1, 5.0)], [], margin=0.05)["learned"] is True
    assert learning_verdict("DarkRoom", [], [0.0] * 10, margin=0.05, reference=(0.0, 19.0))["learned"] is False


def test_history_windows_never_cross_histories_and_keep_training_order(teacher):
    _, root, run_ids = teacher
    histories = data.index_runs(root, run_ids)
    spec = data.SampleSpec("history", 48, 1)
    # Small blocks, two in memory at once: windows must still stay inside one history.
    loader = data.Loader(root, histories, spec, batch_size=8, num_actions=18, block_steps=40)
    seen_targets = 0
    for group, batch in groups_and_batches(loader):
        rows, valid = batch["row"], batch["mask"] | (batch["row"] != batch["row"][:, :1])
        for r, v in zip(rows, valid):
            r = r[v]
            assert len(np.unique(group.history_start[r])) == 1  # one history per window
            assert (np.diff(r) == 1).all()  # consecutive rows: training order kept
            ep = group.episode_id[r]
            assert set(np.diff(ep)) <= {0, 1}  # whole consecutive episodes, none skipped
            for e in np.unique(ep):
                pv = group.policy_version[r[ep == e]]
                assert (np.diff(pv) >= 0).all()
            ends = [group.policy_version[r[ep == e]][-1] for e in np.unique(ep)[:-1]]
            assert (np.diff(ends) >= 0).all()  # episodes in the order they were completed
        seen_targets += batch["mask"].sum()
    assert seen_targets >= sum(h.steps for h in histories)  # every target row is covered
    # Windows span several episodes (30-step episodes, 48-step windows).
    assert any(len(np.unique(group.episode_id[r])) >= 2 for r in batch["row"])


def test_episode_windows_never_cross_episodes(teacher):
    _, root, run_ids = teacher
    loader = data.Loader(root, data.index_runs(root, run_ids), data.SampleSpec("episode", 16, 4),
                         batch_size=8, num_actions=18, block_steps=100)
    for group, batch in groups_and_batches(loader):
        for r, m in zip(batch["row"], batch["mask"]):
            assert len(np.unique(group.episode_id[r[m]])) == 1
        # the return-to-go at each step is what that episode still had to give
        rtg = group.returns_to_go()
        for r, m, g in zip(batch["row"], batch["mask"], batch["rtg"]):
            np.testing.assert_allclose(g[m], rtg[r[m]])
            ep_rows = np.flatnonzero(group.episode_id == group.episode_id[r[m][0]])
            assert np.isclose(rtg[ep_rows[0]], group.rewards[ep_rows].sum())


def test_stacks_rebuilt_by_the_loader_match_a_whole_run_read(teacher):
    _, root, run_ids = teacher
    whole = data.load_history(root, run_ids[:1])
    loader = data.Loader(root, data.index_runs(root, run_ids[:1]), data.SampleSpec("step", 1, 4),
                         batch_size=16, num_actions=18, block_steps=50)
    for group, batch in groups_and_batches(loader):
        # find each sampled row in the whole history by its frame stack and action
        for obs, action in zip(batch["obs"][:3], batch["action"][:3]):
            hits = np.flatnonzero((whole.actions == action)
                                  & (whole.frames == obs[..., -1]).all(axis=(1, 2)))
            assert any((whole.stacks(np.array([h])) == obs).all() for h in hits)


def test_selections_keep_exactly_the_episodes_they_claim(teacher):
    _, root, run_ids = teacher
    histories = data.index_runs(root, run_ids)
    full = histories[0].episodes
    # gap: every k-th episode of the history
    assert data.Selection(gap=3).apply(histories)[0].episodes == full[::3]
    # expert-only: the last N
    assert data.Selection(expert_last=4).apply(histories)[0].episodes == full[-4:]
    # cutoff by env steps: whole episodes that end within the first N recorded steps
    n = sum(e.steps for e in full[:5]) + 3
    assert data.Selection(cutoff_env_steps=n).apply(histories)[0].episodes == full[:5]
    # cutoff by policy version
    v = full[len(full) // 2].last_policy_version
    kept = data.Selection(cutoff_policy_version=v).apply(histories)[0].episodes
    assert kept == tuple(e for e in full if e.last_policy_version <= v) and 0 < len(kept) < len(full)
    # game filter
    assert data.Selection(games=("Pong",)).apply(histories) == []
    # and the rows a loader then reads are exactly those episodes' rows
    sel = data.Selection(gap=2).apply(histories)
    loader = data.Loader(root, sel, data.SampleSpec("step", 1, 1), batch_size=64, num_actions=18)
    assert sum(len(b["action"]) for b in loader) == sum(e.steps for h in sel for e in h.episodes)
    # held-out split: the last N episodes per history, the rest trains
    train, held = data.split_heldout(histories, 2)
    assert all(t.episodes + h.episodes == o.episodes for t, h, o in zip(train, held, histories))


def test_step_transforms(teacher):
    _, root, run_ids = teacher
    h = data.index_runs(root, run_ids[:1])
    reader = data.ShardReader(root)
    eps = list(h[0].episodes)
    raw = data.read_block(reader, h[0], eps, data.StepTransforms(), 0, len(eps))
    sign = data.read_block(reader, h[0], eps, data.StepTransforms(reward="sign"), 0, len(eps))
    np.testing.assert_array_equal(sign.rewards, np.sign(raw.rewards))
    gla = data.read_block(reader, h[0], eps, data.StepTransforms(gla=True), 0, len(eps))
    # a fixed permutation per history: same multiset of pixels and actions mapped one to one
    np.testing.assert_array_equal(np.sort(gla.frames.reshape(len(gla), -1), 1),
                                  np.sort(raw.frames.reshape(len(raw), -1), 1))
    pairs = set(zip(raw.actions.tolist(), gla.actions.tolist()))
    assert len({a for a, _ in pairs}) == len(pairs)


def tiny(algorithm: str) -> dict:
    """Small sizes of an imitator's own parameters (those it takes): a context that spans
    episodes of these 30-step histories for an in-context learner, one episode's part for others."""
    imitator = imitators.get(algorithm)
    small = {"context": 48 if imitator.cross_episode else 16, "d_model": 32, "layers": 1}
    return {k: v for k, v in small.items() if k in imitator.parameters()}


@pytest.mark.parametrize("algorithm", imitators.names())  # every registered imitator
def test_a_tiny_model_fits_a_fixed_batch(teacher, algorithm):
    _, root, run_ids = teacher
    torch.manual_seed(0)
    model = imitation.build(algorithm, 18, **tiny(algorithm))
    # An early teacher acts almost at random: keep the batch small enough to be memorised
    # (windows of many steps: a few of them).
    loader = data.Loader(root, data.index_runs(root, run_ids), model.sample_spec(),
                         batch_size=16 if model.sample_spec().length == 1 else 2, num_actions=18)
    batch = imitation.to_torch(next(iter(loader)))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    first = model.loss(batch)[0].item()
    for _ in range(80):
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Breakout frames barely differ while nobody fires, so perfect recall is not possible.
    assert loss.item() < 0.8 * first


def test_the_fused_causal_transformer_computes_torch_s_own_encoder_layers():
    """CausalTransformer runs its layers' parameters through one fused attention call; with
    dropout off it must give what torch's TransformerEncoder gives on the same parameters, in
    both modes, and gradients must flow to the same parameters. Attention dropout acts only
    in training."""
    from understudy.algorithms.nets import CausalTransformer

    torch.manual_seed(0)
    net = CausalTransformer(32, 2, 4, 64, dropout=0.0, attention_dropout=0.0)
    x = torch.randn(3, 50, 32)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(50)
    for train in (True, False):
        net.train(train)
        ours = net(x)
        theirs = net.norm(net.blocks(x + net.position(torch.arange(50)), mask=mask, is_causal=True))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    net.train()
    net.zero_grad()
    net(x).square().sum().backward()
    ours = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    net.norm(net.blocks(x + net.position(torch.arange(50)), mask=mask, is_causal=True)).square().sum().backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)

    dropped = CausalTransformer(32, 2, 4, 64, dropout=0.0, attention_dropout=0.5)
    dropped.load_state_dict(net.state_dict())
    assert not torch.allclose(dropped.train()(x), net(x))
    torch.testing.assert_close(dropped.eval()(x), net.eval()(x))


def distill_yaml(tmp_path, **extra):
    cfg = {"kind": "distill", "name": "sweep", "teacher": "tiny", "game": "Breakout",
           "algorithm": "ad", "model": {"context": 64, "d_model": 32, "layers": 1, "cnn": "small"},
           "data": {"heldout_episodes": 2}, "epochs": 2, "batch_size": 8,
           "allow_unlearned": True, "allow_flat_windows": True, **extra}  # 768-step teachers do not learn
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_two_trial_asha_sweep_reaches_mlflow_with_models(teacher, tmp_path, monkeypatch):
    import mlflow.pyfunc

    from understudy.platform import cli

    ws, root, run_ids = teacher
    config = distill_yaml(tmp_path, search={"lr": {"grid": [1e-3, 3e-4]}}, scheduler="asha")
    assert cli.main(["--workspace", str(ws.root), "distill", config]) == 0
    manifest = ws.read_stage("distill", "sweep")
    assert len(manifest.trials) == 2
    client = MlflowClient(ws.tracking_uri)
    lrs = set()
    for trial in manifest.trials:
        run = client.get_run(trial.mlflow_run_id)
        lrs.add(float(run.data.params["lr"]))
        assert run.data.params["data_version"] == shards.data_version(root, run_ids)
        assert run.data.params["data_games"] == "Breakout" and run.data.params["data.heldout_episodes"] == "2"
        for key in ("train_loss", "heldout_loss", "heldout_accuracy"):
            assert client.get_metric_history(run.info.run_id, key)
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "training_curves.png"} <= names
        assert len(run.outputs.model_outputs) == 1  # the model, logged as the run's output
    assert lrs == {1e-3, 3e-4}
    # a lone distill's study is understudy-distill: its registered model, a version per trial
    versions = client.search_model_versions("name = 'understudy-distill-ad'")
    assert sorted(v.run_id for v in versions) == sorted(t.mlflow_run_id for t in manifest.trials)
    (best,) = [v for v in versions if v.run_id == manifest.mlflow_run_id]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ws.tracking_uri)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_model puts the model's code/ first on it
    model = mlflow.pyfunc.load_model(f"models:/understudy-distill-ad/{best.version}").get_raw_model()
    assert model.spec["algorithm"] == "ad"
    # our own checkpoint loads weights only, and refuses to pass for another model
    with pytest.raises(ValueError, match="algorithm 'ad', expected bc"):
        imitation.load(manifest.checkpoint, expect="bc")
    # the checkpoint says what the data path did to each step, so the player can do it again
    _, meta = imitation.load(manifest.checkpoint)
    assert meta["transforms"] == {"unified_actions": False, "reward": "raw", "gla": False, "seed": 0}


def _trial_workers():
    """This test session's own Tune trial processes (descendants of this process: the Ray
    instance it started), never another run's on the same machine."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any("ImplicitFunc" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_a_killed_trial_restarts_from_its_checkpoint(teacher, tmp_path):
    from understudy.platform import cli

    ws, _, _ = teacher
    config = distill_yaml(tmp_path, name="killed", epochs=4, max_failures=2, algorithm="bc",
                          model={"cnn": "small"}, batch_size=4)
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if glob.glob(f"{ws.ray_results}/distill-killed-*/*/checkpoint_000000"):
                for proc in _trial_workers():
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    assert cli.main(["--workspace", str(ws.root), "distill", config]) == 0
    killer.join()
    assert killed, "the trial's worker was never killed"
    manifest = ws.read_stage("distill", "killed")
    run = manifest.trials[0].mlflow_run_id
    steps = [m.step for m in MlflowClient(ws.tracking_uri).get_metric_history(run, "train_loss")]
    # The restarted trial went on from its checkpoint: every epoch reported once, in order.
    assert manifest.trials[0].epochs == 4
    assert steps == sorted(set(steps)) and len(steps) == 4


def test_a_trial_with_two_workers_trains_data_parallel_with_ray_train(teacher, tmp_path):
    """`workers: 2`: Ray Train runs two worker processes inside the Tune trial, each on its
    share of the blocks with gradients all-reduced; rank 0's reports and checkpoints reach Tune
    and MLflow like any trial's."""
    from understudy.platform import cli

    ws, root, run_ids = teacher
    config = distill_yaml(tmp_path, name="ddp", workers=2, cpus_per_trial=1, epochs=2,
                          max_batches_per_epoch=4)
    assert cli.main(["--workspace", str(ws.root), "distill", config]) == 0
    manifest = ws.read_stage("distill", "ddp")
    [trial] = manifest.trials
    assert trial.workers == 2 and trial.epochs == 2
    client = MlflowClient(ws.tracking_uri)
    assert len(client.get_metric_history(trial.mlflow_run_id, "train_loss")) == 2
    model, meta = imitation.load(manifest.checkpoint, expect="ad")
    assert meta["epoch"] == 2


def test_the_registered_pyfunc_model_predicts_what_the_network_computes(tmp_path, monkeypatch):
    """`mlflow.pyfunc.load_model(...).predict(batch)` on a saved imitator: the logits the torch
    module gives for the same training-format batch, loaded without unpickling."""
    import mlflow.pyfunc

    from understudy.platform import imitator_model

    torch.manual_seed(0)
    model = imitation.build("ad", 6, cnn="minatar", stack=1, context=8, d_model=16, layers=1, heads=2,
                            dropout=0.0).eval()
    imitation.save(model, str(tmp_path / "ck"), {})
    imitator_model.save(str(tmp_path / "ck"), str(tmp_path / "mlflow-model"))
    rng = np.random.default_rng(0)
    batch = {"obs": rng.integers(0, 2, (2, 8, 10, 10, 10)).astype(np.uint8) * 255,
             "prev_action": rng.integers(0, 7, (2, 8)), "prev_reward": rng.random((2, 8)).astype(np.float32),
             "new_episode": np.zeros((2, 8), bool)}
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_model puts the model's code/ first on it
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "mlflow-model"))
    with torch.no_grad():
        expected = model({k: torch.as_tensor(v) for k, v in batch.items()}).numpy()
    np.testing.assert_allclose(loaded.predict(batch), expected, rtol=1e-5, atol=1e-5)


def test_distill_says_how_much_the_teacher_improves_within_one_context():
    """A learning history whose return rises by 1 per episode shows a gain of about 10 across a
    10-episode context; a flat one shows none. Both beside the spread of single episodes."""
    from types import SimpleNamespace

    from understudy.platform.distill import improvement_per_context

    def history(returns):
        return SimpleNamespace(episodes=[SimpleNamespace(ret=float(r), steps=10) for r in returns])

    rising = improvement_per_context([history(range(100))], 10.0)
    assert rising["return_gain_per_context"] == pytest.approx(10.0)
    assert rising["return_std"] == pytest.approx(np.std(np.arange(100)), abs=1e-3)  # rounded to 4 places
    flat = improvement_per_context([history([1, 3] * 50), history(range(100))], 10.0)
    assert flat["return_gain_per_context"] == pytest.approx(
        (10.0 + 10 * np.polyfit(np.arange(100), [1, 3] * 50, 1)[0]) / 2)
    assert improvement_per_context([history([1, 2])], 10.0) == {}
