"""The source RL algorithm for Dark Room: tabular Q-learning, optimistic and greedy, with Dyna
planning; one learning history per goal, recorded through the same shard path as the Atari
teachers.

The goal is fixed within a history, so the agent's position is a Markov state and a 81 x 5
Q-table per goal is all there is to learn. Many goals learn at once (numpy over a goal axis);
every goal has its own random stream, seeded by (seed, x, y), so a history depends only on its
goal, seed and hyper-parameters, never on which other goals were learned beside it.

How it learns decides what Algorithm Distillation can copy. Optimism (untried actions start
above anything a tried, unrewarded one can be worth) makes exploration directed: the greedy
agent tries the nearest untried cells first. Planning sweeps after each episode spread a reward
found once back to the start cell and keep the way to it the shortest one tried. So the
history improves because of what the agent has found, in about 30 episodes, and every goal is
learned to the optimum within 40 (tests/test_darkroom.py). An earlier source whose returns rose
only as an epsilon schedule decayed over 300 episodes gave AD little to read from its context:
frozen, it reached 14% of the optimum on held-out goals (docs/evaluation.md).

Each recorded step is the position the action was chosen on (as frame_of's 84x84 frame), the
action, its reward, the behaviour epsilon and the 5 Q-values. policy_version counts the Q
updates applied before the action: one per step and one per planning sweep.

    python -m understudy.algorithms.darkroom_source --root /tmp/shards --episodes 40 --split train
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterator

import numpy as np

from understudy.algorithms import bounds, sources
from understudy.algorithms.bounds import Discount, NonNegative, Positive, Probability, Share
from understudy.envs import darkroom
from understudy.envs.darkroom import (
    EPISODE_STEPS,
    GRID,
    NUM_ACTIONS,
    DarkRoomVectorEnv,
    cell_index,
    frame_of,
    optimal_return,
)
from understudy.histories.shards import Episode, ShardWriter, read_catalog, write_run_metadata

GAME = "DarkRoom"
ALGORITHM = "qlearning"


@dataclass(frozen=True)
class QLearningConfig:
    episodes: Positive = 40  # length of each learning history
    learning_rate: Share = 1.0  # the room is deterministic: one sample is the expectation
    discount: Discount = 0.8
    # Optimistic: an untried action is worth more than any tried unrewarded one, so the greedy
    # agent goes on trying new cells, nearest first, until it finds the goal.
    q_init: float = 3.0
    epsilon_start: Probability = 0.0  # optimism explores; epsilon only adds undirected noise
    epsilon_end: Probability = 0.0
    epsilon_decay_fraction: Share = 0.75  # share of the history over which epsilon falls linearly
    # Dyna-Q planning: after each episode, this many sweeps of the Q update over every
    # transition seen so far (one copy each: the room is deterministic). A reward found late in
    # an episode then reaches the start cell at once, and the way to the goal is the shortest
    # one through the cells tried so far. 0: plain one-step Q-learning.
    planning_sweeps: NonNegative = 30

    def __post_init__(self):
        bounds.check(self)  # each field's bounds are in its annotation

    def epsilon(self, episode: int) -> float:
        """Behaviour epsilon of an episode: linear from epsilon_start to epsilon_end, then flat."""
        decay_episodes = max(1.0, self.epsilon_decay_fraction * self.episodes)
        frac = min(1.0, episode / decay_episodes)
        return self.epsilon_start + frac * (self.epsilon_end - self.epsilon_start)


@dataclass
class EpisodeBatch:
    """One episode of every goal, as the learner lived it (G goals, T = EPISODE_STEPS)."""
    episode: int
    epsilon: float
    positions: np.ndarray  # (G, T, 2) position the action was chosen on
    actions: np.ndarray  # (G, T)
    rewards: np.ndarray  # (G, T)
    q_values: np.ndarray  # (G, T, 5) Q-values the action was chosen on
    policy_version: np.ndarray  # (T,) Q updates applied before each action (same for every goal)
    global_step: np.ndarray  # (T,)

    @property
    def returns(self) -> np.ndarray:
        return self.rewards.sum(axis=1)


def q_learning(goals: np.ndarray, config: QLearningConfig = QLearningConfig(),
               seed: int = 0) -> Iterator[EpisodeBatch]:
    """Learn every goal from scratch at once; yield each episode as it completes."""
    goals = np.asarray(goals, np.int64)
    env = DarkRoomVectorEnv(goals)
    n, T = len(goals), EPISODE_STEPS
    rows = np.arange(n)
    q = np.full((n, GRID * GRID, NUM_ACTIONS), float(config.q_init))
    rngs = [np.random.default_rng([seed, int(x), int(y)]) for x, y in goals]

    # The transitions tried so far (deterministic room: the last outcome of (s, a) is its outcome).
    tried = np.zeros(q.shape, bool)
    next_cell = np.zeros(q.shape, np.int64)
    reward_of = np.zeros(q.shape)
    updates = 0  # Q updates so far (one per step, one per planning sweep): the policy version
    for episode in range(config.episodes):
        eps = config.epsilon(episode)
        # This episode's randomness, drawn per goal: explore-or-not, the random action, and a
        # tie-breaker among equal Q-values (a fresh table must not always pick action 0).
        draws = [(r.random(T), r.integers(NUM_ACTIONS, size=T), r.random((T, NUM_ACTIONS)))
                 for r in rngs]
        explore = np.stack([d[0] for d in draws]) < eps
        random_action = np.stack([d[1] for d in draws])
        tie = np.stack([d[2] for d in draws])

        out = EpisodeBatch(episode, eps, np.zeros((n, T, 2), np.int64), np.zeros((n, T), np.int64),
                           np.zeros((n, T), np.float32), np.zeros((n, T, NUM_ACTIONS), np.float32),
                           np.zeros(T, np.int64), np.arange(episode * T, (episode + 1) * T))
        pos = env.reset()
        for t in range(T):
            s = cell_index(pos)
            qs = q[rows, s]
            greedy = np.where(qs == qs.max(axis=1, keepdims=True), tie[:, t], -1.0).argmax(axis=1)
            a = np.where(explore[:, t], random_action[:, t], greedy)
            out.positions[:, t], out.actions[:, t], out.q_values[:, t] = pos, a, qs

            out.policy_version[t] = updates
            pos, r, _, _ = env.step(a)
            s_next = cell_index(pos)
            # Truncation is a time limit, not part of the state: always bootstrap.
            target = r + config.discount * q[rows, s_next].max(axis=1)
            q[rows, s, a] += config.learning_rate * (target - q[rows, s, a])
            tried[rows, s, a], next_cell[rows, s, a], reward_of[rows, s, a] = True, s_next, r
            out.rewards[:, t] = r
            updates += 1
        for _ in range(config.planning_sweeps):  # synchronous sweeps over every tried (s, a)
            target = reward_of + config.discount * q.max(axis=2)[rows[:, None, None], next_cell]
            q = np.where(tried, q + config.learning_rate * (target - q), q)
            updates += 1
        yield out


def run_id_for(goal, seed: int) -> str:
    x, y = (int(v) for v in goal)
    return f"darkroom-g{x}{y}-s{seed}"


def record_histories(root: str, goals, episodes: int = 300, seed: int = 0,
                     config: QLearningConfig | None = None, *, shard_rows: int = 2000,
                     goal_batch: int = 16, progress=None, goal_split: str | None = None) -> list[str]:
    """Learn each goal with Q-learning for `episodes` episodes (the rest of the hyper-parameters
    from `config`) and record its whole learning history under `root`, one run per goal
    (run_id_for(goal, seed)); returns the run ids in the order of `goals`.

    `shard_rows` sets shard size (2000 rows = 100 episodes); goals learn `goal_batch` at a time
    so buffered frames stay small. `progress(message)` is called now and then, if given.
    `goal_split` names the split the goals came from in each run.json (default: by version 1)."""
    config = replace(config or QLearningConfig(), episodes=episodes)
    if goal_batch < 1:
        raise ValueError(f"goal_batch: {goal_batch} must be >= 1")
    goals = darkroom.check_goals(goals)
    run_ids = [run_id_for(g, seed) for g in goals]
    if len(set(run_ids)) != len(run_ids):
        raise ValueError(f"goals: {goals.tolist()} repeat a goal; each goal is one history")
    # Appending to an existing history would splice two learners into one; refuse instead.
    for run_id in run_ids:
        if read_catalog(root, run_id, include_rewound=True):
            raise FileExistsError(f"run {run_id!r} already has shards under {root!r}; record into "
                                  "another root or delete that run first")

    # Equal-sized batches of at most `goal_batch` goals (not 32 + 32 + 1).
    starts = np.linspace(0, len(goals), -(-len(goals) // goal_batch) + 1).round().astype(int)
    for start, stop in zip(starts[:-1], starts[1:]):
        batch, ids = goals[start:stop], run_ids[start:stop]
        writers = []
        for goal, run_id in zip(batch, ids):
            write_run_metadata(root, run_id, {
                "game": GAME, "algorithm": ALGORITHM, "seed": seed, "goal": goal.tolist(),
                "optimal_return": optimal_return(goal),
                "goal_split": goal_split or ("heldout" if tuple(goal.tolist()) in darkroom.HELDOUT_GOALS_V1
                                             else "train"),
                "num_actions": NUM_ACTIONS,
                "max_episode_steps": EPISODE_STEPS, "hyperparameters": asdict(config),
                "protocol": darkroom.protocol()})
            writers.append(ShardWriter(root=root, run_id=run_id, env_runner=0, max_rows=shard_rows,
                                       static={"game": GAME, "algorithm": ALGORITHM, "seed": seed}))
        for ep in q_learning(batch, config, seed):
            truncated = np.zeros(EPISODE_STEPS, bool)
            truncated[-1] = True
            for i, writer in enumerate(writers):
                writer.add(Episode(0, ep.episode, {
                    "step": np.arange(EPISODE_STEPS, dtype=np.int32),
                    "global_step": ep.global_step, "policy_version": ep.policy_version,
                    "frame": frame_of(ep.positions[i]), "action": ep.actions[i],
                    "reward": ep.rewards[i], "terminated": np.zeros(EPISODE_STEPS, bool),
                    "truncated": truncated, "lives": np.zeros(EPISODE_STEPS, np.int16),
                    "epsilon": np.full(EPISODE_STEPS, ep.epsilon, np.float32),
                    "policy_outputs": ep.q_values[i]}, float(ep.returns[i])))
            if progress and (ep.episode + 1) % max(1, config.episodes // 4) == 0:
                progress(f"goals {start + 1}-{stop}/{len(goals)}: episode "
                         f"{ep.episode + 1}/{config.episodes}, epsilon {ep.epsilon:.2f}, "
                         f"mean return {ep.returns.mean():.2f}")
        for writer in writers:
            writer.flush()
    return run_ids


def _record(root, game, goals, episodes, seed, settings: dict, *, session=None, goal_split=None,
            progress=None) -> list[str]:
    """The registry's entry (algorithms/sources.py): run ids carry no session, so a teach stage
    gives every session a shard root of its own."""
    return record_histories(root, goals, episodes, seed, QLearningConfig(**settings), progress=progress,
                            goal_split=goal_split)


def _from_scratch(game, goals, episodes, settings: dict, seed) -> np.ndarray:
    config = QLearningConfig(**{**settings, "episodes": episodes})
    return np.stack([b.returns for b in q_learning(np.asarray(goals, np.int64), config, seed=seed)], 1)


sources.register(sources.LocalSource(
    name=ALGORITHM, description="tabular Q-learning on Dark Room goals", block="darkroom",
    settings=QLearningConfig, families=("darkroom",), record=_record, steps_per_s=None,
    from_scratch=_from_scratch))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="shard root (local path or URI)")
    parser.add_argument("--split", default="train", choices=darkroom.GOAL_SPLITS)
    parser.add_argument("--episodes", type=int, default=QLearningConfig.episodes)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=QLearningConfig.learning_rate)
    parser.add_argument("--discount", type=float, default=QLearningConfig.discount)
    parser.add_argument("--q-init", type=float, default=QLearningConfig.q_init)
    parser.add_argument("--epsilon-start", type=float, default=QLearningConfig.epsilon_start)
    parser.add_argument("--epsilon-end", type=float, default=QLearningConfig.epsilon_end)
    parser.add_argument("--epsilon-decay-fraction", type=float,
                        default=QLearningConfig.epsilon_decay_fraction)
    parser.add_argument("--planning-sweeps", type=int, default=QLearningConfig.planning_sweeps)
    parser.add_argument("--shard-rows", type=int, default=2000)
    args = parser.parse_args(argv)

    try:
        config = QLearningConfig(episodes=args.episodes, learning_rate=args.learning_rate,
                                 discount=args.discount, q_init=args.q_init,
                                 epsilon_start=args.epsilon_start, epsilon_end=args.epsilon_end,
                                 epsilon_decay_fraction=args.epsilon_decay_fraction,
                                 planning_sweeps=args.planning_sweeps)
    except ValueError as err:
        parser.error(str(err))
    goals = darkroom.darkroom_goals(args.split)
    began = time.time()
    try:
        run_ids = record_histories(args.root, goals, args.episodes, args.seed, config,
                                   shard_rows=args.shard_rows,
                                   progress=lambda m: print(f"[darkroom] {m}", flush=True))
    except FileExistsError as err:
        parser.exit(1, f"[darkroom] {err}\n")
    print(f"[darkroom] recorded {len(run_ids)} histories x {args.episodes} episodes "
          f"({args.split} split) under {args.root} in {time.time() - began:.1f}s", flush=True)


if __name__ == "__main__":
    main()
