"""Atari environments under one explicit protocol (Machado et al. 2018, as Dopamine uses it).

Every run logs `AtariProtocol.as_params()` and `game_metadata(game)`, so a score can always be
traced to the exact environment that produced it. Pure Python and gymnasium: no Ray here.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import re
from dataclasses import asdict, dataclass

import numpy as np

FRAME_SHAPE = (84, 84)


@dataclass(frozen=True)
class AtariProtocol:
    sticky_action_prob: float = 0.25
    frame_skip: int = 4  # with max-pooling over the last two frames
    frame_stack: int = 4
    screen_size: int = 84
    max_episode_frames: int = 108_000  # emulator frames, i.e. 27,000 agent steps
    noop_max: int = 30
    full_action_space: bool = False  # True: all 18 actions, so one model serves every game
    terminal_on_life_loss: bool = False  # training-time only; never for evaluation

    def as_params(self) -> dict:
        return {f"atari.{k}": v for k, v in asdict(self).items()}


@functools.lru_cache(maxsize=1)
def _rom_ids() -> dict[str, str]:
    """Game name as ale-py registers it ('SpaceInvaders') -> ROM id ('space_invaders'), for the
    ROMs the installed ale-py ships."""
    import ale_py
    import gymnasium as gym
    from ale_py import roms

    gym.register_envs(ale_py)
    names = {_key(e[4:-3]): e[4:-3] for e in gym.registry if e.startswith("ALE/") and e.endswith("-v5")}
    return {names[_key(rom)]: rom for rom in roms.get_all_rom_ids() if _key(rom) in names}


def all_games() -> list[str]:
    return sorted(_rom_ids())


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_game(name: str) -> str:
    """'breakout', 'space_invaders', 'SpaceInvaders' -> the CamelCase name; unknown -> ValueError
    naming the closest valid games."""
    by_key = {_key(g): g for g in _rom_ids()}
    if _key(name) in by_key:
        return by_key[_key(name)]
    close = difflib.get_close_matches(_key(name), list(by_key), n=3, cutoff=0.5)
    hint = ", ".join(by_key[c] for c in close) if close else ", ".join(all_games()[:5]) + ", ..."
    raise ValueError(f"unknown game {name!r}; closest valid games: {hint} "
                     f"({len(by_key)} games ship with ale-py)")


@functools.lru_cache(maxsize=None)
def game_metadata(game: str) -> dict:
    """ale-py version and the ROM's sha256: what makes a result reproducible."""
    import ale_py
    from ale_py import roms

    rom = _rom_ids()[canonical_game(game)]
    digest = hashlib.sha256(open(roms.get_rom_path(rom), "rb").read()).hexdigest()
    return {"ale_py_version": ale_py.__version__, "rom_id": rom, "rom_sha256": digest}


def make_atari_env(game: str, protocol: AtariProtocol = AtariProtocol(), *,
                   max_episode_steps: int | None = None):
    """A gymnasium env: sticky actions, frame skip with max-pool, 84x84 grayscale, no-op starts,
    frame stack. Observations are (84, 84, stack), uint8, newest frame last.
    `max_episode_steps` additionally truncates an episode after that many agent steps.
    """
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import (
        AtariPreprocessing,
        FrameStackObservation,
        RecordEpisodeStatistics,
        TimeLimit,
        TransformObservation,
    )

    gym.register_envs(ale_py)
    env = gym.make(
        f"ALE/{canonical_game(game)}-v5",
        frameskip=1,  # AtariPreprocessing does the skipping, with max-pooling
        repeat_action_probability=protocol.sticky_action_prob,
        full_action_space=protocol.full_action_space,
        max_num_frames_per_episode=protocol.max_episode_frames,
    )
    env = AtariPreprocessing(
        env,
        noop_max=protocol.noop_max,
        frame_skip=protocol.frame_skip,
        screen_size=protocol.screen_size,
        terminal_on_life_loss=protocol.terminal_on_life_loss,
        grayscale_obs=True,
        scale_obs=False,
    )
    # Zero frames before the first one, as ale-py's C++ vector env does: one convention everywhere.
    env = FrameStackObservation(env, protocol.frame_stack, padding_type="zero")
    if max_episode_steps:
        env = TimeLimit(env, max_episode_steps)
    # Counts the raw, unclipped return independently of RLlib and of the recorder.
    env = RecordEpisodeStatistics(env)
    space = gym.spaces.Box(0, 255, (protocol.screen_size, protocol.screen_size, protocol.frame_stack),
                           np.uint8)
    return TransformObservation(env, lambda o: np.ascontiguousarray(np.moveaxis(o, 0, -1)), space)


