"""Pieces the imitators share: the observation encoders and the step-token embedding."""
from __future__ import annotations

import torch
import torch.nn as nn

# (out_channels, kernel, stride) per conv layer; same shapes as the teachers' encoders.
CNN_LAYERS = {
    "nature": [(32, 8, 4), (64, 4, 2), (64, 3, 1)],
    "small": [(16, 8, 4), (32, 4, 2), (32, 3, 2)],
}
ENCODERS = (*CNN_LAYERS, "grid")


class FrameEncoder(nn.Module):
    """(N, 84, 84, stack) uint8 frames -> (N, out) features.
    "nature"/"small": a CNN (Mnih et al. 2015 shapes, or a lighter one).
    "grid": for Dark Room frames (envs.darkroom), where a 9x9 grid cell lights a 9x9 pixel
    block: the lit cell's coordinates are read directly (grid_coordinates), then one layer."""

    def __init__(self, kind: str, stack: int, out: int):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"encoder {kind!r}; valid: {', '.join(ENCODERS)}")
        self.kind = kind
        if kind == "grid":
            self.net = nn.Sequential(nn.Linear(2, out), nn.ReLU())
            return
        layers, channels = [], stack
        for c, kernel, stride in CNN_LAYERS[kind]:
            layers += [nn.Conv2d(channels, c, kernel, stride), nn.ReLU()]
            channels = c
        conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = conv(torch.zeros(1, stack, 84, 84)).shape[1]
        self.net = nn.Sequential(conv, nn.Linear(flat, out), nn.ReLU())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if self.kind == "grid":
            return self.net(grid_coordinates(frames))
        x = frames.permute(0, 3, 1, 2).float()
        if frames.dtype == torch.uint8:
            x = x / 255.0
        return self.net(x)


def grid_coordinates(frames: torch.Tensor) -> torch.Tensor:
    """(N, 84, 84, k) Dark Room frames (or their (N, 9, 9, k) block centres) -> (N, 2) the lit
    cell's x and y, each in [-1, 1] (the mean over the k frames of a stack).

    Coordinates rather than a code per cell: nothing is lost for one lit cell, and "towards
    the cell where the reward was" is then a difference of inputs, which holds as well for
    cells no training goal was on. With a code per cell a model memorises the training goals
    and ignores a reward found anywhere else. Measured on held-out goals after the same 4
    minutes of training, last 5 of 30 episodes: a frozen AD reached 20% of the optimum with a
    code per cell, 2% with a code per row and column, 76% with coordinates."""
    if frames.shape[1] != 9:
        frames = frames[:, 4:81:9, 4:81:9, :]  # the 81 block centres
    lit = frames.float().sum(-1)  # (N, 9, 9): rows are y, columns x
    lit = lit / lit.sum((1, 2), keepdim=True).clamp_min(1e-6)
    axis = torch.linspace(-1.0, 1.0, 9)
    return torch.stack([(lit.sum(1) * axis).sum(1), (lit.sum(2) * axis).sum(1)], 1)


class StepEmbedding(nn.Module):
    """One token per env step: the observation plus what came just before it (the previous
    action and reward, and whether a new episode starts here), so a causal model reading
    tokens 0..t sees o_0, a_0, r_0, ..., o_t and predicts a_t. One token per step rather than
    three keeps contexts 3x shorter for the same number of episodes."""

    def __init__(self, encoder: str, stack: int, num_actions: int, d_model: int):
        super().__init__()
        self.frames = FrameEncoder(encoder, stack, d_model)
        self.prev_action = nn.Embedding(num_actions + 1, d_model)  # last id: no action yet
        self.prev_reward = nn.Linear(1, d_model)
        self.new_episode = nn.Embedding(2, d_model)

    def forward(self, batch: dict) -> torch.Tensor:
        obs = batch["obs"]  # (B, L, 84, 84, k)
        B, L = obs.shape[:2]
        x = self.frames(obs.reshape(B * L, *obs.shape[2:])).reshape(B, L, -1)
        return (x + self.prev_action(batch["prev_action"])
                + self.prev_reward(batch["prev_reward"].unsqueeze(-1))
                + self.new_episode(batch["new_episode"].long()))


class CausalTransformer(nn.Module):
    """A GPT-style stack: pre-norm layers, causal mask, learned positions."""

    def __init__(self, d_model: int, layers: int, heads: int, context: int, dropout: float = 0.1):
        super().__init__()
        self.position = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        x = tokens + self.position(torch.arange(L, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=tokens.device)
        return self.norm(self.blocks(x, mask=mask, is_causal=True))


def masked_action_loss(logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor):
    """Cross-entropy and accuracy over the positions where mask is True."""
    logits, actions = logits[mask], actions[mask]
    loss = nn.functional.cross_entropy(logits, actions)
    accuracy = (logits.argmax(-1) == actions).float().mean()
    return loss, {"accuracy": accuracy.detach(), "targets": torch.tensor(len(actions))}


class ContextPolicy:
    """Plays N envs at once with a frozen sequence model. Each step's token is computed once
    and kept; the model reads the last `context` tokens of each env. With
    `reset_each_episode` the context is emptied at every new episode (Decision Transformer);
    without it the context runs across episodes (Algorithm Distillation), which is where
    in-context learning can happen. The weights never change."""

    def __init__(self, model: nn.Module, num_envs: int, context: int, reset_each_episode: bool,
                 greedy: bool = True, seed: int = 0):
        self.model, self.n, self.context = model, num_envs, context
        self.reset_each_episode, self.greedy = reset_each_episode, greedy
        self.gen = torch.Generator().manual_seed(seed)
        self.tokens: list[list[torch.Tensor]] = [[] for _ in range(num_envs)]

    def extras(self, prev_reward, new_episode) -> dict:
        return {}

    @torch.inference_mode()
    def act(self, obs, prev_action, prev_reward, new_episode):
        """obs (N, 84, 84, k) uint8; prev_action (N,) with num_actions meaning none yet;
        prev_reward (N,); new_episode (N,) bool -> actions (N,)."""
        step = {"obs": torch.as_tensor(obs)[:, None],
                "prev_action": torch.as_tensor(prev_action, dtype=torch.long)[:, None],
                "prev_reward": torch.as_tensor(prev_reward, dtype=torch.float32)[:, None],
                "new_episode": torch.as_tensor(new_episode, dtype=torch.bool)[:, None],
                **{k: torch.as_tensor(v)[:, None] for k, v in self.extras(prev_reward, new_episode).items()}}
        token = self.model.tokens(step)[:, 0]
        for i in range(self.n):
            if self.reset_each_episode and new_episode[i]:
                self.tokens[i] = []
            self.tokens[i] = (self.tokens[i] + [token[i]])[-self.context:]
        lengths = torch.tensor([len(t) for t in self.tokens])
        padded = torch.zeros(self.n, int(lengths.max()), token.shape[-1])
        for i, t in enumerate(self.tokens):
            padded[i, :len(t)] = torch.stack(t)  # right padding: causal attention ignores it
        logits = self.model.head_of(padded)[torch.arange(self.n), lengths - 1]
        if self.greedy:
            return logits.argmax(-1).numpy()
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.gen).squeeze(-1).numpy()
