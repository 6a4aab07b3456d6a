"""Recurrent Algorithm Distillation: AD with a GRU in place of the transformer, trained on the
same cross-episode windows of a learning history, each read from a zero state. It plays the
way it was trained: its state runs across episodes, but only over a window of at most `context`
steps read from a zero state (the windows advance as the transformer's do, nets.ContextPolicy),
so it is never asked to act from a state longer than any it was trained on.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from understudy.algorithms.nets import StepEmbedding, choose, masked_action_loss
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
    """One hidden state per env over its window of recent steps. When a window is full it keeps
    its newest `keep` steps and the state is read again from zero over them (one GRU pass), as a
    training window would be; then it grows by one step at a time."""

    def __init__(self, model: RecurrentAD, num_envs: int, greedy: bool = False, seed: int = 0,
                 keep: int | None = None):
        self.model, self.greedy, self.n = model, greedy, num_envs
        self.context = model.spec["context"]
        self.keep = self.context * 3 // 4 if keep is None else keep
        if not 0 <= self.keep < self.context:
            raise ValueError(f"keep={self.keep}: must be at least 0 and below the context ({self.context})")
        self.gen = torch.Generator().manual_seed(seed)
        self.legal: torch.Tensor | None = None  # set by a caller whose game has fewer actions
        self.device = next(model.parameters()).device
        d = model.spec["d_model"]
        self.window = torch.zeros(num_envs, self.context, d, device=self.device)
        self.length = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.state = torch.zeros(model.spec["layers"], num_envs, d, device=self.device)
        self.inputs: dict | None = None  # each window's step inputs, when remember_inputs() asked

    def forget(self) -> None:
        self.length.zero_()
        self.state.zero_()

    def remember_inputs(self) -> None:
        """Keep each window's step inputs, so `refresh` can read them again with new weights."""
        self.inputs = self.inputs if self.inputs is not None else {}

    @torch.inference_mode()
    def refresh(self) -> None:
        """After the weights changed: tokens and state read again over each window."""
        if not self.inputs:
            self.forget()
            return
        self.window.copy_(self.model.embed(self.inputs))
        self.state.zero_()
        for n in torch.unique(self.length).tolist():
            rows = torch.nonzero(self.length == n).flatten()
            if n:
                _, self.state[:, rows] = self.model.gru(self.window[rows, :n])

    @torch.inference_mode()
    def act(self, obs, prev_action, prev_reward, new_episode):
        dev = self.device
        step = {"obs": torch.as_tensor(obs, device=dev)[:, None],
                "prev_action": torch.as_tensor(np.asarray(prev_action), dtype=torch.long, device=dev)[:, None],
                "prev_reward": torch.as_tensor(np.asarray(prev_reward), dtype=torch.float32, device=dev)[:, None],
                "new_episode": torch.as_tensor(np.asarray(new_episode), dtype=torch.bool, device=dev)[:, None]}
        token = self.model.embed(step)[:, 0]
        full = torch.nonzero(self.length == self.context).flatten()
        if len(full):
            self.window[full, :self.keep] = self.window[full, self.context - self.keep:].clone()
            for v in (self.inputs or {}).values():
                v[full, :self.keep] = v[full, self.context - self.keep:].clone()
            self.length[full] = self.keep
            self.state[:, full] = 0.0
            if self.keep:
                _, self.state[:, full] = self.model.gru(self.window[full, :self.keep])
        rows = torch.arange(self.n, device=dev)
        self.window[rows, self.length] = token
        if self.inputs is not None:
            for k, v in step.items():
                if k not in self.inputs:
                    self.inputs[k] = torch.zeros((self.n, self.context, *v.shape[2:]), dtype=v.dtype, device=dev)
                self.inputs[k][rows, self.length] = v[:, 0]
        self.length += 1
        out, self.state = self.model.gru(token[:, None], self.state)
        self.last_logits = self.model.head(out[:, 0]).float().cpu()
        return choose(self.last_logits, self.greedy, self.gen, self.legal)
