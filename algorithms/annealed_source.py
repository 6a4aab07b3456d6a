"""AD-epsilon: synthetic learning histories from an expert played with annealed noise (Zisman et
al., ICML 2024, "Emergence of In-Context Reinforcement Learning from Noise Distillation").

No RL runs here. Each history is one task played for `episodes` consecutive episodes by a
task-aware expert whose every action is replaced, with probability eps(e), by a uniformly random
one; eps falls over the first `anneal_episodes` episodes from `noise_start` to `noise_floor`:

    eps(e) = noise_start + (noise_floor - noise_start) * min(1, e / anneal_episodes)

So the returns of one history rise from random play's to the expert's, inside what an
Algorithm Distillation context can hold, and the imitator sees a "learner" improve whose
improvement comes from nothing but the noise schedule.

Per-task families only (Dark Room goals, minatar_columns tasks): the expert may know the task,
the recorded frames never show it (each step's frame is the family's `newest_frame` of the
observation the action was chosen on; for minatar_columns that is the blind view, and the env is
made without reveal_task anyway). All tasks play at once as copies of one vector env,
`family.make_vector_env(game, len(tasks), goals=tasks)`; each task is one run, recorded through
ShardWriter in the standard shard schema:

    epsilon         the step's eps(e)
    policy_version  the episode index e (the noise level is the "learner's" version), so
                    histories.data.index_runs orders the episodes as they were played
    reward          raw; lives 0; policy_outputs null
    global_step     steps this task's copy had taken before the step

Randomness: each task's noise (explore-or-not and the random action) comes from its own stream,
seeded by (seed, *task); the env is reset once with `seed` (copy i seeded seed + i, as the
family's vector env does), so a history is fixed by (game, tasks, config, seed). Dark Room is
deterministic: there a history depends only on its goal, seed and config.

    python -m understudy.algorithms.annealed_source --game MinAtar/SpaceInvaders-columns \
        --split train --root /tmp/shards --episodes 60
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal

import numpy as np

from understudy.algorithms import bounds, sources
from understudy.algorithms.bounds import NonNegative, Positive, Probability
from understudy.envs import darkroom, minatar_columns
from understudy.envs.families import EnvFamily, family_of, registered
from understudy.histories.shards import Episode, ShardWriter, read_catalog, write_run_metadata

ALGORITHM = "annealed"


# ---- experts: (obs, env, tasks) -> actions ------------------------------------------------------

def darkroom_optimal(obs, env, tasks) -> np.ndarray:
    """Dark Room's optimal policy: step towards the goal (columns first, then rows), then stay.
    It reads the agent's position off the newest frame of the observation (envs.darkroom
    position_of) and the goal from `tasks` (N, 2) cells (x, y); any shortest path earns
    optimal_return(goal), and this one does (tests). Actions: 0 stay, 1 up (y-1), 2 down (y+1),
    3 left (x-1), 4 right (x+1)."""
    pos = darkroom.position_of(np.asarray(obs)[..., -1])
    goals = np.asarray(tasks, np.int64)
    dx, dy = goals[:, 0] - pos[:, 0], goals[:, 1] - pos[:, 1]
    return np.select([dx > 0, dx < 0, dy > 0, dy < 0], [4, 3, 2, 1], default=0).astype(np.int64)


def columns_scripted(obs, env, tasks) -> np.ndarray:
    """minatar_columns' scripted task-aware policy (envs.minatar_columns.scripted_actions, the
    family's reference: its measured return is each task's `optimum`), aimed at each copy's own
    task: `tasks` (N, 3) paying columns as the mask it believes pays. It reads the blind
    observation (it never looks at the reveal channel) and nothing of the env's internals."""
    return minatar_columns.scripted_actions(obs, minatar_columns.paying_mask(tasks))


# The expert of each per-task family, by family name. Each knows the task (from `tasks`, one row
# per copy of the vector env), never from the frames, which are blind.
EXPERTS: dict[str, Callable] = {
    "darkroom": darkroom_optimal,
    "minatar_columns": columns_scripted,
}

