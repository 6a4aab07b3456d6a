"""Column-finding learners: minatar_columns histories whose improvement comes only from rewards.

An annealed expert (annealed_source) knows its task from episode 1; its return rises because
its noise falls, which a model can read from the actions alone (Rung 1, docs/results.md). Here
the player does not know the task. Each episode it aims the family's scripted player
(envs.minatar_columns.scripted_actions) at K = 3 columns it believes pay, sees the episode's
return, and updates its belief, so its aim, and with it its return, moves towards the paying
columns only through the rewards it was paid.

The belief is Bayesian linear regression of an episode's return on the aim, Thompson sampling
the next aim (Agrawal and Goyal 2013, "Thompson Sampling for Contextual Bandits with Linear
Payoffs"). With x in {0, 1}^10 the columns aimed at,

    return = x . w + noise,  w ~ N(prior_mean, prior_std^2 I),  noise ~ N(0, return_noise_std^2)

and after each episode the posterior over w is updated in closed form; the next aim is the top
K of one draw from it. Episode 0's aim is a draw from the prior: K columns at random. A paying
column aimed at adds about 4 to an episode's return (the scripted player aimed at its task
scores 12.86, at a wrong task 2.99: envs/data/minatar_columns_reference.csv), so a history
rises from about a wrong aim's return to the task-aware one's within tens of episodes.

Actions may be replaced by uniformly random ones with a constant probability `action_noise`
(0 by default): constant, so nothing in a history's actions says how far into it a step is.
Each task's belief draws come from its own stream, seeded by (seed, *task, 1), apart from the
action-noise stream of the shared loop (annealed_source.play_task_histories, which writes the
shards): a history is fixed by (task, config, seed) and the env's seed. Each run.json holds the
aim of every episode (`aims`), so a reader can see what the learner believed when.

    python -m understudy.algorithms.thompson_source --split train_v2 --root /tmp/shards --episodes 60
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

import numpy as np

from understudy.algorithms import bounds, sources
from understudy.algorithms.annealed_source import learning_curve, play_task_histories
from understudy.algorithms.bounds import Positive, PositiveFloat, Probability
from understudy.envs import minatar_columns
from understudy.envs.families import family_of
from understudy.histories.shards import read_run_metadata, write_run_metadata

ALGORITHM = "thompson"


@dataclass(frozen=True)
class ThompsonConfig:
    episodes: Positive = 60  # episodes per history (one task, played back to back)
    prior_mean: float = 0.0  # prior mean of each column's worth (return per episode aimed at it)
    prior_std: PositiveFloat = 3.0  # prior spread of each column's worth
    return_noise_std: PositiveFloat = 3.0  # the spread of an episode's return given its aim, as assumed
    action_noise: Probability = 0.0  # constant chance of a uniformly random action instead of the aim's

    def __post_init__(self):
        bounds.check(self)  # each field's bounds are in its annotation


class ThompsonColumnsPlayer:
    """A TaskPlayer (annealed_source.play_task_histories) that finds each copy's paying columns by
    Thompson sampling on episode returns. It never reads `tasks`: only the returns it is told."""

    def __init__(self, num_tasks: int, config: ThompsonConfig, streams: list):
        """`streams`: one numpy Generator per copy, the source of its belief draws."""
        self.config = config
        self.rngs = streams
        columns = minatar_columns.COLUMNS
        self.precision = np.tile(np.eye(columns) / config.prior_std ** 2, (num_tasks, 1, 1))
        self.shift = np.full((num_tasks, columns), config.prior_mean / config.prior_std ** 2)
        self.aims = np.zeros((num_tasks, columns), bool)
        self.history: list[list[list[int]]] = [[] for _ in range(num_tasks)]  # per copy, per episode
        for i in range(num_tasks):
            self._choose(i)

    def posterior(self, copy: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the copy's belief over the columns' worth."""
        cov = np.linalg.inv(self.precision[copy])
        return cov @ self.shift[copy], cov

    def _choose(self, copy: int) -> None:
        mean, cov = self.posterior(copy)
        draw = self.rngs[copy].multivariate_normal(mean, cov, method="cholesky")
        self.aims[copy] = False
        self.aims[copy, np.argsort(-draw, kind="stable")[:minatar_columns.K]] = True
        self.history[copy].append(np.flatnonzero(self.aims[copy]).tolist())

    def actions(self, obs, env) -> np.ndarray:
        return minatar_columns.scripted_actions(obs, self.aims)

    def epsilon(self, copy: int, episode: int) -> float:
        return self.config.action_noise

    def episode_ended(self, copy: int, episode: int, episode_return: float) -> None:
        x = self.aims[copy].astype(np.float64)
        noise = self.config.return_noise_std ** 2
        self.precision[copy] += np.outer(x, x) / noise
        self.shift[copy] += x * float(episode_return) / noise
        if episode + 1 < self.config.episodes:
            self._choose(copy)


