"""The agents of an evaluation, and how they play: frozen players (imitators, the teacher,
random, no-op), the imitator that fine-tunes as it plays, and the teacher's algorithm learning
from scratch. Each (agent, game) is one Ray task; `play_episodes` is the loop they share.

  imitator   the distilled model, frozen (AD keeps its cross-episode context; recurrent AD its state)
  ed         an expert-only imitator (a distill stage with data.expert_last), frozen
  teacher    the teacher's final policy (only on the games it learned)
  random     uniform random actions;  noop  always action 0
  finetune   the imitator, updating its weights as it plays (algorithms.policy_gradient_finetune)
  scratch    the teacher's algorithm learning the game from scratch (learn_from_scratch)

Controls of in-context learning (CONTROLS): the imitator's own checkpoints, frozen, with one
thing about what they read changed; only for imitators that read across episodes
(algorithms/imitators.py: Imitator.cross_episode):
  context_reset  the context is cleared at every episode start (ContextReset)
  reward_blind   every reward it reads is 0; the env's raw returns are still what is scored (RewardBlind)
  warmup         its context is first filled with unscored episodes of a foreign task (foreign_env)

Env seeds are paired (eval_seed): every agent that plays training run s plays the same env seeds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import ray

from understudy.algorithms import sources
from understudy.platform import reproducibility, storage
from understudy.platform.config import CONTROLS  # the imitator's checkpoints, with one input changed
from understudy.platform.episode_gifs import EpisodeClip
from understudy.platform.manifests import TeachManifest
from understudy.platform.stages import StageFailed

AGENT_KINDS = ("imitator", "ed", "teacher", "random", "noop", "finetune", "scratch", *CONTROLS)
# Agents that play an imitator's checkpoint (make_player)
IMITATOR_KINDS = ("imitator", "ed", "finetune", *CONTROLS)


@dataclass(frozen=True)
class Agent:
    """One agent of an evaluation: what it is and what it plays with."""
    kind: str
    checkpoint: str | None = None  # imitators and teachers; a local path or a URI
    target_return: float | None = None  # Decision Transformer's return to ask for
    num_actions: int | None = None  # a teacher's action count (its checkpoint does not say)
    # The training seed of the run it plays; random and no-op play one run per imitator seed,
    # paired with it (same env seeds, eval_seed); None: no run (seeded as run 0).
    run_seed: int | None = None
    # The imitator its checkpoint holds, as its distill stage named it (a plug-in is imported by
    # this name, never by the checkpoint's); None: only a registered or installed one loads.
    algorithm: str | None = None

    def __post_init__(self):
        if self.kind not in AGENT_KINDS:
            raise ValueError(f"agent kind {self.kind!r}; valid: {', '.join(AGENT_KINDS)}")


def eval_seed(base: int, run_seed: int | None) -> int:
    """The env seed of every task that plays training run `run_seed` (None: as 0) in an
    evaluation of seed `base` (EvaluateConfig.seed):

        np.random.SeedSequence([base, run_seed]).generate_state(1)[0] >> 2

    A paired design: every agent of run s on a game (imitator, its controls, ed, random and
    no-op run s, the teacher of seed s) resets its env with the same seed, so their rows
    differ only by the agent; runs of different seeds play different env seeds. The env seeds
    its copies from it (MinAtar and ALE: copy i with seed + i; Dark Room is deterministic);
    the shift keeps it below 2**30, so seed + i stays an int32 for any number of copies. The
    player's own randomness (random actions, sampling, GLA permutations) is drawn from it too."""
    return int(np.random.SeedSequence([int(base), int(run_seed or 0)]).generate_state(1)[0]) >> 2


def make_env(game: str, protocol: dict, copies: int, max_episode_steps, goal_split: str):
    """A vector env whose copies reset in the same step an episode ends (envs.families)."""
    from understudy.envs.families import make_play_env

    return make_play_env(game, copies, protocol=protocol, max_episode_steps=max_episode_steps,
                         goal_split=goal_split)


def model_stack(game: str, stack: int) -> int:
    """Frames per observation a player of `stack` frames reads in `game`: 0 where one frame is
    the whole observation (MinAtar)."""
    from understudy.envs import family_of

    return stack if family_of(game).stacked else 0


