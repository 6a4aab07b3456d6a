"""Decision Transformer (Chen et al. 2021): return-conditioned behaviour cloning with a causal
transformer over one episode. Each step's token holds the frame stack, the return still to
come (as recorded in the teacher's episode), the timestep, and the previous action and reward;
the model predicts the action the teacher took. At play time it is given a target return and
conditions on it, decreasing it by the rewards it receives. Its context never spans more than
one episode, so it cannot carry experience from one episode to the next.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from understudy.algorithms.encoders import EncoderName
from understudy.algorithms.imitators import Imitator, Positive, PositiveFloat, Rate, register
from understudy.algorithms.nets import CausalTransformer, ContextPolicy, StepEmbedding, masked_action_loss
from understudy.histories.data import SampleSpec


class DecisionTransformer(nn.Module):
    def __init__(self, num_actions: int, cnn: EncoderName = "small", stack: Positive = 4, context: Positive = 32,
                 d_model: Positive = 128, layers: Positive = 2, heads: Positive = 4, max_timestep: Positive = 4096,
                 rtg_scale: PositiveFloat = 100.0, dropout: Rate = 0.1, attention_dropout: Rate = 0.0):
        super().__init__()
        self.embed = StepEmbedding(cnn, stack, num_actions, d_model)
        self.rtg = nn.Linear(1, d_model)
        self.timestep = nn.Embedding(max_timestep, d_model)
        self.transformer = CausalTransformer(d_model, layers, heads, context, dropout, attention_dropout)
        self.head = nn.Linear(d_model, num_actions)
        self.spec = {"algorithm": "dt", "num_actions": num_actions, "cnn": cnn, "stack": stack,
                     "context": context, "d_model": d_model, "layers": layers, "heads": heads,
                     "max_timestep": max_timestep, "rtg_scale": rtg_scale, "dropout": dropout,
                     "attention_dropout": attention_dropout}

    def sample_spec(self) -> SampleSpec:
        return SampleSpec("episode", self.spec["context"], self.spec["stack"], self.spec["max_timestep"])

    def tokens(self, batch: dict) -> torch.Tensor:
        return (self.embed(batch)
                + self.rtg(batch["rtg"].float().unsqueeze(-1) / self.spec["rtg_scale"])
                + self.timestep(batch["timestep"].long()))

    def head_of(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(tokens))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head_of(self.tokens(batch))

    def loss(self, batch: dict):
        return masked_action_loss(self(batch), batch["action"], batch["mask"])


class Policy(ContextPolicy):
    """Asks for `target_return` at the start of every episode; the context resets each episode."""

    def __init__(self, model: DecisionTransformer, num_envs: int, target_return: float | None,
                 greedy: bool = True, seed: int = 0, cache: bool = True, **play):
        if target_return is None:
            raise ValueError("a Decision Transformer needs target_return to play")
        super().__init__(model, num_envs, model.spec["context"], True, greedy, seed, cache=cache, **play)
        self.target = float(target_return)
        self.rtg = np.full(num_envs, self.target, np.float32)
        self.t = np.zeros(num_envs, np.int64)

    def extras(self, prev_reward, new_episode) -> dict:
        new = np.asarray(new_episode, bool)
        self.rtg = np.where(new, self.target, self.rtg - np.asarray(prev_reward, np.float32))
        self.t = np.where(new, 0, self.t + 1)
        return {"rtg": self.rtg.astype(np.float32),
                "timestep": np.minimum(self.t, self.model.spec["max_timestep"] - 1)}


register("dt", Imitator(DecisionTransformer, Policy,
                        description="Decision Transformer: return-conditioned, its context within one episode"))
