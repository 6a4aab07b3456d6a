"""AD's loss with each episode's first steps weighted (algorithms/ad.py): the weighted mean is
exactly the weighted cross-entropy, weight 1 is the plain loss, and a config sets it."""
import math

import torch

from understudy.algorithms import imitation
from understudy.algorithms.ad import episode_start_weighted_loss
from understudy.algorithms.nets import masked_action_loss
from understudy.platform.config import parse_config


def _batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 4, generator=g)
    batch = {"action": torch.randint(0, 4, (2, 6), generator=g),
             "timestep": torch.tensor([[3, 4, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1]]),
             "mask": torch.tensor([[True] * 6, [True, True, True, True, False, False]])}
    return logits, batch


def test_the_first_steps_of_each_episode_count_weight_times():
    logits, batch = _batch()
    loss, stats = episode_start_weighted_loss(logits, batch, steps=2, weight=5.0)
    total = weights = 0.0
    for b in range(2):
        for t in range(6):
            if not batch["mask"][b, t]:
                continue
            w = 5.0 if batch["timestep"][b, t] < 2 else 1.0
            ce = -torch.log_softmax(logits[b, t], -1)[batch["action"][b, t]].item()
            total, weights = total + w * ce, weights + w
    assert math.isclose(loss.item(), total / weights, rel_tol=1e-6)
    assert stats["targets"].item() == 10
    plain, _ = masked_action_loss(logits, batch["action"], batch["mask"])
    same, _ = episode_start_weighted_loss(logits, batch, steps=2, weight=1.0)
    assert math.isclose(same.item(), plain.item(), rel_tol=1e-6) and not math.isclose(loss.item(), plain.item())


def test_the_model_uses_it_only_when_asked_and_a_config_sets_it():
    plain = imitation.build("ad", 4, cnn="grid", context=8, d_model=16, layers=1, heads=2)
    weighted = imitation.build("ad", 4, cnn="grid", context=8, d_model=16, layers=1, heads=2,
                               episode_start_steps=2, episode_start_weight=5.0)
    assert (plain.spec["episode_start_steps"], weighted.spec["episode_start_weight"]) == (0, 5.0)
    cfg = parse_config({"kind": "distill", "teacher": "t", "game": "DarkRoom", "algorithm": "ad",
                        "model": {"cnn": "grid", "episode_start_steps": 10, "episode_start_weight": 10.0}})
    assert (cfg.model.episode_start_steps, cfg.model.episode_start_weight) == (10, 10.0)