def num_actions_of(env, game: str) -> int:
    """The actions of `game` in `env`: its action space, else (an env without one) its family's
    count."""
    space = getattr(env, "single_action_space", None)
    if space is not None:
        return int(space.n)
    from understudy.envs import family_of

    return family_of(game).num_actions(game)


class _Stateless:
    """A policy of observations alone behind the players' common act() signature."""

    def __init__(self, fn):
        self.fn = fn

    def act(self, obs, prev_action, prev_reward, new_episode):
        return self.fn(obs)


class _Control:
    """An imitator's player (imitation.AsTrained) seen through a control: what it is given each
    step is changed before it sees it; everything else (episodes_in_context, meta, last_logits,
    ...) is the player's own."""

    def __init__(self, player, num_env_actions: int):
        self.player, self.n_env = player, num_env_actions

    def __getattr__(self, name):
        if name == "player":  # not set yet (a copy being built): never recurse
            raise AttributeError(name)
        return getattr(self.player, name)


def clear_context(policy, rows) -> None:
    """Empty the windows of `rows` (bool (N,)) of a cross-episode player (ad.Policy,
    ad_gru.Policy), and a recurrent one's state: the next step is read as the first of a
    training window, from a zero state."""
    import torch

    with torch.inference_mode():  # the players' tensors are made in it
        rows = torch.as_tensor(np.asarray(rows, bool), device=policy.steps.length.device)
        policy.steps.length[rows] = 0
        if getattr(policy, "state", None) is not None:  # recurrent AD: (layers, N, d)
            policy.state[:, rows] = 0.0


class ContextReset(_Control):
    """`context_reset`: the imitator sees only the current episode. At each episode start its
    window (and recurrent AD's state) is emptied and the step's previous action and reward are
    "none yet" and 0, exactly ContextPolicy's `reset_each_episode` (as Decision Transformer
    plays). Why not keep the previous episode's last action and reward on that first token, as
    an AD training window that starts at an episode start mid-history has them: they are one
    step of the previous episode (in Dark Room its last reward says whether it ended on the
    goal), and this control must read nothing of earlier episodes. The token it gets instead is
    the one every training history starts with, so it is still one the model was trained on."""

    def act(self, obs, prev_action, prev_reward, new_episode):
        new = np.asarray(new_episode, bool)
        if new.any():
            prev_action = np.where(new, self.n_env, prev_action)  # the env's "no action yet" id
            prev_reward = np.where(new, 0.0, prev_reward).astype(np.float32)
            clear_context(self.player.policy, new)
        return self.player.act(obs, prev_action, prev_reward, new_episode)


class RewardBlind(_Control):
    """`reward_blind`: every reward the imitator reads is 0 (in its context too: every token
    is made from what act() is given); the env's raw rewards are still what play_episodes scores."""

    def act(self, obs, prev_action, prev_reward, new_episode):
        return self.player.act(obs, prev_action, np.zeros(len(prev_action), np.float32), new_episode)


class _ActsRandomly(_Control):
    """Warm-up on a game without tasks: the player reads every step (its context fills with
    them) but uniform random actions are played, so its context holds a random-play history."""

    def __init__(self, player, num_env_actions: int, seed: int):
        super().__init__(player, num_env_actions)
        self.rng = np.random.default_rng(seed)

    def act(self, obs, prev_action, prev_reward, new_episode):
        self.player.act(obs, prev_action, prev_reward, new_episode)
        return self.rng.integers(self.n_env, size=len(obs))


