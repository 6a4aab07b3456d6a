"""Algorithm Distillation (Laskin et al. 2022): a causal transformer trained to predict the
teacher's next action from a context that spans several consecutive episodes of the teacher's
learning history, in training order, with no return conditioning. Because later episodes in
the context are better than earlier ones, the model can only predict well by modelling how the
teacher's behaviour improves from episode to episode; frozen, it may then improve in-context
by reading its own past episodes. The observation encoder (a CNN) is shared by every step.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn as nn
from annotated_types import Ge

from understudy.algorithms.encoders import EncoderName
from understudy.algorithms.imitators import Imitator, Positive, PositiveFloat, Rate, register
from understudy.algorithms.nets import CausalTransformer, ContextPolicy, StepEmbedding, masked_action_loss
from understudy.histories.data import SampleSpec


class AlgorithmDistillation(nn.Module):
    def __init__(self, num_actions: int, cnn: EncoderName = "small", stack: Positive = 1, context: Positive = 256,
                 d_model: Positive = 128, layers: Positive = 4, heads: Positive = 4, dropout: Rate = 0.1,
                 attention_dropout: Rate = 0.0, episode_start_steps: Annotated[int, Ge(0)] = 0,
                 episode_start_weight: PositiveFloat = 1.0):
        """episode_start_steps, episode_start_weight: the loss of each episode's first steps
        counts this many times. Where a source's actions within an episode follow from its
        first moves, only those first moves depend on earlier episodes' rewards; weighting them
        makes reading rewards across episodes a large part of the loss. Play is unchanged."""
        super().__init__()
        self.embed = StepEmbedding(cnn, stack, num_actions, d_model)
        self.transformer = CausalTransformer(d_model, layers, heads, context, dropout, attention_dropout)
        self.head = nn.Linear(d_model, num_actions)
        self.spec = {"algorithm": "ad", "num_actions": num_actions, "cnn": cnn, "stack": stack,
                     "context": context, "d_model": d_model, "layers": layers, "heads": heads,
                     "dropout": dropout, "attention_dropout": attention_dropout,
                     "episode_start_steps": episode_start_steps, "episode_start_weight": episode_start_weight}

    def sample_spec(self) -> SampleSpec:
        return SampleSpec("history", self.spec["context"], self.spec["stack"])

    def tokens(self, batch: dict) -> torch.Tensor:
        return self.embed(batch)

    def head_of(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(tokens))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head_of(self.tokens(batch))

    def loss(self, batch: dict):
        logits = self(batch)
        if self.spec["episode_start_steps"] == 0 or self.spec["episode_start_weight"] == 1.0:
            return masked_action_loss(logits, batch["action"], batch["mask"])
        return episode_start_weighted_loss(logits, batch, self.spec["episode_start_steps"],
                                           self.spec["episode_start_weight"])


def episode_start_weighted_loss(logits: torch.Tensor, batch: dict, steps: int, weight: float):
    """Cross-entropy over the masked positions, a position in its episode's first `steps`
    steps (batch["timestep"]: the step within the episode) counting `weight` times; the mean is
    over the weights, so the loss stays on the scale of the unweighted one. Accuracy unweighted."""
    mask = batch["mask"]
    w = torch.where(batch["timestep"] < steps, weight, 1.0).to(torch.float32)[mask]
    logits, actions = logits[mask], batch["action"][mask]
    per_step = nn.functional.cross_entropy(logits.float(), actions, reduction="none")
    loss = (per_step * w).sum() / w.sum()
    accuracy = (logits.argmax(-1) == actions).float().mean()
    return loss, {"accuracy": accuracy.detach(), "targets": torch.tensor(len(actions))}


class Policy(ContextPolicy):
    """The context runs across episodes: the agent reads its own most recent steps, whichever
    episodes they belong to (how the window advances: nets.ContextPolicy)."""

    def __init__(self, model: AlgorithmDistillation, num_envs: int, greedy: bool = False, seed: int = 0,
                 cache: bool = True, **play):
        super().__init__(model, num_envs, model.spec["context"], False, greedy, seed, cache=cache, **play)


register("ad", Imitator(AlgorithmDistillation, Policy, cross_episode=True,
                        description="Algorithm Distillation: a causal transformer across episodes of a history"))
