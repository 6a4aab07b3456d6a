"""Stage 3, evaluate: does the frozen imitator keep learning?

Every agent plays `episodes` consecutive episodes in each of `copies` copies of every game,
carrying whatever memory it has from one episode to the next, as parallel Ray tasks. Agents:
  imitator   the distilled model, frozen (AD and recurrent AD keep their cross-episode memory)
  ed         an expert-only imitator (a distill stage with data.expert_last), frozen
  teacher    the teacher's final policy (only on the games it learned)
  random     uniform random actions;  noop  always action 0
  finetune   the imitator, updating its weights by gradient descent on its own best episodes
             (self-imitation: its own loss on the episodes that beat its median so far)
  scratch    the teacher's algorithm learning the game from scratch, for the same env steps
After fine-tuning on a game, `forgetting` replays the fine-tuned weights on the training games.
Per agent and game: the return of every episode (curves with confidence bands, one panel per
game), in-context improvement, "exceeds the data", human-normalised scores aggregated as an
interquartile mean with stratified bootstrap intervals; a Markdown and an HTML table.
"""
from __future__ import annotations

import html
import time

import numpy as np
import ray

from understudy.platform import metrics, plots, storage, tracking
from understudy.platform.config import EvaluateConfig
from understudy.platform.teach import StageFailed
from understudy.platform.workspace import Workspace

DARKROOM = "DarkRoom"


# ---- environments and players ---------------------------------------------------------------

def make_env(game: str, protocol: dict, copies: int, max_episode_steps, goal_split: str):
    """A vector env whose copies reset in the same step an episode ends."""
    if game == DARKROOM:
        from understudy.envs.darkroom import DarkRoomFrames, darkroom_goals

        return DarkRoomFrames(np.repeat(darkroom_goals(goal_split), copies, axis=0))
    from understudy.envs import AtariProtocol, make_atari_vector_env

    return make_atari_vector_env(game, AtariProtocol(**protocol), num_envs=copies,
                                 max_episode_steps=max_episode_steps, same_step_reset=True)


def num_actions_of(env) -> int:
    space = getattr(env, "single_action_space", None)
    if space is not None:
        return int(space.n)
    from understudy.envs.darkroom import NUM_ACTIONS

    return NUM_ACTIONS


class _Stateless:
    """A policy of observations alone behind the players' common act() signature."""

    def __init__(self, fn):
        self.fn = fn

    def act(self, obs, prev_action, prev_reward, new_episode):
        return self.fn(obs)


def make_player(agent: dict, num_envs: int, num_actions: int, greedy: bool, seed: int):
    """(player with act(obs, prev_action, prev_reward, new_episode), frames per observation,
    the model if there is one)."""
    kind = agent["kind"]
    if kind == "random":
        rng = np.random.default_rng(seed)
        return _Stateless(lambda obs: rng.integers(num_actions, size=len(obs))), 1, None
    if kind == "noop":
        return _Stateless(lambda obs: np.zeros(len(obs), np.int64)), 1, None
    if kind in ("imitator", "ed", "finetune"):
        from understudy.algorithms import imitation

        model, meta = imitation.load(agent["checkpoint"])
        have, stack = meta["num_actions"], meta["stack"]
        player = imitation.policy(model, num_envs, greedy=greedy, seed=seed,
                                  target_return=agent.get("target_return"))
    elif kind == "teacher":
        from understudy.algorithms.teachers import load_teacher_policy

        have, stack, model = agent["num_actions"], 4, None
        player = _Stateless(load_teacher_policy(agent["checkpoint"]))
    else:
        raise ValueError(f"agent kind {kind!r}; valid: imitator, ed, teacher, random, noop, finetune")
    if have != num_actions:
        raise StageFailed(
            f"{kind} acts with {have} actions but this game has {num_actions} under the "
            "teacher's protocol; teach with protocol.full_action_space: true to play across games")
    return player, stack, model