def make_player(agent: Agent, num_envs: int, num_actions: int, greedy: bool, seed: int,
                game: str = "", protocol: dict | None = None, device=None):
    """(player with act(obs, prev_action, prev_reward, new_episode), frames per observation,
    the model if there is one). An imitator plays as it was trained (its checkpoint's data
    transforms, imitation.AsTrained), on `device` (default: the GPU if there is one); the
    controls context_reset and reward_blind wrap that player; warmup is that player, which
    play() first warms up (warm_up)."""
    if agent.kind == "random":
        rng = np.random.default_rng(seed)
        return _Stateless(lambda obs: rng.integers(num_actions, size=len(obs))), 1, None
    if agent.kind == "noop":
        return _Stateless(lambda obs: np.zeros(len(obs), np.int64)), 1, None
    if agent.kind in IMITATOR_KINDS:
        from understudy.algorithms import imitation, imitators

        model, meta = imitation.load(agent.checkpoint, expect=agent.algorithm)
        if agent.kind in CONTROLS and not imitators.get(model.spec["algorithm"]).cross_episode:
            raise StageFailed(f"{agent.kind} on {game}: a control of in-context learning needs an imitator that "
                              f"reads across episodes ({', '.join(imitators.cross_episode())}); this one is "
                              f"{model.spec['algorithm']!r}")
        model = model.to(device or imitation.inference_device())
        policy = imitation.policy(model, num_envs, greedy=greedy, seed=seed, target_return=agent.target_return)
        try:
            player = imitation.as_trained(policy, meta, num_actions, num_envs, game,
                                          bool((protocol or {}).get("full_action_space")), seed)
        except ValueError as err:
            raise StageFailed(f"{agent.kind} on {game}: {err}") from None
        if agent.kind == "context_reset":
            player = ContextReset(player, num_actions)
        elif agent.kind == "reward_blind":
            player = RewardBlind(player, num_actions)
        return player, model.sample_spec().stack, model
    if agent.kind == "teacher":
        from understudy.algorithms.teachers import load_teacher_policy

        if agent.num_actions != num_actions:
            raise StageFailed(
                f"the teacher acts with {agent.num_actions} actions but {game} has {num_actions} under "
                "the teacher's protocol; teach with protocol.full_action_space: true to play across games")
        return _Stateless(load_teacher_policy(agent.checkpoint)), 4, None
    raise ValueError(f"agent kind {agent.kind!r} does not play from a checkpoint here")


class Progress:
    """Prints `label: done/total episodes` at most every `every_s` seconds (and at the end), so
    a long evaluation task shows where it is between its start and its result."""

    def __init__(self, label: str, total: int, every_s: float = 30.0, clock=time.monotonic, out=print,
                 step_total: int | None = None):
        """`step_total`: a task with an env-step budget shows steps against it instead."""
        self.label, self.total, self.every_s, self.clock, self.out = label, total, every_s, clock, out
        self.step_total = step_total
        self.started = self.last = clock()
        self.steps = 0

    def __call__(self, episodes_done: int, steps: int) -> None:
        self.steps = steps
        now = self.clock()
        if now - self.last >= self.every_s or (self.step_total is None and episodes_done >= self.total):
            self.last = now
            elapsed = now - self.started
            done = (f"{min(steps, self.step_total)}/{self.step_total} env steps (its budget), {episodes_done} episodes"
                    if self.step_total is not None else
                    f"{min(episodes_done, self.total)}/{self.total} episodes, {steps} env steps")
            self.out(f"[evaluate] {self.label}: {done}, {elapsed:.0f}s ({steps / max(elapsed, 1e-9):.0f} steps/s)")


