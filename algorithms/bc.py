"""Behaviour cloning: the snapshot imitator. A CNN maps a frame stack to action logits and is
trained by cross-entropy on the teacher's recorded actions. Nothing in it can learn at play
time: its weights are frozen once trained and it has no memory of earlier steps.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from understudy.algorithms.encoders import EncoderName
from understudy.algorithms.imitators import Imitator, Positive, register
from understudy.algorithms.nets import FrameEncoder, choose
from understudy.histories.data import SampleSpec


class ConvPolicy(nn.Module):
    def __init__(self, num_actions: int, cnn: EncoderName = "small", stack: Positive = 4, hidden: Positive = 256):
        super().__init__()
        self.encoder = FrameEncoder(cnn, stack, hidden)
        self.head = nn.Linear(hidden, num_actions)
        self.spec = {"algorithm": "bc", "num_actions": num_actions, "cnn": cnn, "stack": stack,
                     "hidden": hidden}

    def sample_spec(self) -> SampleSpec:
        return SampleSpec("step", 1, self.spec["stack"])

    def forward(self, stacks: torch.Tensor) -> torch.Tensor:
        """stacks: (B, 84, 84, stack), uint8 pixels or floats in [0, 1] -> logits (B, A)."""
        return self.head(self.encoder(stacks))

    def loss(self, batch: dict):
        logits = self(batch["obs"])
        loss = F.cross_entropy(logits, batch["action"])
        accuracy = (logits.argmax(-1) == batch["action"]).float().mean()
        return loss, {"accuracy": accuracy.detach(), "targets": torch.tensor(len(logits))}


class Policy:
    """Plays with a frozen ConvPolicy: each step sees only the current frame stack."""

    def __init__(self, model: ConvPolicy, num_envs: int, greedy: bool = True, seed: int = 0):
        self.model, self.greedy = model, greedy
        self.gen = torch.Generator().manual_seed(seed)
        self.legal: torch.Tensor | None = None  # set by a caller whose game has fewer actions

    @torch.inference_mode()
    def act(self, obs, prev_action=None, prev_reward=None, new_episode=None):
        device = next(self.model.parameters()).device
        return choose(self.model(torch.as_tensor(obs, device=device)), self.greedy, self.gen, self.legal)


register("bc", Imitator(ConvPolicy, Policy, description="behaviour cloning: a CNN on a frame stack, no memory"))