def play_episodes(env, player, stack: int, num_actions: int, episodes: int, seed: int,
                  on_step=None) -> list[list[dict]]:
    """Each of the env's N copies plays `episodes` consecutive episodes with the same player,
    which sees the previous action and reward and where episodes start (so a player with
    memory can carry it from one episode to the next). The env resets in the same step an
    episode ends. `on_step(obs, actions, rewards, done)` sees every step (learners use it).
    Returns, per copy, each episode's raw return and length, in order."""
    obs, _ = env.reset(seed=seed)
    n = len(obs)
    prev_action, prev_reward = np.full(n, num_actions), np.zeros(n, np.float32)
    new_episode = np.ones(n, bool)
    ret, length = np.zeros(n), np.zeros(n, int)
    played: list[list[dict]] = [[] for _ in range(n)]
    while min(len(p) for p in played) < episodes:
        actions = np.asarray(player.act(obs[..., -stack:], prev_action, prev_reward, new_episode))
        next_obs, rewards, terminated, truncated, _ = env.step(actions)
        done = terminated | truncated
        if on_step is not None:
            on_step(obs, actions, rewards, done)
        ret, length = ret + rewards, length + 1
        for i in np.flatnonzero(done):
            played[i].append({"return": float(ret[i]), "length": int(length[i]), "truncated": bool(truncated[i])})
        ret[done], length[done] = 0.0, 0
        obs, prev_action, prev_reward, new_episode = next_obs, actions, rewards.astype(np.float32), done
    return [p[:episodes] for p in played]


class SelfImitation:
    """Fine-tunes a model by gradient descent on its own experience: every finished episode
    whose return is at least the median of its episodes so far joins a buffer (kept in the
    order played), and `updates` steps of the model's own loss are taken on windows of that
    buffer after each one. The weights really change; the player's cached context is dropped
    after an update so it is recomputed with them."""

    def __init__(self, model, player, num_envs: int, lr: float, updates: int, batch_size: int,
                 buffer_episodes: int, seed: int):
        import torch

        self.model, self.player, self.updates, self.batch_size = model, player, updates, batch_size
        self.buffer_episodes = buffer_episodes
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.open = [[] for _ in range(num_envs)]
        self.buffer: list[dict] = []
        self.returns: list[float] = []
        self.rng = np.random.default_rng(seed)
        self.steps_trained = 0

    def on_step(self, obs, actions, rewards, done):
        for i in range(len(actions)):
            self.open[i].append((obs[i, ..., -1].copy(), int(actions[i]), float(rewards[i])))
            if done[i]:
                episode, self.open[i] = self.open[i], []
                ret = sum(r for _, _, r in episode)
                self.returns.append(ret)
                if ret >= np.median(self.returns):
                    self.buffer = (self.buffer + [{"frames": np.stack([f for f, _, _ in episode]),
                                                   "actions": np.array([a for _, a, _ in episode]),
                                                   "rewards": np.array([r for _, _, r in episode], np.float32)}]
                                   )[-self.buffer_episodes:]
                    self._update()

    def _update(self):
        from understudy.algorithms import imitation
        from understudy.platform.data import History, make_batch

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
        rtg = h.returns_to_go() if spec.kind == "episode" else None
        self.model.train()
        for _ in range(self.updates):
            high = len(h) if spec.kind == "step" else max(1, len(h) - spec.length + 1)
            rows = self.rng.integers(0, high, size=self.batch_size)
            loss, _ = self.model.loss(imitation.to_torch(make_batch(h, rows, spec, self.model.spec["num_actions"], rtg)))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.steps_trained += 1
        self.model.eval()
        if hasattr(self.player, "tokens"):  # context tokens were computed with the old weights
            self.player.tokens = [[] for _ in self.player.tokens]


