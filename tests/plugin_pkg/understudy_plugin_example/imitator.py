"""Behaviour cloning through a two-layer MLP: an imitator defined outside understudy.

`MLP_BC` is what a distill config names, either by this package's entry point
(`algorithm: mlp_bc`) or by its place (`algorithm: understudy_plugin_example.imitator:MLP_BC`).
Its hyper-parameters are the constructor's arguments; their annotations bound them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from understudy.algorithms.encoders import EncoderName
from understudy.algorithms.imitators import Imitator, Positive
from understudy.algorithms.nets import FrameEncoder, choose
from understudy.histories.data import SampleSpec


class MLPPolicy(nn.Module):
    def __init__(self, num_actions: int, cnn: EncoderName = "small", stack: Positive = 1, hidden: Positive = 64,
                 depth: Positive = 2):
        super().__init__()
        self.encoder = FrameEncoder(cnn, stack, hidden)
        layers = []
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden, num_actions))
        self.stack = stack  # no `spec` of its own: understudy records the constructor's arguments

    def sample_spec(self) -> SampleSpec:
        return SampleSpec("step", 1, self.stack)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoder(obs))

    def loss(self, batch: dict):
        logits = self(batch["obs"])
        loss = F.cross_entropy(logits, batch["action"])
        accuracy = (logits.argmax(-1) == batch["action"]).float().mean()
        return loss, {"accuracy": accuracy.detach(), "targets": torch.tensor(len(logits))}


class Player:
    """Plays a frozen MLPPolicy on the current observation alone."""

    def __init__(self, model: MLPPolicy, num_envs: int, greedy: bool = True, seed: int = 0):
        self.model, self.greedy = model, greedy
        self.gen = torch.Generator().manual_seed(seed)
        self.legal = None  # set by understudy when the model has more actions than the game

    @torch.inference_mode()
    def act(self, obs, prev_action=None, prev_reward=None, new_episode=None):
        device = next(self.model.parameters()).device
        return choose(self.model(torch.as_tensor(obs, device=device)), self.greedy, self.gen, self.legal)


MLP_BC = Imitator(MLPPolicy, Player, description="behaviour cloning through an MLP (a plug-in)")
