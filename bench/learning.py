"""Does the teacher learn? The project's RLlib teacher, built from a teach config in
tune_configs/ exactly as `understudy teach` builds it (recording on), against a plain
single-file PyTorch loop of the same algorithm written here (CleanRL-style: same network,
same env protocol, same settings, same env-step budget), on the config's game: ALE Breakout
by default, or any MinAtar game (`--config tune_configs/teachers/ppo_minatar.yaml`).

Return against env steps does not depend on the machine's speed, so the two long runs may run
one after the other or side by side (`--which teacher|plain`), each resumable (`--resume`)
from its last checkpoint in `--workdir`. Wall-clock is compared separately, in a short run
that interleaves the two (`--speed N`), as bench/dqn.py does.

    python bench/learning.py --algorithm ppo --which teacher --resume   # hours; resumable
    python bench/learning.py --algorithm ppo --which plain --resume
    python bench/learning.py --algorithm ppo --speed 30000              # minutes
    python bench/learning.py --algorithm ppo --report                   # -> docs/bench/*.json, png
    python bench/learning.py --config tune_configs/teachers/ppo_minatar.yaml --which plain
    python bench/learning.py --config ... --which teacher --seed 1          # more training seeds

Each reported point is the mean raw score of the last 100 training episodes finished by then.
With several seeds (each an independent training run of both, `--seed`), the report gives each
seed's curve and their mean; the teacher/plain ratio is of the means over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = {"ppo": "tune_configs/teachers/ppo_breakout.yaml", "dqn": "tune_configs/teachers/dqn_breakout.yaml"}
REPO = Path(__file__).resolve().parents[1]


def _threads(n: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def load_teach(config: str):
    """(teach config, the teacher's complete settings, its game, the results' name)."""
    from understudy.platform.config import load_config, teacher_settings

    cfg = load_config(REPO / config, expect=("teach",))
    game = cfg.games[0]
    default = CONFIGS.get(cfg.algorithm) == config
    name = cfg.algorithm if default else Path(config).stem  # the folder under --workdir
    return cfg, teacher_settings(cfg), game, name


# ---- the plain loop ---------------------------------------------------------------------------

def make_env(game: str, settings: dict, num_envs: int):
    """The teacher's env, from its family, each ending step already returning the next
    episode's first observation."""
    from understudy.envs import family_of
    from understudy.envs.families import ALE

    family = family_of(game)
    options = {"protocol": settings["protocol"], "num_threads": 1} if family is ALE else {}
    return family.make_vector_env(game, num_envs, same_step_reset=True,
                                  max_episode_steps=settings["max_episode_steps"], **options)


def cnn_trunk(cnn: str):
    """(the teacher's CNN with valid padding, its flat features, the hidden units after it).
    `nature`: the DQN paper's CNN on 84x84x4 (256 hidden); `minatar`: the MinAtar paper's one
    3x3 conv of 16 on 10x10x10 (128 hidden)."""
    import torch.nn as nn

    if cnn == "nature":
        layers = [nn.Conv2d(4, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
                  nn.Conv2d(64, 64, 3, 1), nn.ReLU()]
        return nn.Sequential(*layers, nn.Flatten()), 3136, 256
    return nn.Sequential(nn.Conv2d(10, 16, 3, 1), nn.ReLU(), nn.Flatten()), 1024, 128


def actor_critic(num_actions: int, cnn: str = "nature"):
    """The PPO teacher's RLlib module, written out: the CNN shared, then separate policy and
    value heads of one hidden layer each."""
    import torch.nn as nn

    class ActorCritic(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, features, hidden = cnn_trunk(cnn)
            self.pi = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))
            self.vf = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        def forward(self, obs):  # (B, H, W, C) uint8, as the env gives it
            x = self.trunk(obs.permute(0, 3, 1, 2).float() / 255.0)
            return self.pi(x), self.vf(x).squeeze(-1)

    return ActorCritic()