@ray.remote(num_cpus=1)
def play(agent: dict, game: str, protocol: dict, episodes: int, copies: int, max_episode_steps,
         greedy: bool, seed: int, goal_split: str = "heldout", finetune: dict | None = None,
         replay_games: tuple = ()) -> dict:
    """One agent, one game: `copies` copies each play `episodes` consecutive episodes.
    With `replay_games` (after fine-tuning), the tuned weights then play those games frozen."""
    import torch

    torch.set_num_threads(1)
    env = make_env(game, protocol, copies, max_episode_steps, goal_split)
    num_actions = num_actions_of(env)
    with storage.local_copy(agent.get("checkpoint")) as checkpoint:
        player, stack, model = make_player(dict(agent, checkpoint=checkpoint), env.num_envs,
                                           num_actions, greedy, seed)
    learner = None
    if agent["kind"] == "finetune":
        learner = SelfImitation(model, player, env.num_envs, seed=seed, **finetune)
    try:
        played = play_episodes(env, player, stack, num_actions, episodes, seed,
                               on_step=learner.on_step if learner else None)
    finally:
        env.close()
    out = {"returns": [[e["return"] for e in p] for p in played],
           "lengths": [[e["length"] for e in p] for p in played],
           "gradient_steps": learner.steps_trained if learner else 0, "replays": {}}
    for other in replay_games:  # forgetting: the tuned weights, frozen, back on earlier games
        from understudy.algorithms import imitation

        env = make_env(other, protocol, copies, max_episode_steps, goal_split)
        frozen = imitation.policy(model, env.num_envs, greedy=greedy, seed=seed,
                                  target_return=agent.get("target_return"))
        try:
            replay = play_episodes(env, frozen, stack, num_actions_of(env), min(episodes, 3), seed)
        finally:
            env.close()
        out["replays"][other] = [[e["return"] for e in p] for p in replay]
    return out


