"""Policy-gradient fine-tuning: the baseline that updates a trained imitator's weights on a new
game or task by reward, while it plays. The frozen imitator can only adapt in context; this one
also learns by gradient descent on its own returns, so it answers "would ordinary learning,
starting from the imitator, have done better than its context?".

Method (REINFORCE with a baseline, on the imitator's own policy and context). Every copy plays
one task (a Dark Room goal, or a game), so each copy keeps its own stream of steps, exactly as
the model saw them. When a copy finishes an episode with return R, and it has finished at least
one before, its advantage is

    A = clip((R - mean of its earlier returns) / (their std + 1), -clip, +clip)

and `updates` Adam steps are taken on

    loss = -A * mean over the episode's steps t of log pi(a_t | the copy's previous steps)

with the window of the model's context that ends at the episode's last step (steps before the
episode are context only; windows never mix copies). Then the player's context is re-read with
the new weights (it keeps its steps). Unlike imitating its own better episodes (the method
before 2026-12-02, which pooled all copies' episodes into one history and turned AD into an
expert-only imitator that could no longer learn in context), every episode counts, the worse
ones pushed away from, and the training signal is the return the task pays.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from understudy.algorithms import imitation
from understudy.histories.data import History, make_batch


class PolicyGradientFinetune:
    def __init__(self, model, player, num_envs: int, lr: float, updates: int, advantage_clip: float,
                 newest_frame=lambda obs: obs[..., -1]):
        """`newest_frame`: the frame of an observation that a history keeps (the game's
        family's: the newest of a stack, or MinAtar's whole observation)."""
        self.model, self.player, self.updates, self.advantage_clip = model, player, updates, advantage_clip
        self.newest_frame = newest_frame
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.steps = [[] for _ in range(num_envs)]  # per copy: (frame, action, reward, new_episode)
        self.returns: list[list[float]] = [[] for _ in range(num_envs)]
        self.episode_start = [0] * num_envs  # index in steps[i] of the open episode's first step
        self.steps_trained = 0
        self.advantages: list[float] = []
        if hasattr(player, "remember_inputs"):
            player.remember_inputs()  # so its context survives the weight updates

    def on_step(self, obs, actions, rewards, done):
        """Called by the player loop after every env step, with the observation acted on, the
        action and reward as the model sees them."""
        for i in range(len(actions)):
            self.steps[i].append((np.array(self.newest_frame(obs[i])), int(actions[i]), float(rewards[i])))
            if not done[i]:
                continue
            episode = self.steps[i][self.episode_start[i]:]
            ret = sum(r for _, _, r in episode)
            prior = np.array(self.returns[i])
            self.returns[i].append(ret)
            if prior.size:
                adv = float(np.clip((ret - prior.mean()) / (prior.std() + 1.0),
                                    -self.advantage_clip, self.advantage_clip))
                if adv != 0.0:
                    self._update(i, adv)
            # keep only what the next episode's windows can see as context
            keep = self.model.spec["context"]
            self.steps[i] = self.steps[i][-keep:]
            self.episode_start[i] = len(self.steps[i])

    def _window(self, i: int, advantage: float) -> dict:
        steps = self.steps[i]
        n, first = len(steps), self.episode_start[i]
        new_episode = np.zeros(n, bool)
        new_episode[first] = True
        # episode ids: the open episode is the last; earlier steps form one earlier episode
        # block each (their own starts are not needed: only the last episode is scored)
        episode_id = (np.arange(n) >= first).astype(np.int64)
        episode_start = np.where(episode_id == 1, first, 0)
        h = History(frames=np.stack([f for f, _, _ in steps]),
                    actions=np.array([a for _, a, _ in steps], np.int64),
                    rewards=np.array([r for _, _, r in steps], np.float32),
                    episode_start=episode_start, episode_id=episode_id,
                    target=np.arange(n) >= first, history_start=np.zeros(n, np.int64),
                    policy_version=np.zeros(n, np.int64))
        spec = self.model.sample_spec()
        length = min(spec.length, n)
        if spec.kind == "episode":  # DT: windows inside the episode, from its start
            starts = np.arange(first, n, length)
        else:  # AD: the windows that end at the episode's last step, back to its first
            starts = np.maximum(np.arange(n - length, first - length, -length), 0)
        spec = replace(spec, length=length)
        rtg = h.returns_to_go() if spec.kind == "episode" else None
        batch = make_batch(h, starts, spec, self.model.spec["num_actions"], rtg)
        batch["advantage"] = np.full(batch["mask"].shape, advantage, np.float32)
        return batch

    def _update(self, i: int, advantage: float):
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in imitation.to_torch(self._window(i, advantage)).items()}
        self.model.train()
        for _ in range(self.updates):
            logits = self.model(batch)
            mask = batch["mask"]
            logp = torch.log_softmax(logits[mask], -1).gather(-1, batch["action"][mask][:, None])[:, 0]
            loss = -(batch["advantage"][mask] * logp).mean()
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)  # as in training
            self.optimizer.step()
            self.steps_trained += 1
        self.model.eval()
        self.advantages.append(advantage)
        if hasattr(self.player, "refresh"):
            self.player.refresh()  # the context, re-read with the new weights
