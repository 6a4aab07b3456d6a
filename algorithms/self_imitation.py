"""Self-imitation fine-tuning: the baseline that updates a trained imitator's weights on a new
game. The frozen imitator can only adapt in context; this one learns by gradient descent on its
own experience, so it answers "would ordinary learning have done better than the context?".

Every finished episode whose return is above the median of its earlier episodes joins a
buffer (kept in the order played), and `updates` steps of the model's own imitation loss are
taken on windows of that buffer after each one. The weights really change; the player keeps its
context across an update, its tokens recomputed with the new weights (emptied at every update,
as it once was, a fine-tuned AD could never learn in context and fell below random play).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from understudy.algorithms import imitation
from understudy.histories.data import History, make_batch


class SelfImitation:
    def __init__(self, model, player, num_envs: int, lr: float, updates: int, batch_size: int,
                 buffer_episodes: int, seed: int, newest_frame=lambda obs: obs[..., -1]):
        """`newest_frame`: the frame of an observation that a history keeps (the game's
        family's: the newest of a stack, or MinAtar's whole observation)."""
        self.model, self.player, self.updates, self.batch_size = model, player, updates, batch_size
        self.newest_frame = newest_frame
        self.buffer_episodes = buffer_episodes
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.open = [[] for _ in range(num_envs)]
        self.buffer: list[dict] = []
        self.returns: list[float] = []
        self.rng = np.random.default_rng(seed)
        self.steps_trained = 0
        if hasattr(player, "remember_inputs"):
            player.remember_inputs()  # so its context survives the weight updates

    def on_step(self, obs, actions, rewards, done):
        """Called by the player loop after every env step, with the observation acted on."""
        for i in range(len(actions)):
            self.open[i].append((np.array(self.newest_frame(obs[i])), int(actions[i]), float(rewards[i])))
            if done[i]:
                episode, self.open[i] = self.open[i], []
                ret = sum(r for _, _, r in episode)
                better = bool(self.returns) and ret > np.median(self.returns)
                self.returns.append(ret)
                if better:  # only episodes above its usual level: never imitate its own worst play
                    self.buffer = (self.buffer + [{"frames": np.stack([f for f, _, _ in episode]),
                                                   "actions": np.array([a for _, a, _ in episode]),
                                                   "rewards": np.array([r for _, _, r in episode], np.float32)}]
                                   )[-self.buffer_episodes:]
                    self._update()

    def _update(self):
        steps = np.array([len(e["actions"]) for e in self.buffer])
        episode_id = np.repeat(np.arange(len(steps)), steps)
        starts = np.r_[0, np.cumsum(steps)[:-1]]
        h = History(frames=np.concatenate([e["frames"] for e in self.buffer]),
                    actions=np.concatenate([e["actions"] for e in self.buffer]).astype(np.int64),
                    rewards=np.concatenate([e["rewards"] for e in self.buffer]),
                    episode_start=starts[episode_id], episode_id=episode_id,
                    target=np.ones(len(episode_id), bool), history_start=np.zeros(len(episode_id), np.int64),
                    policy_version=np.zeros(len(episode_id), np.int64))
        spec = self.model.sample_spec()
        if spec.kind != "step":  # windows no longer than the buffer: the rest would be padding
            spec = replace(spec, length=min(spec.length, len(h)))
        rtg = h.returns_to_go() if spec.kind == "episode" else None
        device = next(self.model.parameters()).device
        self.model.train()
        for _ in range(self.updates):
            high = len(h) if spec.kind == "step" else max(1, len(h) - spec.length + 1)
            rows = self.rng.integers(0, high, size=self.batch_size)
            batch = imitation.to_torch(make_batch(h, rows, spec, self.model.spec["num_actions"], rtg))
            loss, _ = self.model.loss({k: v.to(device) for k, v in batch.items()})
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.steps_trained += 1
        self.model.eval()
        if hasattr(self.player, "refresh"):
            self.player.refresh()  # the context, re-read with the new weights