def newest_frame(obs: np.ndarray) -> np.ndarray:
    """The newest 84x84 frame of a channels-last observation stack."""
    return obs[..., -1]


def make_atari_vector_env(game: str, protocol: AtariProtocol = AtariProtocol(), *, num_envs: int = 1,
                          batch_size: int = 0, num_threads: int = 0,
                          max_episode_steps: int | None = None, same_step_reset: bool = False):
    """ale-py's C++ vector env under the same protocol: preprocessing and frame stacking in C++.

    Observations are (batch, 84, 84, stack) uint8 (channels last, as for `make_atari_env`),
    rewards raw (unclipped). An env that ends an episode is reset on its next step (gymnasium's
    NEXT_STEP autoreset: that step's action is ignored and it returns the new first
    observation). With `batch_size` < `num_envs` the env is asynchronous: `recv()` returns the
    first `batch_size` envs that are ready (`info["env_id"]` says which) and `send(actions)`
    acts for exactly those, so a policy can think while the other envs step.
    `max_episode_steps` caps episodes through the emulator's frame limit (frame_skip frames
    per agent step, no-op start frames included). With `same_step_reset` an ending step
    already returns the next episode's first observation (for players of many episodes).
    """
    from ale_py import AtariVectorEnv

    frames = protocol.max_episode_frames
    if max_episode_steps:
        frames = min(frames, max_episode_steps * protocol.frame_skip)
    env = AtariVectorEnv(
        _rom_ids()[canonical_game(game)], num_envs,
        batch_size=batch_size, num_threads=num_threads,
        repeat_action_probability=protocol.sticky_action_prob,
        full_action_space=protocol.full_action_space,
        max_num_frames_per_episode=frames,
        img_height=protocol.screen_size, img_width=protocol.screen_size,
        stack_num=protocol.frame_stack, frameskip=protocol.frame_skip, maxpool=True,
        noop_max=protocol.noop_max, episodic_life=protocol.terminal_on_life_loss,
        reward_clipping=False, use_fire_reset=False,
        autoreset_mode="SameStep" if same_step_reset else "NextStep",
    )
    return _ChannelsLast(env)


def _channels_last(obs: np.ndarray) -> np.ndarray:
    return np.moveaxis(obs, 1, -1)


def _vector_wrapper_base():
    import gymnasium as gym

    return gym.vector.VectorWrapper


class _ChannelsLast(_vector_wrapper_base()):
    """AtariVectorEnv with channels-last observations and spaces that say so; also forwards
    the asynchronous send/recv pair."""

    def __init__(self, env):
        import gymnasium as gym

        super().__init__(env)
        stack, h, w = env.single_observation_space.shape
        self.single_observation_space = gym.spaces.Box(0, 255, (h, w, stack), np.uint8)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space,
                                                              env.batch_size)
        self.batch_size = env.batch_size

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return _channels_last(obs), info

    def step(self, actions):
        obs, *rest = self.env.step(np.asarray(actions, np.int64))
        return (_channels_last(obs), *rest)

    def send(self, actions) -> None:
        self.env.send(np.asarray(actions, np.int64))

    def recv(self):
        obs, *rest = self.env.recv()
        return (_channels_last(obs), *rest)


@functools.lru_cache(maxsize=None)
def action_set(game: str, full_action_space: bool = False) -> tuple[int, ...]:
    """The ALE action ids (0..17) behind a game's action indices under a protocol: the minimal
    set unless the full 18-action space is on. Maps any game's actions into one shared space."""
    if full_action_space:
        return tuple(range(18))
    import ale_py
    from ale_py import roms

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(roms.get_rom_path(_rom_ids()[canonical_game(game)]))
    return tuple(int(a.value) for a in ale.getMinimalActionSet())