SCHEDULES = ("linear",)


@dataclass(frozen=True)
class AnnealConfig:
    episodes: Positive = 60  # episodes per history (one task, one env copy, played back to back)
    anneal_episodes: NonNegative = 40  # the noise falls over episodes 0..anneal_episodes, then stays at the floor
    noise_start: Probability = 1.0  # eps of episode 0: 1.0 is uniformly random play
    noise_floor: Probability = 0.0  # eps from episode anneal_episodes on: 0.0 is the expert itself
    schedule: Literal[SCHEDULES] = "linear"  # how eps falls between them

    def __post_init__(self):
        bounds.check(self)  # each field's bounds and choices are in its annotation

    def epsilon(self, episode) -> np.ndarray | float:
        """eps(e) = noise_start + (noise_floor - noise_start) * min(1, e / anneal_episodes)
        (anneal_episodes 0: the floor from episode 0). Scalar or array of episode indices."""
        e = np.asarray(episode, np.float64)
        frac = np.ones_like(e) if self.anneal_episodes == 0 else np.minimum(1.0, e / self.anneal_episodes)
        eps = self.noise_start + (self.noise_floor - self.noise_start) * frac
        return float(eps) if eps.ndim == 0 else eps


def per_task_family(game: str) -> EnvFamily:
    """The family of `game` if its games hold tasks (the source needs a task per history)."""
    family = family_of(game)
    if not family.per_goal or family.name not in EXPERTS:
        valid = [f"{f.name} ({', '.join(f.games())})" for f in sorted(registered(), key=lambda f: f.name)
                 if f.per_goal and f.name in EXPERTS]
        raise ValueError(f"game {game!r} is in family {family.name!r}, which has no tasks to anneal an expert "
                         f"on; valid families: {'; '.join(valid)}")
    family.canonical(game)  # a misspelt game of a per-task family: its own error
    return family


def task_label(task) -> str:
    return "-".join(str(int(v)) for v in task)


def run_id_for(game: str, task, seed: int, session: str, algorithm: str = ALGORITHM) -> str:
    """'annealed-DarkRoom-t2-6-s0-<session>', 'annealed-MinAtar_SpaceInvaders-columns-t0-1-4-s0-<session>'."""
    return f"{algorithm}-{game.replace('/', '_')}-t{task_label(task)}-s{seed}-{session}"