class PlainPPO:
    """PPO as CleanRL's ppo_atari.py, on the teacher's settings: rollouts of `rollout` steps
    from `num_envs` envs, GAE, advantages standardised over the batch (as RLlib does),
    clipped surrogate, squared value error clipped at vf_clip_param (RLlib's value loss),
    entropy bonus, global-norm gradient clipping, Adam with the learning rate annealed
    linearly to 0 over the budget. Learns on the transformed reward; counts the raw score."""

    def __init__(self, settings: dict, game: str, env_steps: int, seed: int = 0):
        import torch

        self.s = settings["settings"]
        self.reward, self.lr, self.budget = settings["reward"], settings["lr"], env_steps
        self.num_envs = settings["num_envs"]
        self.rollout = settings["env_steps_per_iter"] // self.num_envs
        self.env = make_env(game, settings, self.num_envs)
        torch.manual_seed(seed)
        self.net = actor_critic(int(self.env.single_action_space.n), settings["cnn"])
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)  # RLlib's Adam: torch defaults
        self.rng = np.random.default_rng(seed)
        self.obs, _ = self.env.reset(seed=seed)
        self.running = np.zeros(self.num_envs)
        self.steps, self.episodes = 0, []  # episodes: (env steps at its end, raw return)

    def iterate(self) -> None:
        """One rollout of num_envs x rollout steps, then the PPO update."""
        import torch

        from understudy.envs import transform_reward

        n, T = self.num_envs, self.rollout
        obs_buf = np.zeros((T, n, *self.obs.shape[1:]), np.uint8)
        act, logp, val = np.zeros((T, n), np.int64), np.zeros((T, n), np.float32), np.zeros((T, n), np.float32)
        rew, done = np.zeros((T, n), np.float32), np.zeros((T, n), np.float32)
        for t in range(T):
            with torch.inference_mode():
                logits, value = self.net(torch.from_numpy(self.obs))
                dist = torch.distributions.Categorical(logits=logits)
                a = dist.sample()
            obs_buf[t], act[t], logp[t], val[t] = self.obs, a.numpy(), dist.log_prob(a).numpy(), value.numpy()
            # Same-step reset: an ending step already returns the next episode's first frame.
            self.obs, r, term, trunc, _ = self.env.step(a.numpy())
            rew[t], done[t] = transform_reward(r, self.reward), np.logical_or(term, trunc)
            self.running += r
            self.steps += n
            for i in np.flatnonzero(done[t]):
                self.episodes.append((self.steps, float(self.running[i])))
                self.running[i] = 0.0
        with torch.inference_mode():
            next_value = self.net(torch.from_numpy(self.obs))[1].numpy()
        adv = np.zeros((T, n), np.float32)  # GAE(lambda); an episode end cuts the bootstrap
        last, s = np.zeros(n, np.float32), self.s
        for t in reversed(range(T)):
            nxt = next_value if t == T - 1 else val[t + 1]
            delta = rew[t] + s["gamma"] * nxt * (1 - done[t]) - val[t]
            last = delta + s["gamma"] * s["gae_lambda"] * (1 - done[t]) * last
            adv[t] = last
        returns = adv + val
        adv = (adv - adv.mean()) / max(adv.std(), 1e-4)
        flat = lambda x: torch.from_numpy(x.reshape(T * n, *x.shape[2:]))  # noqa: E731
        b_obs, b_act, b_logp, b_adv, b_ret = map(flat, (obs_buf, act, logp, adv, returns))
        if s["anneal_lr"]:
            for group in self.opt.param_groups:
                group["lr"] = self.lr * max(0.0, 1.0 - self.steps / self.budget)
        size = T * n // s["num_minibatches"]
        for _ in range(s["num_epochs"]):
            order = torch.from_numpy(self.rng.permutation(T * n))
            for k in range(s["num_minibatches"]):
                mb = order[k * size:(k + 1) * size]
                logits, value = self.net(b_obs[mb])
                dist = torch.distributions.Categorical(logits=logits)
                ratio = torch.exp(dist.log_prob(b_act[mb]) - b_logp[mb])
                surrogate = torch.min(ratio * b_adv[mb],
                                      ratio.clamp(1 - s["clip_param"], 1 + s["clip_param"]) * b_adv[mb])
                vf_loss = ((value - b_ret[mb]) ** 2).clamp(0, s["vf_clip_param"])
                loss = (-surrogate + s["vf_loss_coeff"] * vf_loss - s["entropy_coeff"] * dist.entropy()).mean()
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), s["grad_clip"])
                self.opt.step()

    def save(self, path: Path) -> None:
        import torch

        tmp = path.with_suffix(".tmp")
        torch.save({"net": self.net.state_dict(), "opt": self.opt.state_dict(), "steps": self.steps,
                    "episodes": self.episodes, "rng": self.rng.bit_generator.state}, tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Network, optimizer and counters; the envs start new episodes (an emulator's state
        is not checkpointed), and the episodes that were running are not counted."""
        import torch

        state = torch.load(path, weights_only=False)
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.steps, self.episodes = state["steps"], [tuple(e) for e in state["episodes"]]
        self.rng.bit_generator.state = state["rng"]


def q_network(num_actions: int, cnn: str = "nature"):
    """The DQN teacher's RLlib module, written out: the CNN, one hidden layer, a Q-value per
    action (single stream: the preset is not dueling)."""
    import torch.nn as nn

    class QNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, features, hidden = cnn_trunk(cnn)
            self.head = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))

        def forward(self, obs):  # (B, H, W, C) uint8, as the env gives it
            return self.head(self.trunk(obs.permute(0, 3, 1, 2).float() / 255.0))

    return QNetwork()


class FrameRing:
    """Replay holding each frame once: a ring of `capacity` frames. An observation is a stack
    of `stack` frames on the last axis (ALE: 4 of 84x84), or one frame (stack 0: MinAtar's
    10x10x10 is the frame). A transition is the write numbers of its observation's frames and
    of its next observation's; it is sampleable while none of them has been overwritten."""

    def __init__(self, capacity: int, frame_shape: tuple, stack: int, seed: int):
        self.capacity, self.stack = capacity, stack
        stack = max(stack, 1)
        self.frames = np.zeros((capacity, *frame_shape), np.uint8)
        self.written = 0  # frames ever written; frame number k lives in slot k % capacity
        self.obs_ids = np.zeros((capacity, stack), np.int64)
        self.next_ids = np.zeros((capacity, stack), np.int64)
        self.action, self.reward = np.zeros(capacity, np.int64), np.zeros(capacity, np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.added = 0  # transitions ever added
        self.current = None  # write numbers of the current observation's frames
        self.rng = np.random.default_rng(seed)

    def _write(self, frame: np.ndarray) -> int:
        self.frames[self.written % self.capacity] = frame
        self.written += 1
        return self.written - 1

    def observe(self, obs: np.ndarray, first: bool) -> None:
        """The observation now in front of the agent (H, W, stack): every frame at an
        episode's start, only the newest afterwards."""
        if not self.stack:
            self.current = np.array([self._write(obs)])
        elif first:
            self.current = np.array([self._write(obs[..., k]) for k in range(self.stack)])
        else:
            self.current = np.append(self.current[1:], self._write(obs[..., -1]))

    def add(self, previous: np.ndarray, action: int, reward: float, done: bool) -> None:
        i = self.added % self.capacity
        self.obs_ids[i], self.next_ids[i] = previous, self.current
        self.action[i], self.reward[i], self.done[i] = action, reward, float(done)
        self.added += 1

    def sample(self, n: int):
        """n transitions drawn uniformly from those whose frames are all still in the ring."""
        size = min(self.added, self.capacity)
        idx = self.rng.integers(0, size, 4 * n)
        oldest = np.minimum(self.obs_ids[idx].min(1), self.next_ids[idx].min(1))
        idx = idx[oldest >= self.written - self.capacity][:n]
        def stacks(ids):
            frames = self.frames[ids % self.capacity]  # (n, stack, *frame)
            return np.moveaxis(frames, 1, -1) if self.stack else frames[:, 0]
        return (stacks(self.obs_ids[idx]), self.action[idx], self.reward[idx],
                stacks(self.next_ids[idx]), self.done[idx])


class PlainDQN:
    """DQN as CleanRL's dqn_atari.py, on the teacher's settings: epsilon-greedy with epsilon
    linear from 1 over the preset's fraction of the budget, uniform replay of `buffer_size`
    frames, random play for `learning_starts` steps, then a batch of 32 every
    batch_size / training_intensity env steps; 1-step Huber TD loss against a target network
    copied every `target_update` env steps; Adam (the preset's lr and eps); the discount and
    the global-norm gradient clip are RLlib DQN's defaults, which the teacher keeps (read from
    RLlib here). An episode end, cut or not, stops the bootstrap.
    Learns on the transformed reward; counts the raw score. The replay is not checkpointed
    (nor is the teacher's): after a resume it refills for `learning_starts` steps."""

    def __init__(self, settings: dict, game: str, env_steps: int, seed: int = 0):
        import torch
        from ray.rllib.algorithms.dqn import DQNConfig

        from understudy.algorithms.presets import DQNSettings
        from understudy.envs import family_of

        s = self.s = DQNSettings(**settings["settings"])
        rllib = DQNConfig()
        self.gamma, self.grad_clip = rllib.gamma, rllib.grad_clip
        self.reward, self.budget = settings["reward"], env_steps
        self.env = make_env(game, settings, 1)
        torch.manual_seed(seed)
        n = int(self.env.single_action_space.n)
        self.q, self.target = q_network(n, settings["cnn"]), q_network(n, settings["cnn"])
        self.target.load_state_dict(self.q.state_dict())
        self.opt = torch.optim.Adam(self.q.parameters(), lr=settings["lr"], eps=s.adam_epsilon)
        self.every = max(1, round(s.batch_size / s.training_intensity))  # env steps per update
        self.decay = s.epsilon_decay_steps(env_steps)
        self.rng = np.random.default_rng(seed)
        obs, _ = self.env.reset(seed=seed)
        self.obs = obs[0]
        frame_shape = family_of(game).frame_shape
        stack = self.obs.shape[-1] if self.obs.shape != tuple(frame_shape) else 0
        self.replay = FrameRing(min(s.buffer_size, env_steps + 4), frame_shape, stack, seed)
        self.replay.observe(self.obs, first=True)
        self.running, self.steps, self.episodes = 0.0, 0, []
        self.refill_until = s.learning_starts  # no updates before the replay holds this many

    def epsilon(self) -> float:
        s = self.s
        return 1.0 + (s.final_epsilon - 1.0) * min(1.0, self.steps / self.decay)

    def iterate(self, env_steps: int = 1000) -> None:
        import torch
        import torch.nn.functional as F

        from understudy.envs import transform_reward

        s = self.s
        for _ in range(env_steps):
            if self.rng.random() < self.epsilon():
                action = int(self.rng.integers(self.env.single_action_space.n))
            else:
                with torch.inference_mode():
                    action = int(self.q(torch.from_numpy(self.obs[None])).argmax(1)[0])
            previous = self.replay.current
            obs, r, term, trunc, _ = self.env.step(np.array([action]))
            done = bool(term[0] or trunc[0])
            self.running += float(r[0])
            self.steps += 1
            # Same-step reset: an ending step already returns the next episode's first frame.
            self.replay.observe(obs[0], first=done)
            self.replay.add(previous, action, float(transform_reward(r[0], self.reward)), done)
            self.obs = obs[0]
            if done:
                self.episodes.append((self.steps, self.running))
                self.running = 0.0
            if self.steps >= self.refill_until and self.steps % self.every == 0:
                o, a, rew, nxt, d = map(torch.from_numpy, self.replay.sample(s.batch_size))
                with torch.no_grad():
                    target = rew + self.gamma * (1.0 - d) * self.target(nxt).max(1).values
                q = self.q(o).gather(1, a[:, None]).squeeze(1)
                loss = F.huber_loss(q, target)
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.q.parameters(), self.grad_clip)
                self.opt.step()
            if self.steps % s.target_update == 0:
                self.target.load_state_dict(self.q.state_dict())

    def save(self, path: Path) -> None:
        import torch

        tmp = path.with_suffix(".tmp")
        torch.save({"q": self.q.state_dict(), "target": self.target.state_dict(), "opt": self.opt.state_dict(),
                    "steps": self.steps, "episodes": self.episodes, "rng": self.rng.bit_generator.state}, tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Networks, optimizer and counters; the env starts a new episode and the replay
        refills for `learning_starts` steps before the next update (as the teacher's does)."""
        import torch

        state = torch.load(path, weights_only=False)
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        self.opt.load_state_dict(state["opt"])
        self.steps, self.episodes = state["steps"], [tuple(e) for e in state["episodes"]]
        self.rng.bit_generator.state = state["rng"]
        self.refill_until = self.steps + min(self.s.learning_starts, self.replay.capacity // 2)


PLAIN = {"ppo": PlainPPO, "dqn": PlainDQN}


# ---- the teacher ------------------------------------------------------------------------------

class Teacher:
    """The teacher as `understudy teach` builds it from the config (recording to `root`),
    trained one iteration at a time in this process."""

    def __init__(self, cfg, settings: dict, game: str, root: Path, seed: int = 0):
        from understudy.algorithms.teachers import recording_algorithm, teacher_config_from

        self.root = str(root / "shards")
        config = teacher_config_from(
            settings, game=game, seed=seed, env_steps=cfg.env_steps,
            record={"root": self.root, "session": "learning", "algorithm": cfg.algorithm,
                    "shard_rows": cfg.shard_rows})
        self.algo = recording_algorithm(config.algo_class)(config=config)
        self.steps = 0

    def iterate(self) -> None:
        result = self.algo.train()
        self.steps = int(result["env_runners"]["num_env_steps_sampled_lifetime"])

    @property
    def episodes(self) -> list[tuple[int, float]]:
        from understudy.histories import shards

        run_id = shards.list_runs(self.root)[0]
        return [(e["last_global_step"] + 1, e["return"])
                for e in sorted(shards.episode_returns(self.root, run_id), key=lambda e: e["last_global_step"])]

    def save(self, path: Path) -> None:
        # Through the Trainable's save_checkpoint, as Tune saves: it also pins the recording.
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.algo.save_checkpoint(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """RLlib's checkpoint; the history recorded after it is rewound (recording_algorithm)."""
        self.algo.load_checkpoint(str(path))
        self.steps = int(self.algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"), default=0))


# ---- runs ---------------------------------------------------------------------------------------

def run(config: str, which: str, workdir: Path, resume: bool, checkpoint_every_s: float, seed: int = 0) -> None:
    """Train `which` to the config's budget, checkpointing every `checkpoint_every_s` seconds;
    its episodes go to `workdir/<name>/s<seed>/<which>/state.json` at every checkpoint."""
    cfg, settings, game, name = load_teach(config)
    work = workdir / name / f"s{seed}" / which
    if work.exists() and not resume:
        raise SystemExit(f"{work} exists: pass --resume to continue it, or remove it")
    work.mkdir(parents=True, exist_ok=True)
    learner = (Teacher(cfg, settings, game, work, seed) if which == "teacher"
               else PLAIN[cfg.algorithm](settings, game, cfg.env_steps, seed))
    checkpoint = work / "checkpoint"
    wall = 0.0
    state_file = work / "state.json"
    if resume and checkpoint.exists():
        learner.load(checkpoint)
        wall = json.loads(state_file.read_text())["wall_s"]
        print(f"[learning] {which}: resumed at {learner.steps} env steps", flush=True)
    started = last_save = time.perf_counter()
    while learner.steps < cfg.env_steps:
        learner.iterate()
        now = time.perf_counter()
        if now - last_save >= checkpoint_every_s or learner.steps >= cfg.env_steps:
            learner.save(checkpoint)
            episodes = learner.episodes
            state = {"algorithm": cfg.algorithm, "game": game, "which": which, "seed": seed, "config": config,
                     "settings": settings, "env_steps": learner.steps, "budget": cfg.env_steps,
                     "wall_s": wall + now - started, "episodes": episodes}
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, state_file)
            last_save = now
            recent = [r for _, r in episodes[-100:]]
            rate = learner.steps / max(1e-9, state["wall_s"])
            print(f"[learning] {which} seed {seed}: {learner.steps}/{cfg.env_steps} env steps, "
                  f"{len(episodes)} episodes, last-100 mean return {np.mean(recent) if recent else float('nan'):.2f}, "
                  f"{rate:.0f} env steps/s, ETA {(cfg.env_steps - learner.steps) / max(rate, 1e-9) / 60:.0f} min",
                  flush=True)


def speed(config: str, steps: int, chunk_iters: int, workdir: Path) -> dict:
    """Wall time of the two for the same env steps, in alternating chunks after a warm-up."""
    cfg, settings, game, name = load_teach(config)
    work = workdir / name / "speed"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    warm_up = 1
    if cfg.algorithm == "dqn":
        # Timed where a DQN run spends its time, with updates: a short warm-up of random play
        # (the replay's content does not change an update's cost), and iterations of 1,000 env
        # steps for both, so that the turns interleave finely.
        settings = {**settings, "env_steps_per_iter": 1000,
                    "settings": {**settings["settings"], "learning_starts": 2000}}
        warm_up = 3
    learners = {"teacher": Teacher(cfg, settings, game, work),
                "plain": PLAIN[cfg.algorithm](settings, game, cfg.env_steps)}
    for learner in learners.values():  # warm-up, untimed
        for _ in range(warm_up):
            learner.iterate()
    done = {k: 0 for k in learners}
    wall = {k: 0.0 for k in learners}
    while min(done.values()) < steps:
        for name, learner in learners.items():
            before, t0 = learner.steps, time.perf_counter()
            for _ in range(chunk_iters):
                learner.iterate()
            wall[name] += time.perf_counter() - t0
            done[name] += learner.steps - before
        print(f"[learning] speed: {done} env steps, {wall} s", flush=True)
    return {"speed_env_steps": done, "teacher_wall_s": wall["teacher"] / done["teacher"] * steps,
            "plain_wall_s": wall["plain"] / done["plain"] * steps, "speed_steps": steps}


def random_return(game: str, settings: dict, episodes: int = 100, seed: int = 0) -> float:
    """Uniformly random actions under the same protocol, raw score."""
    from understudy.envs.families import random_returns

    env = make_env(game, settings, 8)
    returns = random_returns(env, episodes, seed)
    env.close()
    return float(np.mean(returns))


def curve(episodes: list, points: np.ndarray) -> list[float | None]:
    """At each env-step point, the mean raw return of the last 100 episodes finished by then."""
    ends = np.array([e for e, _ in episodes])
    returns = np.array([r for _, r in episodes])
    out = []
    for p in points:
        k = int(np.searchsorted(ends, p, side="right"))
        out.append(float(returns[max(0, k - 100):k].mean()) if k else None)
    return out


def mean_curve(curves: list[list]) -> list[float | None] | None:
    """The mean over seeds at each point (None where a seed has no episode yet)."""
    if not curves:
        return None
    return [None if any(v is None for v in col) else float(np.mean(col)) for col in zip(*curves)]


def report(config: str, workdir: Path, out: Path, speed_result: dict | None) -> dict:
    cfg, settings, game, name = load_teach(config)
    states = {}  # which -> seed -> state
    for path in sorted((workdir / name).glob("s[0-9]*/*/state.json")):
        state = json.loads(path.read_text())
        states.setdefault(state["which"], {})[state["seed"]] = state
    if not states:
        raise SystemExit(f"no runs under {workdir / name}: run --which teacher / plain first")
    reach = min(s["env_steps"] for by_seed in states.values() for s in by_seed.values())
    points = np.arange(25_000, reach + 1, 25_000)
    slug = game.replace("MinAtar/", "minatar_").lower()
    path = out / f"learning_{cfg.algorithm}_{slug}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    by_seed = {w: {seed: curve(s["episodes"], points) for seed, s in sorted(states.get(w, {}).items())}
               for w in ("teacher", "plain")}
    result = {"algorithm": cfg.algorithm, "game": game, "config": config,
              "settings": next(iter(next(iter(states.values())).values()))["settings"],
              "env_steps": points.tolist(),
              "seeds": {w: sorted(states.get(w, {})) for w in ("teacher", "plain")},
              "teacher_return": mean_curve(list(by_seed["teacher"].values())),
              "plain_return": mean_curve(list(by_seed["plain"].values())),
              "teacher_return_by_seed": by_seed["teacher"], "plain_return_by_seed": by_seed["plain"],
              "runs": {w: {seed: {"env_steps": s["env_steps"], "budget": s["budget"], "wall_s": s["wall_s"],
                                  "episodes": len(s["episodes"])} for seed, s in by_seed_states.items()}
                       for w, by_seed_states in states.items()},
              "random_return": previous.get("random_return") or random_return(game, settings),
              "machine": f"{os.cpu_count()} CPU cores, no GPU"}
    for key in ("teacher_wall_s", "plain_wall_s", "speed_steps", "speed_env_steps"):
        result[key] = (speed_result or {}).get(key, previous.get(key))
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    _plot(result, path.with_suffix(".png"))
    if game.startswith("MinAtar/"):
        _combine_minatar(result, out / "learning_minatar.json")
    return result


def _combine_minatar(result: dict, path: Path) -> None:
    """docs/bench/learning_minatar.json: every MinAtar game measured so far, one entry each
    ({"game": {"env_steps", "teacher_return", "plain_return", ...}}), written atomically."""
    combined = json.loads(path.read_text()) if path.exists() else {}
    final = {w: next((v for v in reversed(result[f"{w}_return"] or []) if v is not None), None)
             for w in ("teacher", "plain")}
    # the last fifth of the budget: one seed's end point is noisy (a 100-episode mean)
    def late_of(points):
        points = [v for v in (points or []) if v is not None]
        tail = points[-max(1, len(points) // 5):]
        return float(np.mean(tail)) if tail else None

    late = {w: late_of(result[f"{w}_return"]) for w in ("teacher", "plain")}
    late_by_seed = {w: {str(seed): late_of(c) for seed, c in (result.get(f"{w}_return_by_seed") or {}).items()}
                    for w in ("teacher", "plain")}
    combined[result["game"]] = {
        "env_steps": result["env_steps"], "teacher_return": result["teacher_return"],
        "plain_return": result["plain_return"], "random_return": result["random_return"],
        "final_ratio": (final["teacher"] / final["plain"]) if final["teacher"] is not None and final["plain"] else None,
        "late_teacher": late["teacher"], "late_plain": late["plain"],
        "late_ratio": (late["teacher"] / late["plain"]) if late["teacher"] is not None and late["plain"] else None,
        "seeds": result.get("seeds"), "late_by_seed": late_by_seed,
        "config": result["config"], "machine": result["machine"]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(combined.items())), indent=2))
    os.replace(tmp, path)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for which, label, color in (("teacher", "RLlib teacher (understudy)", "C0"), ("plain", "plain PyTorch loop", "C1")):
        seeds = result.get(f"{which}_return_by_seed") or {}
        for c in seeds.values():  # each training run, thin
            ax.plot(result["env_steps"], [np.nan if v is None else v for v in c], color=color, lw=0.6, alpha=0.5)
        if result.get(f"{which}_return"):
            ax.plot(result["env_steps"], [np.nan if v is None else v for v in result[f"{which}_return"]], color=color,
                    label=f"{label}, mean of {len(seeds)} seed(s)" if seeds else label)
    ax.axhline(result["random_return"], color="grey", ls="--", label="random")
    ax.set_xlabel("env steps (4 frames each)")
    ax.set_ylabel("raw return, mean of last 100 episodes")
    ax.set_title(f"{result['algorithm'].upper()} on {result['game']} ({result['config']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", choices=sorted(CONFIGS), default="ppo")
    parser.add_argument("--config", help="a teach config (default: the algorithm's Breakout config)")
    parser.add_argument("--which", choices=("teacher", "plain"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed (--which)")
    parser.add_argument("--speed", type=int, default=0, help="env steps each for the interleaved wall-clock run")
    parser.add_argument("--chunk-iters", type=int, default=2)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-every-s", type=float, default=600.0)
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "learning")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench")
    args = parser.parse_args(argv)
    config = args.config or CONFIGS[args.algorithm]
    cfg, *_ = load_teach(config)
    if cfg.algorithm not in PLAIN and (args.which == "plain" or args.speed):
        raise SystemExit(f"{config}: algorithm {cfg.algorithm!r} has no plain loop here; valid: {', '.join(PLAIN)}")
    _threads(args.threads)
    speed_result = None
    if args.which:
        run(config, args.which, args.workdir, args.resume, args.checkpoint_every_s, args.seed)
    if args.speed:
        speed_result = speed(config, args.speed, args.chunk_iters, args.workdir)
        print(json.dumps(speed_result), flush=True)
    if args.report or speed_result:
        print(json.dumps({k: v for k, v in report(config, args.workdir, args.out, speed_result).items()
                          if k != "settings"}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
