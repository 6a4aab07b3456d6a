"""Pieces the imitators share: the observation encoders and the step-token embedding."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from understudy.algorithms.encoders import ENCODERS


class FrameEncoder(nn.Module):
    """(N, 84, 84, stack) uint8 frames -> (N, out) features.
    "nature"/"small": a CNN (Mnih et al. 2015 shapes, or a lighter one).
    "minatar": (N, 10, 10, 10) MinAtar observations (stack 1: the observation is one frame),
    one 3x3 conv of 16 as in Young & Tian (2019).
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
        encoder = ENCODERS[kind]
        height, width, per_frame = encoder.frame
        if encoder.one_frame and stack != 1:
            raise ValueError(f"stack: {stack}; the {kind} encoder reads one whole observation, valid: 1")
        layers, channels = [], stack * per_frame
        for c, kernel, stride in encoder.convs:
            layers += [nn.Conv2d(channels, c, kernel, stride), nn.ReLU()]
            channels = c
        conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = conv(torch.zeros(1, stack * per_frame, height, width)).shape[1]
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
    """A GPT-style stack: pre-norm layers, causal mask, learned positions.

    `forward` reads whole sequences (training, and the reference player). `prefill` and
    `extend` are the same computation one step at a time with a key/value cache (KVCache).
    All three run the layers' own parameters through one fused attention call
    (scaled_dot_product_attention), so a trained checkpoint plays either way.

    `dropout` acts on the residual and feed-forward paths; `attention_dropout` on the
    attention weights. The latter is off by default: the CPU's fused causal kernel takes no
    dropout, and with it attention falls back to the unfused computation, about 3.5x slower
    per layer (MinAtar AD, context 512, measured 2026-12-07; docs/benchmarks.md)."""

    def __init__(self, d_model: int, layers: int, heads: int, context: int, dropout: float,
                 attention_dropout: float):
        super().__init__()
        self.position = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        layer.self_attn.dropout = attention_dropout
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        x = tokens + self.position(torch.arange(L, device=tokens.device))
        for layer in self.blocks.layers:
            p = layer.self_attn.dropout if self.training else 0.0
            attended = F.scaled_dot_product_attention(*_heads(layer, x), is_causal=True, dropout_p=p)
            x = _block_rest(layer, x, attended)
        return self.norm(x)

    def new_cache(self, batch: int, device=None, dtype=torch.float32) -> "KVCache":
        first = self.blocks.layers[0].self_attn
        shape = (len(self.blocks.layers), batch, first.num_heads, self.position.num_embeddings, first.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def prefill(self, tokens: torch.Tensor, cache: "KVCache", rows: torch.Tensor) -> None:
        """Fill cache rows `rows` with the keys and values of `tokens` (len(rows), L, d) at
        positions 0..L-1 (a window's first L tokens). Nothing is returned: the next `extend`
        reads them."""
        L = tokens.shape[1]
        if L == 0:
            return
        x = tokens + self.position(torch.arange(L, device=tokens.device))
        for i, layer in enumerate(self.blocks.layers):
            q, k, v = _heads(layer, x)
            cache.k[i, rows, :, :L], cache.v[i, rows, :, :L] = k, v
            x = _block_rest(layer, x, F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def extend(self, token: torch.Tensor, cache: "KVCache", position: torch.Tensor) -> torch.Tensor:
        """One new token per row, (N, d), at `position` (N,) of its row's window, attending to
        the cached positions before it: (N, d) outputs, and its keys and values cached."""
        N, span = token.shape[0], int(position.max()) + 1
        rows = torch.arange(N, device=token.device)
        x = (token + self.position(position))[:, None]  # (N, 1, d)
        visible = (torch.arange(span, device=token.device)[None] <= position[:, None])[:, None, None]
        for i, layer in enumerate(self.blocks.layers):
            q, k, v = _heads(layer, x)
            cache.k[i, rows, :, position], cache.v[i, rows, :, position] = k[:, :, 0], v[:, :, 0]
            attended = F.scaled_dot_product_attention(q, cache.k[i, :, :, :span], cache.v[i, :, :, :span],
                                                      attn_mask=visible)
            x = _block_rest(layer, x, attended)
        return self.norm(x[:, 0])


@dataclass
class KVCache:
    """Per layer, the keys and values of every position of every row's window:
    k, v (layers, N, heads, context, head_dim)."""
    k: torch.Tensor
    v: torch.Tensor

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def _heads(layer: nn.TransformerEncoderLayer, x: torch.Tensor):
    """Queries, keys and values of a pre-norm layer's attention: each (B, heads, L, head_dim)."""
    attn = layer.self_attn
    B, L, _ = x.shape
    qkv = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
    return qkv.view(B, L, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def _block_rest(layer: nn.TransformerEncoderLayer, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The rest of a pre-norm layer after attention; its dropouts (the layer's own rates) act
    only in training mode."""
    B, L = x.shape[:2]
    train = layer.training
    x = x + dropout(layer.self_attn.out_proj(attended.transpose(1, 2).reshape(B, L, -1)), layer.dropout1.p, train)
    hidden = dropout(layer.activation(layer.linear1(layer.norm2(x))), layer.dropout.p, train)
    return x + dropout(layer.linear2(hidden), layer.dropout2.p, train)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, as F.dropout: each element kept with probability 1 - p and scaled by
    1 / (1 - p). The mask comes from float32 uniforms (torch.rand) because the CPU's bernoulli_
    samples 2.5x slower (1M elements: 7.7 against 3.0 ms, measured 2026-12-07); it was 17% of
    the MinAtar AD update (docs/benchmarks.md)."""
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape, device=x.device) >= p
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


def choose(logits: torch.Tensor, greedy: bool, gen: torch.Generator, legal: torch.Tensor | None = None):
    """Actions from (N, A) logits: the argmax, or a sample; only among `legal` actions (a bool
    (A,) or (N, A) mask) when the model's action space is larger than the game's."""
    logits = logits.float().cpu()
    if legal is not None:
        logits = logits.masked_fill(~legal, float("-inf"))
    if greedy:
        return logits.argmax(-1).numpy()
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1).numpy()


def masked_action_loss(logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor):
    """Cross-entropy and accuracy over the positions where mask is True."""
    logits, actions = logits[mask], actions[mask]
    loss = nn.functional.cross_entropy(logits, actions)
    accuracy = (logits.argmax(-1) == actions).float().mean()
    return loss, {"accuracy": accuracy.detach(), "targets": torch.tensor(len(actions))}


def step_inputs(obs, prev_action, prev_reward, new_episode, device, **extra) -> dict:
    """One step of N envs as a (N, 1, ...) batch of the model's inputs, on `device`."""
    return {"obs": torch.as_tensor(obs, device=device)[:, None],
            "prev_action": torch.as_tensor(np.asarray(prev_action), dtype=torch.long, device=device)[:, None],
            "prev_reward": torch.as_tensor(np.asarray(prev_reward), dtype=torch.float32, device=device)[:, None],
            "new_episode": torch.as_tensor(np.asarray(new_episode), dtype=torch.bool, device=device)[:, None],
            **{k: torch.as_tensor(v, device=device)[:, None] for k, v in extra.items()}}


class StepWindow:
    """Each env's window of recent step tokens at positions 0..n-1, and where episodes start in
    it; with `remember_inputs()` also the steps' inputs, so the tokens can be recomputed after
    the weights change. When a window is full it advances: its newest `keep` steps move to the
    front (the players of AD, DT and recurrent AD share this)."""

    def __init__(self, num_envs: int, context: int, d_model: int, keep: int | None, device):
        self.n, self.context, self.device = num_envs, context, device
        self.keep = context * 3 // 4 if keep is None else keep
        if not 0 <= self.keep < context:
            raise ValueError(f"keep={self.keep}: must be at least 0 and below the context ({context})")
        self.tokens = torch.zeros(num_envs, context, d_model, device=device)
        self.length = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.starts = torch.zeros(num_envs, context, dtype=torch.bool, device=device)
        self.inputs: dict | None = None

    def remember_inputs(self) -> None:
        self.inputs = self.inputs if self.inputs is not None else {}

    def advance_full(self) -> torch.Tensor:
        """Advance every full window; the rows that advanced (now `keep` long)."""
        full = torch.nonzero(self.length == self.context).flatten()
        if len(full):
            cut = self.context - self.keep
            for v in (self.tokens, self.starts, *(self.inputs or {}).values()):
                v[full, :self.keep] = v[full, cut:].clone()
            self.length[full] = self.keep
        return full

    def append(self, token: torch.Tensor, step: dict) -> torch.Tensor:
        """Add one step per env; the position each got."""
        rows, position = torch.arange(self.n, device=self.device), self.length.clone()
        self.tokens[rows, position] = token
        self.starts[rows, position] = step["new_episode"][:, 0]
        if self.inputs is not None:
            for k, v in step.items():
                if k not in self.inputs:
                    self.inputs[k] = torch.zeros((self.n, self.context, *v.shape[2:]), dtype=v.dtype,
                                                 device=self.device)
                self.inputs[k][rows, position] = v[:, 0]
        self.length += 1
        return position

    def groups(self):
        """(length, rows) for each distinct window length (for re-reading windows in batches)."""
        for n in torch.unique(self.length).tolist():
            yield n, torch.nonzero(self.length == n).flatten()

    def episodes(self) -> list[int]:
        """Per env, how many episode starts its window holds."""
        span = torch.arange(self.context, device=self.device)[None] < self.length[:, None]
        return (self.starts & span).sum(1).tolist()


class ContextPolicy:
    """Plays N envs at once with a frozen sequence model; the weights never change.

    Each step's token is computed once. Each env has a window of tokens at positions
    0..n-1 that the model reads; with `reset_each_episode` a new episode starts a new window
    (Decision Transformer), without it the window runs across episodes (Algorithm
    Distillation), which is where in-context learning can happen. When a window holds
    `context` tokens it advances: it keeps its newest `keep` tokens (default three quarters of
    the context) at positions 0..keep-1 and grows again. So every action is chosen from between
    `keep` and `context` - 1 earlier steps at the positions a training window gives them, and
    with the key/value cache (`cache=True`) a step costs O(context), plus one re-read of `keep`
    tokens each `context - keep` steps. `cache=False` recomputes the model's own forward pass
    over the whole window every step: the reference the cache is tested against, and the
    baseline of bench/eval.py."""

    def __init__(self, model: nn.Module, num_envs: int, context: int, reset_each_episode: bool,
                 greedy: bool = True, seed: int = 0, keep: int | None = None, cache: bool = True,
                 device: str | torch.device | None = None):
        self.model, self.n, self.context = model, num_envs, context
        self.reset_each_episode, self.greedy = reset_each_episode, greedy
        self.legal: torch.Tensor | None = None  # set by a caller whose game has fewer actions
        self.device = torch.device(device or next(model.parameters()).device)
        self.gen = torch.Generator().manual_seed(seed)
        self.steps = StepWindow(num_envs, context, model.transformer.position.embedding_dim, keep, self.device)
        self.cache = model.transformer.new_cache(num_envs, self.device) if cache else None

    @property
    def keep(self) -> int:
        return self.steps.keep

    @property
    def length(self) -> torch.Tensor:
        return self.steps.length

    @property
    def window(self) -> torch.Tensor:
        return self.steps.tokens

    @property
    def starts(self) -> torch.Tensor:
        return self.steps.starts

    def extras(self, prev_reward, new_episode) -> dict:
        return {}

    def forget(self) -> None:
        """Empty every window."""
        self.steps.length.zero_()

    def remember_inputs(self) -> None:
        """Keep each window's step inputs too, so `refresh` can recompute its tokens (a learner
        that changes the weights while playing keeps its context this way)."""
        self.steps.remember_inputs()

    @torch.inference_mode()
    def refresh(self) -> None:
        """After the weights changed: every window's tokens (and cache) recomputed from its
        stored inputs with the current weights; without stored inputs the windows are emptied."""
        if not self.steps.inputs:
            self.forget()
            return
        self.steps.tokens.copy_(self.model.tokens(self.steps.inputs))
        if self.cache is not None:
            for n, rows in self.steps.groups():
                self.model.transformer.prefill(self.steps.tokens[rows, :n], self.cache, rows)

    def episodes_in_context(self) -> list[int]:
        """Per env, how many episode starts its window holds now (the episodes it can read)."""
        return self.steps.episodes()

    @torch.inference_mode()
    def act(self, obs, prev_action, prev_reward, new_episode):
        """obs (N, 84, 84, k) uint8; prev_action (N,) with num_actions meaning none yet;
        prev_reward (N,); new_episode (N,) bool -> actions (N,)."""
        if self.reset_each_episode:  # a training window never reaches back into the previous episode
            new = np.asarray(new_episode, bool)
            prev_action = np.where(new, self.model.spec["num_actions"], prev_action)
            prev_reward = np.where(new, 0.0, prev_reward)
        step = step_inputs(obs, prev_action, prev_reward, new_episode, self.device,
                           **self.extras(prev_reward, new_episode))
        token = self.model.tokens(step)[:, 0]
        if self.reset_each_episode:
            self.steps.length[step["new_episode"][:, 0]] = 0
        full = self.steps.advance_full()
        if len(full) and self.cache is not None:
            self.model.transformer.prefill(self.steps.tokens[full, :self.keep], self.cache, full)
        position = self.steps.append(token, step)
        if self.cache is not None:
            logits = self.model.head(self.model.transformer.extend(token, self.cache, position))
        else:  # right padding: causal attention never reads past a row's own length
            span = int(self.steps.length.max())
            logits = self.model.head_of(self.steps.tokens[:, :span])[torch.arange(self.n), position]
        self.last_logits = logits.float().cpu()
        return choose(self.last_logits, self.greedy, self.gen, self.legal)