def _shard_rows(frame_shape, shard_bytes: int, episode_steps: int) -> int:
    """Rows per shard so that a writer buffers about `shard_bytes` of raw frames (Dark Room's
    84x84 frames are 7x MinAtar's), at least one longest episode."""
    return max(episode_steps, int(shard_bytes) // int(np.prod(frame_shape)))


class AnnealedPlayer:
    """The annealed expert as a TaskPlayer: EXPERTS[family] on every copy, eps(e) by the schedule,
    nothing learned from the returns."""

    def __init__(self, expert: Callable, tasks, config: AnnealConfig):
        self.expert, self.tasks, self.config = expert, tasks, config

    def actions(self, obs, env) -> np.ndarray:
        return self.expert(obs, env, self.tasks)

    def epsilon(self, copy: int, episode: int) -> float:
        return self.config.epsilon(episode)

    def episode_ended(self, copy: int, episode: int, episode_return: float) -> None:
        pass


def annealed_histories(game: str, tasks, config: AnnealConfig = AnnealConfig(), seed: int = 0,
                       root: str = "", session: str | None = None, *, shard_bytes: int = 2 << 20,
                       progress: Callable[[str], None] | None = print, progress_every_s: float = 30.0,
                       goal_split: str | None = None) -> list[dict]:
    """Record one annealed-expert history per task of `tasks` under shard root `root`.

    Every task is a copy of one vector env; copy i plays `config.episodes` consecutive episodes
    of task i, each step's action the expert's (EXPERTS[family]) but, with probability
    eps(episode), a uniformly random one. One run per task (run_id_for), its run.json holding
    game, algorithm "annealed", expert, seed, goal (the task), hyperparameters (the AnnealConfig).
    Returns per run, in the order of `tasks`: {"run_id", "goal", "returns" (per episode),
    "steps" (per episode)}. `progress(line)` gets a line with totals every `progress_every_s`
    seconds and at the end (None: silent). Refuses runs that already have shards. `goal_split`
    names the family's split the tasks came from in each run.json (default: by version 1)."""
    family = per_task_family(game)
    expert = EXPERTS[family.name]
    return play_task_histories(
        game, tasks, AnnealedPlayer(expert, np.asarray(tasks, np.int64), config), episodes=config.episodes,
        seed=seed, root=root, session=session, algorithm=ALGORITHM,
        run_meta={"expert": expert.__name__, "hyperparameters": asdict(config)}, shard_bytes=shard_bytes,
        progress=progress, progress_every_s=progress_every_s, goal_split=goal_split)


def play_task_histories(game: str, tasks, player, *, episodes: int, seed: int, root: str,
                        session: str | None, algorithm: str, run_meta: dict, shard_bytes: int = 2 << 20,
                        progress: Callable[[str], None] | None = print, progress_every_s: float = 30.0,
                        goal_split: str | None = None) -> list[dict]:
    """Record one history per task, `episodes` consecutive episodes each, played by `player`
    (a TaskPlayer: `actions(obs, env)` for every copy, `epsilon(copy, episode)`, the chance that
    a step's action is replaced by a uniformly random one, and `episode_ended(copy, episode,
    return)`, where a player that learns from rewards learns). The loop, the noise streams, the
    shards and run.json (`run_meta` added) are the same for every per-task source; run ids are
    run_id_for(..., algorithm)."""
    if not root:
        raise ValueError("root: give a shard root (a local path or a pyarrow.fs URI)")
    family = per_task_family(game)
    game = family.canonical(game)
    tasks = np.asarray(tasks, np.int64)
    if tasks.ndim != 2 or len(tasks) == 0:
        raise ValueError(f"tasks: shape {tasks.shape} is not (N >= 1, task size) tasks of {game}")
    session = session or time.strftime("%Y%m%d-%H%M%S")
    run_ids = [run_id_for(game, t, seed, session, algorithm) for t in tasks]
    if len(set(run_ids)) != len(run_ids):
        raise ValueError(f"tasks: {tasks.tolist()} repeat a task; each task is one history")
    for run_id in run_ids:  # appending would splice two histories into one
        if read_catalog(root, run_id, include_rewound=True):
            raise FileExistsError(f"run {run_id!r} already has shards under {root!r}; record into another "
                                  "root or session, or delete that run first")

    env = family.make_vector_env(game, len(tasks), goals=tasks)
    n, num_actions = len(tasks), int(env.single_action_space.n) if hasattr(env, "single_action_space") \
        else family.num_actions(game)
    frame_shape = tuple(family.frame_shape)
    block = family.episode_steps or family.longest_episode  # noise drawn per episode, this many steps at a time
    heldout = {"darkroom": set(darkroom.HELDOUT_GOALS_V1),
               "minatar_columns": set(minatar_columns.HELDOUT_TASKS_V1)}.get(family.name, set())
    writers = []
    for task, run_id in zip(tasks, run_ids):
        write_run_metadata(root, run_id, {
            "game": game, "algorithm": algorithm, "seed": int(seed), **run_meta,
            "goal": task.tolist(), "optimal_return": float(family.optimum(task)),
            "goal_split": goal_split or ("heldout" if tuple(task.tolist()) in heldout else "train"),
            "num_actions": num_actions, "env_family": family.name,
            "frame_shape": list(frame_shape), "max_episode_steps": family.longest_episode,
            "session": session, "protocol": family.protocol, **family.metadata(game)})
        writers.append(ShardWriter(root=root, run_id=run_id, env_runner=0,
                                   static={"game": game, "algorithm": algorithm, "seed": int(seed)},
                                   max_rows=_shard_rows(frame_shape, shard_bytes, block)))

    rngs = [np.random.default_rng([int(seed), *(int(v) for v in task)]) for task in tasks]
    rows = np.arange(n)
    # The open episode of every copy, by step within it (grown if an episode outlasts `block`).
    buf_frames = np.zeros((n, block, *frame_shape), np.uint8)
    buf_actions = np.zeros((n, block), np.int64)
    buf_rewards = np.zeros((n, block), np.float32)
    noise_u = np.zeros((n, block))
    noise_a = np.zeros((n, block), np.int64)
    episode = np.zeros(n, np.int64)  # episodes each copy has completed
    t = np.zeros(n, np.int64)  # step within the open episode
    global_step = np.zeros(n, np.int64)
    eps = np.array([player.epsilon(i, 0) for i in range(n)], np.float64)
    returns = [[] for _ in range(n)]
    lengths = [[] for _ in range(n)]
    total = n * episodes

    def draw(i):
        noise_u[i] = rngs[i].random(block)
        noise_a[i] = rngs[i].integers(num_actions, size=block)

    for i in range(n):
        draw(i)
    obs, _ = env.reset(seed=int(seed))
    started = last_report = time.perf_counter()
    steps_taken = 0
    while (episode < episodes).any():
        active = episode < episodes
        if t.max() >= buf_frames.shape[1]:  # an episode longer than the block: grow the buffers
            grow = buf_frames.shape[1]
            buf_frames = np.concatenate([buf_frames, np.zeros_like(buf_frames)], axis=1)
            buf_actions, buf_rewards = (np.concatenate([b, np.zeros_like(b)], axis=1)
                                        for b in (buf_actions, buf_rewards))
            noise_u, noise_a = (np.concatenate([b, np.zeros_like(b)], axis=1) for b in (noise_u, noise_a))
            for i in np.flatnonzero(t >= grow):
                noise_u[i, grow:] = rngs[i].random(grow)
                noise_a[i, grow:] = rngs[i].integers(num_actions, size=grow)
        expert_actions = np.asarray(player.actions(obs, env), np.int64)
        explore = (noise_u[rows, t] < eps) & active
        actions = np.where(explore, noise_a[rows, t], expert_actions)
        buf_frames[rows, t] = family.newest_frame(obs)
        buf_actions[rows, t] = actions
        obs, rewards, terminated, truncated, info = env.step(actions)
        buf_rewards[rows, t] = rewards
        steps_taken += int(active.sum())
        lives = (np.asarray(info.get("lives", np.zeros(n)), np.int16) if isinstance(info, dict)
                 else np.zeros(n, np.int16))
        ended = np.logical_or(terminated, truncated)
        t[ended & ~active] = -1  # a finished history's copy plays on, unrecorded, until all finish
        for i in np.flatnonzero(ended & active):
            steps = int(t[i]) + 1
            done = np.zeros(steps, bool)
            term, trunc = done.copy(), done.copy()
            term[-1], trunc[-1] = bool(terminated[i]), bool(truncated[i])
            ret = float(buf_rewards[i, :steps].sum())
            writers[i].add(Episode(0, int(episode[i]), {
                "step": np.arange(steps, dtype=np.int32),
                "global_step": np.arange(global_step[i], global_step[i] + steps, dtype=np.int64),
                "policy_version": np.full(steps, episode[i], np.int64),
                "frame": buf_frames[i, :steps].copy(), "action": buf_actions[i, :steps].copy(),
                "reward": buf_rewards[i, :steps].copy(), "terminated": term, "truncated": trunc,
                "lives": np.full(steps, lives[i], np.int16),
                "epsilon": np.full(steps, eps[i], np.float32), "policy_outputs": None}, ret))
            returns[i].append(ret)
            lengths[i].append(steps)
            global_step[i] += steps
            player.episode_ended(int(i), int(episode[i]), ret)
            episode[i] += 1
            t[i] = -1
            eps[i] = player.epsilon(int(i), int(episode[i]))
            if episode[i] < episodes:
                draw(i)
        t += 1
        if progress and time.perf_counter() - last_report >= progress_every_s:
            last_report = time.perf_counter()
            progress(_progress_line(algorithm, game, returns, total, steps_taken, last_report - started))
    env.close()
    for writer in writers:
        writer.flush()
    if progress:
        progress(_progress_line(algorithm, game, returns, total, steps_taken, time.perf_counter() - started)
                 + " (done)")
    return [{"run_id": run_id, "goal": task.tolist(), "returns": r, "steps": s}
            for run_id, task, r, s in zip(run_ids, tasks, returns, lengths)]


def _progress_line(algorithm, game, returns, total, steps, seconds) -> str:
    done = sum(len(r) for r in returns)
    recent = [r[-1] for r in returns if r]
    return (f"[{algorithm}] {game}: episodes {done}/{total}, env steps {steps} "
            f"({steps / max(seconds, 1e-9):.0f}/s), {seconds:.0f}s; mean of last returns "
            f"{np.mean(recent) if recent else float('nan'):.2f}")


def learning_curve(summaries: list[dict], buckets: int = 10) -> dict[str, float]:
    """Mean return over tasks of the first `buckets` episodes, the middle ones and the last
    `buckets` (as histories of equal length)."""
    curves = np.array([s["returns"] for s in summaries], np.float64)
    return {"first": float(curves[:, :buckets].mean()), "middle": float(curves[:, buckets:-buckets].mean())
            if curves.shape[1] > 2 * buckets else float("nan"), "last": float(curves[:, -buckets:].mean())}


def _record(root, game, tasks, episodes, seed, settings: dict, *, session=None, goal_split=None,
            progress=None) -> list[str]:
    """The registry's entry (algorithms/sources.py)."""
    config = AnnealConfig(**{**settings, "episodes": episodes})
    summaries = annealed_histories(game, tasks, config, seed, root, session, progress=progress,
                                   goal_split=goal_split)
    return [s["run_id"] for s in summaries]


# Measured: 70 minatar_columns tasks x 60 episodes, 318k env steps in 11 s on this 2-core
# machine (python -m understudy.algorithms.annealed_source, quiet).
sources.register(sources.LocalSource(
    name=ALGORITHM, description="an expert played with annealed noise (AD-epsilon), one history per task",
    block="annealed", settings=AnnealConfig, families=tuple(EXPERTS), record=_record, steps_per_s=28_000.0,
    from_scratch=None))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", required=True, help="a per-task game: DarkRoom, MinAtar/SpaceInvaders-columns")
    parser.add_argument("--root", required=True, help="shard root (local path or URI)")
    parser.add_argument("--split", default="train", help="the family's task split: train, heldout, all")
    parser.add_argument("--tasks", type=int, default=None, help="only the first N tasks of the split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--session", default=None)
    for name, default in asdict(AnnealConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    try:
        family = per_task_family(args.game)
        config = AnnealConfig(**{k: getattr(args, k) for k in asdict(AnnealConfig())})
        tasks = family.goals(args.split)[:args.tasks]
    except ValueError as err:
        parser.error(str(err))
    began = time.perf_counter()
    summaries = annealed_histories(args.game, tasks, config, args.seed, args.root, args.session)
    seconds = time.perf_counter() - began
    steps = sum(sum(s["steps"]) for s in summaries)
    curve = learning_curve(summaries, min(10, config.episodes // 3 or 1))
    print(f"[annealed] {len(summaries)} histories x {config.episodes} episodes, {steps} env steps in "
          f"{seconds:.1f}s ({steps / seconds:.0f} steps/s) under {args.root}; mean return first/middle/last "
          f"{curve['first']:.2f} / {curve['middle']:.2f} / {curve['last']:.2f}", flush=True)


if __name__ == "__main__":
    main()
