"""Behaviour cloning: the snapshot imitator. A CNN maps a frame stack to action logits and is
trained by cross-entropy on the teacher's recorded actions. Nothing in it can learn at play
time: its weights are frozen once trained.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# (out_channels, kernel, stride) per conv layer; same shapes as the teachers' encoders.
CNN_LAYERS = {
    "nature": [(32, 8, 4), (64, 4, 2), (64, 3, 1)],
    "small": [(16, 8, 4), (32, 4, 2), (32, 3, 2)],
}


class ConvPolicy(nn.Module):
    def __init__(self, num_actions: int, cnn: str = "small", stack: int = 4, hidden: int = 256):
        super().__init__()
        layers, channels = [], stack
        for out, kernel, stride in CNN_LAYERS[cnn]:
            layers += [nn.Conv2d(channels, out, kernel, stride), nn.ReLU()]
            channels = out
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.encoder(torch.zeros(1, stack, 84, 84)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))
        self.spec = {"num_actions": num_actions, "cnn": cnn, "stack": stack, "hidden": hidden}

    def forward(self, stacks: torch.Tensor) -> torch.Tensor:
        """stacks: (B, 84, 84, stack), uint8 pixels or floats in [0, 1] -> logits (B, A)."""
        x = stacks.permute(0, 3, 1, 2).float()
        if stacks.dtype == torch.uint8:
            x = x / 255.0
        return self.head(self.encoder(x))


def bc_loss(model: ConvPolicy, stacks: torch.Tensor, actions: torch.Tensor):
    logits = model(stacks)
    loss = F.cross_entropy(logits, actions)
    accuracy = (logits.argmax(-1) == actions).float().mean()
    return loss, accuracy


def train_epoch(model, optimizer, history, rows: np.ndarray, batch_size: int, rng) -> float:
    """One pass over `rows` of a data.History in random order; returns the mean loss."""
    model.train()
    order = rng.permutation(rows)
    losses = []
    for i in range(0, len(order), batch_size):
        batch = order[i:i + batch_size]
        stacks = torch.from_numpy(history.stacks(batch))
        actions = torch.from_numpy(history.actions[batch])
        loss, _ = bc_loss(model, stacks, actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def evaluate_rows(model, history, rows: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
    """(mean loss, action accuracy) on `rows`, e.g. held-out episodes."""
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        logits = model(torch.from_numpy(history.stacks(batch)))
        actions = torch.from_numpy(history.actions[batch])
        total_loss += F.cross_entropy(logits, actions, reduction="sum").item()
        correct += (logits.argmax(-1) == actions).sum().item()
    return total_loss / max(len(rows), 1), correct / max(len(rows), 1)


def save(model: ConvPolicy, directory: str, extra: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump({"algorithm": "bc", **model.spec, **extra}, f, indent=2)


def load(directory: str) -> tuple[ConvPolicy, dict]:
    """Loads weights only: a checkpoint cannot execute code."""
    with open(os.path.join(directory, "model.json")) as f:
        meta = json.load(f)
    if meta.get("algorithm") != "bc":
        raise ValueError(f"{directory}: checkpoint is for algorithm {meta.get('algorithm')!r}, not 'bc'")
    model = ConvPolicy(meta["num_actions"], meta["cnn"], meta["stack"], meta["hidden"])
    state = torch.load(os.path.join(directory, "model.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta


def policy(model: ConvPolicy, greedy: bool = True, seed: int = 0):
    """obs batch (N, 84, 84, 4) in [0, 1] -> actions."""
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        logits = model(torch.as_tensor(obs))
        if greedy:
            return logits.argmax(-1).numpy()
        return torch.multinomial(F.softmax(logits, -1), 1, generator=gen).squeeze(-1).numpy()

    return act
