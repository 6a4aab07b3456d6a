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

with the windows of the model's context that end at the episode's last step (steps before the
episode are context only, each step scored once; windows never mix copies; every step keeps
the episode boundaries play gave it). AD and recurrent AD only: the in-context learners whose
context runs across episodes, as each copy's stream does; evaluate refuses `finetune` for BC
and DT. Then the player's context is re-read with
the new weights (it keeps its steps). Unlike imitating its own better episodes (the method
before 2026-12-02, which pooled all copies' episodes into one history and turned AD into an
expert-only imitator that could no longer learn in context), every episode counts, the worse
ones pushed away from, and the training signal is the return the task pays.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from understudy.algorithms import imitation, imitators
from understudy.histories.data import History, make_batch

WINDOWS_PER_PASS = 4  # windows per forward/backward pass; gradients accumulate over passes


class PolicyGradientFinetune:
    def __init__(self, model, player, num_envs: int, lr: float, updates: int, advantage_clip: float,
                 newest_frame=lambda obs: obs[..., -1]):
        """`newest_frame`: the frame of an observation that a history keeps (the game's
        family's: the newest of a stack, or MinAtar's whole observation). AD and recurrent AD
        only: their context runs across episodes, as the copy's stream here does."""
        if not imitators.get(model.spec["algorithm"]).cross_episode:
            raise ValueError(f"fine-tuning by policy gradient needs a cross-episode imitator "
                             f"({', '.join(imitators.cross_episode())}); this one is {model.spec['algorithm']!r}")
        self.model, self.player, self.updates, self.advantage_clip = model, player, updates, advantage_clip
        self.newest_frame = newest_frame
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        # per copy, every step as the model saw it: (frame, action, reward, step in its episode)
        self.steps = [[] for _ in range(num_envs)]
        self.in_episode = np.zeros(num_envs, int)  # the open episode's steps so far
        self.returns: list[list[float]] = [[] for _ in range(num_envs)]
        self.steps_trained = 0
        self.advantages: list[float] = []
        if hasattr(player, "remember_inputs"):
            player.remember_inputs()  # so its context survives the weight updates

    def on_step(self, obs, actions, rewards, done, active=None):
        """Called by the player loop after every env step, with the observation acted on, the
        action and reward as the model sees them; `active`: the copies still within their
        env-step budget (the others' steps are not learned from)."""
        for i in range(len(actions)):
            if active is not None and not active[i]:
                continue
            self.steps[i].append((np.array(self.newest_frame(obs[i])), int(actions[i]), float(rewards[i]),
                                  int(self.in_episode[i])))
            self.in_episode[i] += 1
            if not done[i]:
                continue
            length, self.in_episode[i] = int(self.in_episode[i]), 0
            ret = sum(r for _, _, r, _ in self.steps[i][-length:])
            prior = np.array(self.returns[i])
            self.returns[i].append(ret)
            if prior.size:
                adv = float(np.clip((ret - prior.mean()) / (prior.std() + 1.0),
                                    -self.advantage_clip, self.advantage_clip))
                if adv != 0.0:
                    self._update(i, length, adv)
            # Keep what the next episode's windows can see as context, from the start of an
            # episode, so every kept step's episode start is kept too (as play saw them).
            n, context = len(self.steps[i]), self.model.spec["context"]
            if n > context:
                j = n - context
                self.steps[i] = self.steps[i][j - self.steps[i][j][3]:]

    def _window(self, i: int, length: int, advantage: float) -> dict:
        """The windows of the model's context that end at the finished episode's last step and
        cover it; each of its steps is scored once (an earlier window's rows that a later one
        covers are context only there)."""
        steps = self.steps[i]
        n = len(steps)
        first = n - length
        t = np.array([s[3] for s in steps])
        episode_start = np.arange(n) - t
        h = History(frames=np.stack([s[0] for s in steps]),
                    actions=np.array([s[1] for s in steps], np.int64),
                    rewards=np.array([s[2] for s in steps], np.float32),
                    episode_start=episode_start, episode_id=np.cumsum(t == 0) - 1,
                    target=np.arange(n) >= first, history_start=np.zeros(n, np.int64),
                    policy_version=np.zeros(n, np.int64))
        spec = self.model.sample_spec()
        L = min(spec.length, n)
        ends = np.arange(n, first, -L)  # each window's end (exclusive), newest first
        starts = np.maximum(ends - L, 0)
        spec = replace(spec, length=L)
        batch = make_batch(h, starts, spec, self.model.spec["num_actions"])
        # A window's rows from its end on belong to a newer window (the oldest window, clipped
        # at the stream's start, reaches past its end): scored there only.
        batch["mask"] &= batch["row"] < ends[:, None]
        batch["advantage"] = np.full(batch["mask"].shape, advantage, np.float32)
        return batch

    def _update(self, i: int, length: int, advantage: float):
        device = next(self.model.parameters()).device
        window = self._window(i, length, advantage)
        scored = int(window["mask"].sum())
        self.model.train()
        for _ in range(self.updates):
            self.optimizer.zero_grad()
            for k in range(0, len(window["mask"]), WINDOWS_PER_PASS):  # bounded memory per pass
                part = {key: v[k:k + WINDOWS_PER_PASS] for key, v in window.items()}
                batch = {key: v.to(device) for key, v in imitation.to_torch(part).items()}
                mask = batch["mask"]
                if not mask.any():
                    continue
                logits = self.model(batch)
                logp = torch.log_softmax(logits[mask], -1).gather(-1, batch["action"][mask][:, None])[:, 0]
                (-(batch["advantage"][mask] * logp).sum() / scored).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)  # as in training
            self.optimizer.step()
            self.steps_trained += 1
        self.model.eval()
        self.advantages.append(advantage)
        if hasattr(self.player, "refresh"):
            self.player.refresh()  # the context, re-read with the new weights