@ray.remote(num_cpus=1)
def learn_from_scratch(teach: dict, game: str, env_steps: int, copies: int, max_episode_steps,
                       seed: int, goal_split: str) -> list[list[float]]:
    """The teacher's algorithm from scratch on `game` for `env_steps`: per copy of the game,
    its episode returns in order (Atari: recorded through the shard path into a scratch folder,
    episodes dealt to copies in the order they finished)."""
    import tempfile

    import torch

    torch.set_num_threads(1)
    if game == DARKROOM:
        from understudy.algorithms import darkroom_source
        from understudy.envs.darkroom import EPISODE_STEPS, darkroom_goals

        goals = np.repeat(darkroom_goals(goal_split), copies, axis=0)
        episodes = max(1, env_steps // (EPISODE_STEPS * len(goals)))
        # The teacher's own hyper-parameters (older manifests: the defaults), on a fresh schedule.
        known = set(darkroom_source.QLearningConfig.__dataclass_fields__)
        config = darkroom_source.QLearningConfig(**{
            **{k: v for k, v in teach.get("hyperparameters", {}).items() if k in known}, "episodes": episodes})
        batches = list(darkroom_source.q_learning(goals, config, seed=1000 + seed))
        return np.stack([b.returns for b in batches], 1).tolist()  # (goals x copies, episodes)
    from understudy.algorithms.teachers import recording_algorithm, teacher_config
    from understudy.platform import shards

    root = tempfile.mkdtemp(prefix="understudy-scratch-")
    config = teacher_config(
        algorithm=teach["algorithm"], game=game, seed=seed, env_steps_per_iter=min(256, env_steps),
        protocol=teach["protocol"], max_episode_steps=max_episode_steps,
        record={"root": root, "session": "scratch", "algorithm": teach["algorithm"], "shard_rows": 10**6},
        num_envs=copies, runner="vector")
    algo = recording_algorithm(config.algo_class)(config=config)
    try:
        while algo.train()["env_runners"]["num_env_steps_sampled_lifetime"] < env_steps:
            pass
    finally:
        algo.stop()
    run_id = shards.list_runs(root)[0]
    episodes = sorted(shards.episode_returns(root, run_id), key=lambda e: e["last_global_step"])
    returns = [e["return"] for e in episodes]
    n = len(returns) // copies  # episode i of every copy: the i-th round of finished episodes
    return np.array(returns[:n * copies]).reshape(n, copies).T.tolist()


# ---- the stage --------------------------------------------------------------------------------

def _step_budget(cfg: EvaluateConfig, game: str) -> int:
    """Env steps of `episodes` full-length episodes in every copy (when no imitator sets it)."""
    if game == DARKROOM:
        from understudy.envs.darkroom import EPISODE_STEPS, darkroom_goals

        return cfg.episodes * cfg.copies * len(darkroom_goals(cfg.goal_split)) * EPISODE_STEPS
    return cfg.episodes * cfg.copies * (cfg.max_episode_steps or 27_000)


def _check_checkpoint(path: str, stage: str) -> None:
    """Load an imitator checkpoint once here, so a wrong one is a clear error before any task."""
    from understudy.algorithms import imitation

    try:
        with storage.local_copy(path) as local:
            imitation.load(local)
    except (ValueError, OSError) as err:
        raise StageFailed(f"evaluate: the checkpoint of distill stage {stage!r} cannot be used: {err}") from None


def _agents(cfg: EvaluateConfig, ws: Workspace, teach: dict, distill: dict) -> dict:
    if {"imitator", "finetune"} & set(cfg.agents):
        _check_checkpoint(distill["checkpoint"], cfg.imitator)
    agents = {}
    for name in cfg.agents:
        if name in ("imitator", "finetune"):
            agents[name] = {"kind": name, "checkpoint": distill["checkpoint"],
                            "target_return": cfg.target_return}
        elif name == "ed":
            if not cfg.ed:
                raise StageFailed("evaluate.agents: 'ed' needs evaluate.ed, the name of an expert-only "
                                  "distill stage (data.expert_last)")
            checkpoint = ws.read_stage("distill", cfg.ed)["checkpoint"]
            _check_checkpoint(checkpoint, cfg.ed)
            agents[name] = {"kind": "ed", "checkpoint": checkpoint, "target_return": cfg.target_return}
        elif name in ("random", "noop", "scratch"):
            agents[name] = {"kind": name}
        elif name == "teacher":
            agents[name] = {"kind": "teacher", "num_actions": distill["num_actions"]}
    return agents


def data_returns(distill: dict) -> dict[str, list[float]]:
    """Per game, the returns of every episode the imitator was trained on."""
    from understudy.platform.config import DistillConfig
    from understudy.platform.distill import select_data

    cfg = DistillConfig.model_validate({k: v for k, v in distill["config"].items()})
    train, _, _ = select_data(cfg, distill["shard_root"], distill["run_ids"], frozenset(distill["skipped_shards"]))
    out: dict[str, list[float]] = {}
    for h in train:
        out.setdefault(h.game, []).extend(e.ret for e in h.episodes)
    return out


def run_evaluate(cfg: EvaluateConfig, ws: Workspace, experiment: str | None = None) -> dict:
    teach = ws.read_stage("teach", cfg.teacher)
    distill = ws.read_stage("distill", cfg.imitator)
    trained = distill.get("data_games") or [distill["game"]]
    overlap = sorted(set(cfg.heldout_games) & set(trained))
    if overlap:
        raise StageFailed(f"evaluate.heldout_games: {overlap} appear in the imitator's training data "
                          f"(distill stage {cfg.imitator!r}, data {distill['data_version']}, games {trained})")
    teacher_runs = {r["game"]: r for r in teach["runs"]}
    agents = _agents(cfg, ws, teach, distill)
    protocol = dict(teach["protocol"], terminal_on_life_loss=False)  # evaluation: whole games
    started = time.perf_counter()
    finetune = cfg.finetune.model_dump()
    futures = {}
    for name, agent in agents.items():
        for game in cfg.games:
            if name == "scratch":
                continue
            if name == "teacher":
                if not teacher_runs.get(game, {}).get("checkpoint"):
                    continue  # a teacher plays only a game it learned, from a checkpoint
                agent = dict(agent, checkpoint=teacher_runs[game]["checkpoint"])
            replay = tuple(g for g in trained if g != game) if name == "finetune" and cfg.forgetting else ()
            futures[(name, game)] = play.remote(agent, game, protocol, cfg.episodes, cfg.copies,
                                                cfg.max_episode_steps, cfg.greedy, cfg.seed,
                                                cfg.goal_split, finetune, replay)
    def from_scratch(game, steps):
        return learn_from_scratch.remote(teach, game, steps, cfg.copies, cfg.max_episode_steps,
                                         cfg.seed, cfg.goal_split)

    pending = dict(futures)
    if "scratch" in agents and "imitator" not in agents:
        pending.update({("scratch", g): from_scratch(g, _step_budget(cfg, g)) for g in cfg.games})
    results: dict[tuple, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending.values()), num_returns=1)
        for key in [k for k, f in pending.items() if f in done]:
            value = ray.get(pending.pop(key))
            if key[0] == "scratch":
                value = {"returns": [r[:cfg.episodes] for r in value], "lengths": [],
                         "gradient_steps": 0, "replays": {}}
            results[key] = value
            r = np.array(value["returns"], float)
            if r.size:
                print(f"[evaluate] {key[0]:>9} on {key[1]:<14} first {r[:, 0].mean():.2f} -> last "
                      f"{r[:, -1].mean():.2f} over {r.shape[1]} episodes x {r.shape[0]} copies "
                      f"({time.perf_counter() - started:.0f}s)", flush=True)
            if key[0] == "imitator" and "scratch" in agents:
                # A learner from scratch gets the env steps the imitator took on that game.
                pending[("scratch", key[1])] = from_scratch(key[1], int(np.sum(value["lengths"])))
    return _report(cfg, ws, teach, distill, trained, results, experiment)