def thompson_histories(tasks, config: ThompsonConfig = ThompsonConfig(), seed: int = 0, root: str = "",
                       session: str | None = None, *, progress=print, goal_split: str | None = None,
                       game: str = minatar_columns.GAME) -> list[dict]:
    """Record one column-finding history per task of `tasks` ((N, 3) paying columns) under shard
    root `root`. Returns per run, in the order of `tasks`: {"run_id", "goal", "returns",
    "steps", "aims" (the K columns aimed at in each episode)}."""
    family = family_of(game)
    if family.name != "minatar_columns":
        raise ValueError(f"game {game!r} is in family {family.name!r}; the column-finding learner plays "
                         f"minatar_columns only ({minatar_columns.GAME})")
    tasks = minatar_columns.check_tasks(tasks)
    streams = [np.random.default_rng([int(seed), *(int(v) for v in task), 1]) for task in tasks]
    player = ThompsonColumnsPlayer(len(tasks), config, streams)
    # The aims are known only as they are chosen: run.json, written before play, gets them after.
    summaries = play_task_histories(
        game, tasks, player, episodes=config.episodes, seed=seed, root=root, session=session,
        algorithm=ALGORITHM, run_meta={"expert": "thompson_columns", "hyperparameters": asdict(config)},
        progress=progress, goal_split=goal_split)
    for summary, aims in zip(summaries, player.history):
        summary["aims"] = aims
        meta = read_run_metadata(root, summary["run_id"])
        meta.pop("run_id"), meta.pop("schema_version")
        write_run_metadata(root, summary["run_id"], {**meta, "aims": aims})
    return summaries


def _record(root, game, tasks, episodes, seed, settings: dict, *, session=None, goal_split=None,
            progress=None) -> list[str]:
    """The registry's entry (algorithms/sources.py)."""
    config = ThompsonConfig(**{**settings, "episodes": episodes})
    summaries = thompson_histories(tasks, config, seed, root, session, progress=progress,
                                   goal_split=goal_split, game=game)
    return [s["run_id"] for s in summaries]


sources.register(sources.LocalSource(
    name=ALGORITHM, description="a learner that finds each task's paying columns by Thompson sampling on "
                                "episode returns, one history per task",
    block="thompson", settings=ThompsonConfig, families=("minatar_columns",), record=_record,
    steps_per_s=25_000.0, from_scratch=None))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="shard root (local path or URI)")
    parser.add_argument("--split", default="train_v2", help="the family's task split: train_v2, heldout_v2, ...")
    parser.add_argument("--tasks", type=int, default=None, help="only the first N tasks of the split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--session", default=None)
    for name, default in asdict(ThompsonConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    try:
        config = ThompsonConfig(**{k: getattr(args, k) for k in asdict(ThompsonConfig())})
        tasks = minatar_columns.task_goals(args.split)[:args.tasks]
    except ValueError as err:
        parser.error(str(err))
    began = time.perf_counter()
    summaries = thompson_histories(tasks, config, args.seed, args.root, args.session, goal_split=args.split)
    seconds = time.perf_counter() - began
    steps = sum(sum(s["steps"]) for s in summaries)
    curve = learning_curve(summaries, min(10, config.episodes // 3 or 1))
    found = np.mean([set(s["aims"][-1]) == set(s["goal"]) for s in summaries])
    print(f"[thompson] {len(summaries)} histories x {config.episodes} episodes, {steps} env steps in "
          f"{seconds:.1f}s ({steps / seconds:.0f} steps/s); mean return first/middle/last "
          f"{curve['first']:.2f} / {curve['middle']:.2f} / {curve['last']:.2f}; last aim is the task in "
          f"{found:.0%} of histories", flush=True)


if __name__ == "__main__":
    main()