def play_episodes(env, player, stack: int, num_actions: int, episodes: int, seed: int,
                  on_step=None, progress=None, env_steps: int | None = None,
                  carry: dict | None = None, clip=None) -> list[list[dict]]:
    """The player sees the newest `stack` frames of each observation (0: the whole observation,
    see model_stack). Each of the env's N copies plays `episodes` consecutive episodes with the same player,
    which sees the previous action and reward and where episodes start (so a player with
    memory can carry it from one episode to the next). The env resets in the same step an
    episode ends. `on_step(obs, actions, rewards, done, active)` sees every step (learners use
    it; `active`: with a budget, the copies still within it, else None);
    `progress(episodes_done, env_steps)` is called after every step (counting each copy's
    episodes up to `episodes`). Returns, per copy, each episode's raw return and length, in order;
    with a context player, also how many of its episodes' starts its window held when the
    episode began (`episodes_in_context`).

    With `env_steps`, a budget instead of an episode count: each copy plays whole episodes until
    it has taken its share (env_steps / copies; the episode that crosses it is finished), at
    least one; copies that finish early keep stepping, their extra episodes not kept. The copies
    are then cut to the same number of episodes (the fewest any copy played), so every episode
    index is an average over all copies.

    `carry`: a player that goes on from an earlier call (the warmup control) keeps its stream:
    the first step's previous action and reward are carry's "prev_action"/"prev_reward" when it
    has them (else none yet and 0), and the call leaves its last step's there, with the
    "env_steps" it took.

    `clip` (episode_gifs.EpisodeClip) is shown copy 0's observations and the ends of its
    episodes, up to its last one that counts."""
    obs, _ = env.reset(seed=seed)
    n = len(obs)
    prev_action, prev_reward = np.full(n, num_actions), np.zeros(n, np.float32)
    if carry and "prev_action" in carry:
        prev_action, prev_reward = np.array(carry["prev_action"]), np.array(carry["prev_reward"], np.float32)
    new_episode = np.ones(n, bool)
    ret, length = np.zeros(n), np.zeros(n, int)
    in_context = np.zeros(n, int)
    counts = getattr(player, "episodes_in_context", None)
    played: list[list[dict]] = [[] for _ in range(n)]
    steps = 0
    share = None if env_steps is None else -(-int(env_steps) // n)
    used = np.zeros(n, int)

    def finished(i: int) -> bool:
        if share is None:
            return len(played[i]) >= episodes
        return len(played[i]) >= 1 and used[i] >= share

    while not all(finished(i) for i in range(n)):
        recording = clip is not None and not finished(0)
        if recording:
            clip.frame(obs[0])
        actions = np.asarray(player.act(obs[..., -stack:] if stack else obs, prev_action, prev_reward,
                                        new_episode))
        if counts is not None and new_episode.any():
            # the new episode's own start is in the window now: the ones before it are earlier episodes
            in_context = np.where(new_episode, np.asarray(counts()) - 1, in_context)
        active = None if share is None else np.array([not finished(i) for i in range(n)])
        next_obs, rewards, terminated, truncated, _ = env.step(actions)
        done = terminated | truncated
        if on_step is not None:
            on_step(obs, actions, rewards, done, active)
        ret, length = ret + rewards, length + 1
        steps += n
        for i in np.flatnonzero(done):
            if share is not None and finished(i):
                continue  # past its budget: not kept
            episode = {"return": float(ret[i]), "length": int(length[i]), "truncated": bool(truncated[i])}
            if counts is not None:
                episode["episodes_in_context"] = int(in_context[i])
            played[i].append(episode)
            used[i] += int(length[i])
            if i == 0 and recording:
                clip.end()
        ret[done], length[done] = 0.0, 0
        obs, prev_action, prev_reward, new_episode = next_obs, actions, rewards.astype(np.float32), done
        if progress is not None:
            progress(sum(min(len(p), episodes) for p in played), steps)
    if share is not None:
        episodes = min(len(p) for p in played)
    if carry is not None:
        carry.update(prev_action=prev_action, prev_reward=prev_reward, env_steps=steps)
    return [p[:episodes] for p in played]


def foreign_env(game: str, protocol: dict, copies: int, max_episode_steps, goal_split: str):
    """(env, source): where the warmup control fills its context before the scored episodes,
    with as many copies as the scored env, in the same order. A game with tasks (Dark Room):
    the same rooms with each goal rotated by one within the split (the copies of goal i play
    goal i + 1, the last goal's the first's), a task the copy never scores on: "other_goal".
    A game that is one task has no foreign task of its own game: the same game, played with
    random actions (warm_up), so the context holds a history that is not the imitator's own
    and not a learner's: "random_actions"."""
    from understudy.envs import family_of

    family = family_of(game)
    if family.per_goal:
        goals = np.asarray(family.goals(goal_split))
        if len(goals) < 2:
            raise StageFailed(f"warmup on {game}: goal_split {goal_split!r} has one goal, no other to warm up on")
        rotated = np.repeat(np.roll(goals, -1, axis=0), copies, axis=0)
        return family.make_vector_env(game, len(rotated), goals=rotated), "other_goal"
    return make_env(game, protocol, copies, max_episode_steps, goal_split), "random_actions"


def warm_up(player, game: str, protocol: dict, copies: int, max_episode_steps, goal_split: str, stack: int,
            num_actions: int, episodes: int, seed: int, carry: dict) -> dict:
    """The warmup control's unscored first part: `episodes` episodes per copy on the foreign
    task (foreign_env), the player keeping its context afterwards; its env seed is drawn from
    `seed` apart from the scored env's. `carry` then holds the stream's last step, so the
    scored episodes continue it as one history would. What it played, reported apart from the
    scored episodes: warmup_source, warmup_episodes, warmup_env_steps, warmup_returns."""
    env, source = foreign_env(game, protocol, copies, max_episode_steps, goal_split)
    warm_seed = eval_seed(seed, 1)  # apart from the scored env's seed, drawn the same way
    playing = _ActsRandomly(player, num_actions, warm_seed) if source == "random_actions" else player
    print(f"[evaluate] warmup on {game}: {episodes} unscored episodes per copy ({source}) first", flush=True)
    try:
        played = play_episodes(env, playing, stack, num_actions, episodes, warm_seed, carry=carry)
    finally:
        env.close()
    return {"warmup_source": source, "warmup_episodes": episodes, "warmup_env_steps": int(carry["env_steps"]),
            "warmup_returns": [[e["return"] for e in p] for p in played]}


@ray.remote(num_cpus=1)
def play(agent: Agent, game: str, protocol: dict, episodes: int, copies: int, max_episode_steps,
         greedy: bool, seed: int, goal_split: str = "heldout", finetune: dict | None = None,
         replay_games: tuple = (), progress_s: float = 30.0, gpus: float = 0,
         env_steps: int | None = None, warmup_episodes: int = 0) -> dict:
    """One agent, one game: `copies` copies each play `episodes` consecutive episodes, or with
    `env_steps` whole episodes until they have taken that many env steps together (the
    imitator's, so baselines play equal env steps; play_episodes). `seed`: the env seed (the
    evaluation's eval_seed of the agent's run), recorded as "eval_seed".
    With `replay_games` (after fine-tuning), the tuned weights then play those games frozen.
    The warmup control first plays `warmup_episodes` unscored episodes (warm_up).
    `gpus`: the GPU (share) this task was given for the model (platform/resources.py), else the CPU.
    `started`/`ended` (seconds since the epoch): when this task played, for its MLflow run."""
    import torch

    started = time.time()
    torch.set_num_threads(1)
    # torch's global random stream from this task's seed: fine-tuning draws dropout masks from
    # it, and Ray reuses worker processes, so it would otherwise depend on the tasks before.
    torch.manual_seed(seed)
    env = make_env(game, protocol, copies, max_episode_steps, goal_split)
    num_actions = num_actions_of(env, game)
    with storage.local_copy(agent.checkpoint) as checkpoint:
        player, stack, model = make_player(replace(agent, checkpoint=checkpoint), env.num_envs,
                                           num_actions, greedy, seed, game, protocol,
                                           device="cuda" if gpus else "cpu")
    stack = model_stack(game, stack)
    on_step = None
    if agent.kind == "finetune":
        from understudy.algorithms.policy_gradient_finetune import PolicyGradientFinetune
        from understudy.envs import family_of

        learner = PolicyGradientFinetune(model, player, env.num_envs,
                                         newest_frame=family_of(game).newest_frame, **finetune)

        def on_step(obs, actions, rewards, done, active):  # it learns from steps as the model sees them
            learner.on_step(*player.model_step(obs, actions, rewards), done, active)
    progress = Progress(f"{agent.kind} on {game}", episodes * env.num_envs, progress_s,
                        out=lambda line: print(line, flush=True), step_total=env_steps)
    carry, warmed = {}, {}
    clip = EpisodeClip()  # copy 0's first and last episode, to watch (episode_gifs.py)
    try:
        if agent.kind == "warmup":
            if warmup_episodes < 1:
                raise StageFailed(f"warmup on {game}: warmup_episodes is {warmup_episodes}; give at least 1")
            warmed = warm_up(player, game, protocol, copies, max_episode_steps, goal_split, stack, num_actions,
                             warmup_episodes, seed, carry)
        played = play_episodes(env, player, stack, num_actions, episodes, seed, on_step=on_step,
                               progress=progress, env_steps=env_steps, carry=carry, clip=clip)
    finally:
        env.close()
    from understudy.envs import family_of

    out = {"eval_seed": int(seed), **warmed, "gifs": clip.gifs(family_of(game).stacked),
           "returns": [[e["return"] for e in p] for p in played],
           "lengths": [[e["length"] for e in p] for p in played],
           "episodes_in_context": [[e.get("episodes_in_context") for e in p] for p in played],
           "truncated": [[e["truncated"] for e in p] for p in played],
           "gradient_steps": learner.steps_trained if on_step else 0, "replays": {}, "started": started,
           "threads": reproducibility.threads()}  # what this task played with (platform/reproducibility.py)
    for other in replay_games:  # forgetting: the tuned weights, frozen, back on earlier games
        from understudy.algorithms import imitation

        env = make_env(other, protocol, copies, max_episode_steps, goal_split)
        frozen = imitation.as_trained(
            imitation.policy(model, env.num_envs, greedy=greedy, seed=seed, target_return=agent.target_return),
            player.meta, num_actions_of(env, other), env.num_envs, other, bool(protocol.get("full_action_space")), seed)
        try:
            # the same episodes and context rules as the untuned imitator played there
            replay = play_episodes(env, frozen, model_stack(other, model.sample_spec().stack),
                                   num_actions_of(env, other), episodes, seed)
        finally:
            env.close()
        out["replays"][other] = [[e["return"] for e in p] for p in replay]
    out["ended"] = time.time()
    return out


@ray.remote(num_cpus=1)
def learn_from_scratch(teach: TeachManifest, game: str, env_steps: int, copies: int, max_episode_steps,
                       seed: int, goal_split: str) -> dict:
    """The teacher's algorithm from scratch on `game` for `env_steps`: `returns`, per copy of
    the game, its episode returns in order (Atari: recorded through the shard path into a
    scratch folder, episodes dealt to copies in the order they finished; as many copies as the
    teacher had envs); `started`/`ended`, when it learned."""
    started = time.time()
    returns = _learn_from_scratch(teach, game, env_steps, copies, max_episode_steps, seed, goal_split)
    return {"returns": returns, "started": started, "ended": time.time(), "threads": reproducibility.threads()}


def _learn_from_scratch(teach: TeachManifest, game: str, env_steps: int, copies: int, max_episode_steps,
                        seed: int, goal_split: str) -> list[list[float]]:
    import tempfile

    import torch

    torch.set_num_threads(1)
    source = sources.local_source(teach.algorithm)
    if source is not None:  # a history source of one learner per task (Dark Room's Q-learning)
        from understudy.envs import family_of

        if source.from_scratch is None:
            raise StageFailed(f"scratch: teach stage {teach.name!r} recorded with {source.name!r} "
                              f"({source.description}), which is not a learner: there is no from-scratch run")
        family = family_of(game)
        goals = np.repeat(family.goals(goal_split), copies, axis=0)
        episodes = max(1, env_steps // ((family.episode_steps or family.longest_episode) * len(goals)))
        # The teacher's own hyper-parameters (older manifests: the defaults), on a fresh schedule.
        known = set(source.settings.__dataclass_fields__)
        settings = {k: v for k, v in teach.hyperparameters.items() if k in known}
        return np.asarray(source.from_scratch(game, goals, episodes, settings, 1000 + seed)).tolist()
    from understudy.algorithms.teachers import recording_algorithm, teacher_config_from
    from understudy.histories import shards

    if not teach.hyperparameters.get("settings"):
        raise ValueError(f"teach stage {teach.name!r}: its manifest records no teacher settings (made "
                         "before they were recorded); run teach again to compare with RL from scratch")
    root = tempfile.mkdtemp(prefix="understudy-scratch-")
    # Exactly the teacher's settings (network, learning rate, envs, reward transform,
    # hyper-parameters), its schedules laid over this budget; only the episode cap is the
    # evaluation's, so both play the same episodes.
    settings = teach.hyperparameters
    copies = settings["num_envs"] * max(1, settings["num_env_runners"])
    # A budget below one of the teacher's batches is one batch of whole rounds of its envs
    # (RLlib's batch must be a multiple of them).
    per_iter = -(-min(settings["env_steps_per_iter"], env_steps) // copies) * copies
    config = teacher_config_from(
        settings, game=game, seed=seed, env_steps=env_steps,
        env_steps_per_iter=per_iter, max_episode_steps=max_episode_steps,
        record={"root": root, "session": "scratch", "algorithm": teach.algorithm, "shard_rows": 10**6})
    algo = recording_algorithm(config.algo_class)(config=config)
    started, last = time.monotonic(), time.monotonic()
    try:
        while (done := algo.train()["env_runners"]["num_env_steps_sampled_lifetime"]) < env_steps:
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                print(f"[evaluate] scratch on {game}: {done}/{env_steps} env steps, "
                      f"{last - started:.0f}s", flush=True)
    finally:
        algo.stop()
    run_id = shards.list_runs(root)[0]
    episodes = sorted(shards.episode_returns(root, run_id), key=lambda e: e["last_global_step"])
    returns = [e["return"] for e in episodes]
    n = len(returns) // copies  # episode i of every copy: the i-th round of finished episodes
    return np.array(returns[:n * copies]).reshape(n, copies).T.tolist()
