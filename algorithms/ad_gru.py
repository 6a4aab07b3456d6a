"""Recurrent Algorithm Distillation: AD with a GRU in place of the transformer. Trained on the
same cross-episode windows of a learning history, but at play time its hidden state is carried
forever, across every episode it plays, so its memory is not bounded by a context length.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from understudy.algorithms.nets import StepEmbedding, masked_action_loss
from understudy.histories.data import SampleSpec


class RecurrentAD(nn.Module):
    def __init__(self, num_actions: int, cnn: str = "small", stack: int = 1, context: int = 256,
                 d_model: int = 128, layers: int = 1):
        super().__init__()
        self.embed = StepEmbedding(cnn, stack, num_actions, d_model)
        self.gru = nn.GRU(d_model, d_model, layers, batch_first=True)
        self.head = nn.Linear(d_model, num_actions)
        self.spec = {"algorithm": "ad_gru", "num_actions": num_actions, "cnn": cnn, "stack": stack,
                     "context": context, "d_model": d_model, "layers": layers}

    def sample_spec(self) -> SampleSpec:
        # Training windows (truncated backpropagation through time) of `context` steps.
        return SampleSpec("history", self.spec["context"], self.spec["stack"])

    def forward(self, batch: dict, state: torch.Tensor | None = None):
        out, _ = self.gru(self.embed(batch), state)
        return self.head(out)

    def loss(self, batch: dict):
        return masked_action_loss(self(batch), batch["action"], batch["mask"])


class Policy:
    """One hidden state per env, never reset: everything the agent has played stays in it."""

    def __init__(self, model: RecurrentAD, num_envs: int, greedy: bool = False, seed: int = 0):
        self.model, self.greedy = model, greedy
        self.gen = torch.Generator().manual_seed(seed)
        self.device = next(model.parameters()).device
        self.state = torch.zeros(model.spec["layers"], num_envs, model.spec["d_model"], device=self.device)

    @torch.inference_mode()
    def act(self, obs, prev_action, prev_reward, new_episode):
        dev = self.device
        step = {"obs": torch.as_tensor(obs, device=dev)[:, None],
                "prev_action": torch.as_tensor(np.asarray(prev_action), dtype=torch.long, device=dev)[:, None],
                "prev_reward": torch.as_tensor(np.asarray(prev_reward), dtype=torch.float32, device=dev)[:, None],
                "new_episode": torch.as_tensor(np.asarray(new_episode), dtype=torch.bool, device=dev)[:, None]}
        out, self.state = self.model.gru(self.model.embed(step), self.state)
        logits = self.model.head(out[:, 0]).float().cpu()
        if self.greedy:
            return logits.argmax(-1).numpy()
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.gen).squeeze(-1).numpy()