def _report(cfg, ws, teach, distill, trained, results, experiment) -> dict:
    from understudy.envs.scores import has_reference

    k = max(1, min(cfg.window, cfg.episodes // 2))
    try:
        data = data_returns(distill)
    except Exception as err:  # noqa: BLE001  (older manifests): exceeds-data is then left out
        print(f"[evaluate] no training-data returns ({err}); exceeds-data left out", flush=True)
        data = {}
    client = tracking.client_for(ws)
    exp = tracking.experiment_id(client, ws, "evaluate")
    tags = {"understudy.experiment": experiment} if experiment else {}
    rows = []
    for (name, game), res in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        returns = np.array(res["returns"], float)
        if returns.size == 0 or returns.shape[1] < 1:
            continue
        held_out = is_heldout(game, trained, cfg.goal_split)
        row = {"agent": name, "game": game, "held_out": held_out, "copies": returns.shape[0],
               "episodes": returns.shape[1], "first": float(returns[:, 0].mean()),
               "last": float(returns[:, -1].mean()), "return_mean": float(returns.mean())}
        if returns.shape[1] >= 2 * k:
            ici = metrics.in_context_improvement(returns, early=k, late=k)
            row.update(early=ici["early_mean"], late=ici["late_mean"], improvement=ici["improvement"],
                       slope=ici["slope"])
        if data.get(game) and returns.shape[1] >= k:
            ex = metrics.exceeds_data(returns.mean(0), data[game], late=k)
            row.update(data_best=ex["data_best"], best_minus_data=ex["best_minus_data_best"],
                       late_minus_data=ex["late_minus_data_best"])
        reference = _reference(game)
        if reference is not None or has_reference(game):
            low, high = reference or _atari_reference(game)
            row["late_normalized"] = float((returns[:, -k:].mean() - low) / (high - low))
        run = tracking.start_run(client, exp, f"{name}-on-{game}", {
            "stage": cfg.name, "agent": name, "game": game, "trained_on": ",".join(trained),
            "held_out": held_out, "episodes": cfg.episodes, "copies": cfg.copies,
            "max_episode_steps": cfg.max_episode_steps, "greedy": cfg.greedy, "seed": cfg.seed,
            "data_version": distill["data_version"], "gradient_steps": res["gradient_steps"]}, tags)
        tracking.log_metric_series(client, run, "episode_return", returns.mean(0))
        for key, value in row.items():
            if isinstance(value, float):
                client.log_metric(run, key, value)
        for other, replay in res["replays"].items():
            before = results.get(("imitator", other))
            value = float(np.mean(replay))
            client.log_metric(run, f"forgetting/{other}/return_after", value)
            rows.append({"agent": f"{name} on {game}, then frozen", "game": other, "held_out": False,
                         "copies": len(replay), "episodes": len(replay[0]), "first": float(np.mean([r[0] for r in replay])),
                         "last": float(np.mean([r[-1] for r in replay])), "return_mean": value,
                         "before_finetune": float(np.mean(before["returns"])) if before else None})
        client.set_terminated(run, "FINISHED")
        row["mlflow_run_id"] = run
        rows.append(row)
    aggregate = _aggregate(results, trained, k, cfg.goal_split)
    table = results_table(rows, aggregate)
    summary = tracking.start_run(client, exp, f"summary-{cfg.name}", {
        "stage": cfg.name, "imitator_stage": cfg.imitator, "teacher_stage": cfg.teacher,
        "ed_stage": cfg.ed or "", "trained_on": ",".join(trained), "games": ",".join(cfg.games),
        "agents": ",".join(cfg.agents), "episodes": cfg.episodes, "copies": cfg.copies,
        "data_version": distill["data_version"]}, {"understudy.summary": "true", **tags})
    curves = {(name, game): np.array(res["returns"], float) for (name, game), res in results.items()
              if len(res["returns"])}
    tracking.log_figure(client, summary, plots.returns_per_episode(
        curves, f"Return per episode, {cfg.copies} copies each (imitator trained on {', '.join(trained)})"),
        "returns_per_episode.png")
    tracking.log_text(client, summary, table, "results.md")
    tracking.log_text(client, summary, markdown_to_html(table, f"Evaluation {cfg.name}"), "results.html")
    client.set_terminated(summary, "FINISHED")
    manifest = {"kind": "evaluate", "name": cfg.name, "rows": rows, "aggregate": aggregate,
                "summary_run_id": summary, "table": table, "trained_on": trained,
                "experiment": experiment}
    ws.write_stage("evaluate", cfg.name, manifest)
    return manifest


def _reference(game: str):
    if game == DARKROOM:
        from understudy.envs.darkroom import darkroom_goals, optimal_return

        return 0.0, float(np.mean([optimal_return(g) for g in darkroom_goals("all")]))
    return None


def _atari_reference(game: str):
    from understudy.envs.scores import reference_scores

    ref = reference_scores(game)
    return ref.random, ref.human


def is_heldout(game: str, trained, goal_split: str) -> bool:
    """Never trained on: a game outside the training data, or Dark Room's held-out goals."""
    return game not in trained or (game == DARKROOM and goal_split == "heldout")


def _aggregate(results, trained, k, goal_split) -> list[dict]:
    """Per agent and game group (training / held-out): human-normalised late return, IQM with
    a stratified bootstrap interval over copies."""
    from understudy.envs.scores import has_reference

    out = []
    for agent in sorted({a for a, _ in results}):
        for group, held in (("training games", False), ("held-out games", True)):
            scores, reference = {}, {}
            for (a, game), res in results.items():
                if a != agent or is_heldout(game, trained, goal_split) != held or not len(res["returns"]):
                    continue
                if _reference(game) is None and not has_reference(game):
                    continue
                r = np.array(res["returns"], float)
                scores[game] = r[:, -min(k, r.shape[1]):].mean(1).tolist()
                reference[game] = _reference(game) or _atari_reference(game)
            if not scores:
                continue
            n = min(len(v) for v in scores.values())
            agg = metrics.aggregate({g: v[:n] for g, v in scores.items()}, reference=reference, reps=1000)
            out.append({"agent": agent, "group": group, "games": len(scores), "iqm": agg["iqm"],
                        "ci_low": agg["ci_low"], "ci_high": agg["ci_high"]})
    return out


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def results_table(rows: list[dict], aggregate: list[dict] | None = None) -> str:
    cols = [("agent", "agent"), ("game", "game"), ("held_out", "held out"), ("copies", "copies"),
            ("episodes", "episodes"), ("first", "first"), ("last", "last"), ("early", "early mean"),
            ("late", "late mean"), ("improvement", "late - early"), ("slope", "slope/episode"),
            ("data_best", "data best"), ("best_minus_data", "best - data best"),
            ("late_minus_data", "late - data best"), ("late_normalized", "late (normalised)")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c, _ in cols) + " |")
    if aggregate:
        lines += ["", "Human-normalised late return (Dark Room: fraction of optimal), interquartile "
                  "mean over games x copies with a 95% stratified bootstrap interval:", "",
                  "| agent | games | IQM | 95% CI |", "|---|---|---:|---|"]
        for a in aggregate:
            lines.append(f"| {a['agent']} | {a['group']} ({a['games']}) | {a['iqm']:.3f} | "
                         f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}] |")
    return "\n".join(lines)


def markdown_to_html(table: str, title: str) -> str:
    """The results tables as a standalone HTML page (for the MLflow artifact viewer)."""
    out = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
           "text-align:right}</style></head><body>", f"<h2>{html.escape(title)}</h2>"]
    in_table = False
    for line in table.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            if not in_table:
                out.append("<table>")
                tag, in_table = "th", True
            else:
                tag = "td"
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
        else:
            if in_table:
                out.append("</table>")
                in_table = False
            if line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
