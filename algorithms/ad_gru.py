"""Recurrent Algorithm Distillation: AD with a GRU in place of the transformer, trained on the
same cross-episode windows of a learning history, each read from a zero state. It plays the
way it was trained: its state runs across episodes, but only over a window of at most `context`
steps read from a zero state (the windows advance as the transformer's do, nets.ContextPolicy),
so it is never asked to act from a state longer than any it was trained on.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from understudy.algorithms.encoders import EncoderName
from understudy.algorithms.imitators import Imitator, Positive, register
from understudy.algorithms.nets import StepEmbedding, StepWindow, choose, masked_action_loss, step_inputs
from understudy.histories.data import SampleSpec


class RecurrentAD(nn.Module):
    def __init__(self, num_actions: int, cnn: EncoderName = "small", stack: Positive = 1, context: Positive = 256,
                 d_model: Positive = 128, layers: Positive = 1):
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
        self.gen = torch.Generator().manual_seed(seed)
        self.legal: torch.Tensor | None = None  # set by a caller whose game has fewer actions
        self.device = next(model.parameters()).device
        self.steps = StepWindow(num_envs, model.spec["context"], model.spec["d_model"], keep, self.device)
        self.state = torch.zeros(model.spec["layers"], num_envs, model.spec["d_model"], device=self.device)

    @property
    def length(self) -> torch.Tensor:
        return self.steps.length

    def forget(self) -> None:
        self.steps.length.zero_()
        self.state.zero_()

    def remember_inputs(self) -> None:
        """Keep each window's step inputs, so `refresh` can read them again with new weights."""
        self.steps.remember_inputs()

    def _read(self, rows: torch.Tensor, n: int) -> None:
        """The state of rows whose windows hold `n` steps, read from zero over them."""
        self.state[:, rows] = 0.0
        if n:
            _, self.state[:, rows] = self.model.gru(self.steps.tokens[rows, :n])

    @torch.inference_mode()
    def refresh(self) -> None:
        """After the weights changed: tokens and state read again over each window."""
        if not self.steps.inputs:
            self.forget()
            return
        self.steps.tokens.copy_(self.model.embed(self.steps.inputs))
        for n, rows in self.steps.groups():
            self._read(rows, n)

    @torch.inference_mode()
    def act(self, obs, prev_action, prev_reward, new_episode):
        step = step_inputs(obs, prev_action, prev_reward, new_episode, self.device)
        token = self.model.embed(step)[:, 0]
        full = self.steps.advance_full()
        if len(full):
            self._read(full, self.steps.keep)
        self.steps.append(token, step)
        out, self.state = self.model.gru(token[:, None], self.state)
        self.last_logits = self.model.head(out[:, 0]).float().cpu()
        return choose(self.last_logits, self.greedy, self.gen, self.legal)


register("ad_gru", Imitator(RecurrentAD, Policy, cross_episode=True,
                            description="recurrent AD: the same tokens through a GRU whose state runs across episodes"))
