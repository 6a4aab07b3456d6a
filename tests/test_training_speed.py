"""The speed-ups of imitator training keep the model and its loss: bfloat16 mixed precision
follows float32's loss curve within float32's own seed-to-seed noise, and the loader's frame
blocks live in memory maps of their own (so the malloc heap, where the update's activations
live, is left at glibc's defaults). Speed itself is measured in bench/limits.py, not here."""
import mmap

import numpy as np
import pytest
import torch

from understudy.algorithms import imitation
from understudy.histories import data


def _history(rows=3000, seed=0):
    rng = np.random.default_rng(seed)
    episode_id = np.arange(rows) // 60
    # an action that depends on the observation, so the loss has something to fall towards
    frames = rng.integers(0, 2, (rows, 10, 10, 10), dtype=np.uint8)
    actions = (frames[:, 0, 0, :6].argmax(-1)).astype(np.int64)
    return data.History(frames=frames, actions=actions, rewards=rng.integers(0, 2, rows).astype(np.float32),
                        episode_start=(episode_id * 60).astype(np.int64), episode_id=episode_id,
                        target=np.ones(rows, bool), history_start=np.zeros(rows, np.int64),
                        policy_version=np.zeros(rows, np.int64))


def _loss_curve(precision: str, seed: int, updates: int = 30) -> np.ndarray:
    torch.manual_seed(seed)
    model = imitation.build("ad", 6, cnn="minatar", stack=1, context=64, d_model=32, layers=2, heads=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    h, spec, rng = _history(), model.sample_spec(), np.random.default_rng(123)  # the same batches for all
    batches = [data.make_batch(h, rng.integers(0, len(h) - spec.length, 8), spec, 6) for _ in range(updates)]
    return np.array([imitation.train_epoch(model, optimizer, [b], precision=precision)["train_loss"]
                     for b in batches])


def test_bfloat16_loss_curve_matches_float32_within_its_seed_noise():
    fp32, bf16, other_seed = _loss_curve("float32", 0), _loss_curve("bfloat16", 0), _loss_curve("float32", 1)
    assert fp32[-5:].mean() < fp32[:5].mean() - 0.1  # it learns: the curve means something
    noise = np.abs(fp32 - other_seed).mean()  # float32 against float32 from another initialisation
    assert np.abs(bf16 - fp32).mean() < noise, (np.abs(bf16 - fp32).mean(), noise)
    assert abs(bf16[-5:].mean() - fp32[-5:].mean()) < 0.1


def test_unknown_precision_is_refused_by_name():
    model = imitation.build("bc", 6, cnn="minatar", stack=1)
    with pytest.raises(ValueError, match="precision 'fp8'; valid: float32, bfloat16"):
        imitation.autocast(model, "fp8")


def test_loader_frame_blocks_live_in_their_own_memory_maps():
    blocks = [_history(500, 0), _history(700, 1)]
    frames = data.concat(blocks).frames
    assert np.array_equal(frames, np.concatenate([b.frames for b in blocks]))
    base = frames
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap), type(base)
    assert not hasattr(data, "limit_heap_growth")  # nothing lowers glibc's mmap threshold any more


def test_transformer_dropout_is_inverted_dropout_at_its_rate():
    from understudy.algorithms import nets

    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = nets.dropout(x, 0.1, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 6 standard errors at this size
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert nets.dropout(x, 0.1, training=False) is x and nets.dropout(x, 0.0, training=True) is x
    bf = nets.dropout(x.bfloat16(), 0.5, training=True)
    assert bf.dtype == torch.bfloat16 and abs((bf == 0).float().mean().item() - 0.5) < 0.01
