"""Environment factories and game suites. Pure Python: no Ray in this package."""
from understudy.envs.atari import (
    FRAME_SHAPE,
    AtariProtocol,
    all_games,
    canonical_game,
    game_metadata,
    make_atari_env,
    make_atari_vector_env,
    newest_frame,
)
from understudy.envs.rewards import REWARD_TRANSFORMS, transform_reward
from understudy.envs.suites import SUITES, Suite, resolve_suite, suite_names

__all__ = ["FRAME_SHAPE", "AtariProtocol", "all_games", "canonical_game", "game_metadata",
           "make_atari_env", "make_atari_vector_env", "newest_frame", "REWARD_TRANSFORMS", "transform_reward",
           "SUITES", "Suite", "resolve_suite", "suite_names"]

from understudy.envs.darkroom import (
    EPISODE_STEPS,
    GRID,
    NUM_ACTIONS,
    DarkRoomEnv,
    DarkRoomVectorEnv,
    cell_index_of,
    darkroom_goals,
    frame_of,
    optimal_return,
    position_of,
)

__all__ += ["EPISODE_STEPS", "GRID", "NUM_ACTIONS", "DarkRoomEnv", "DarkRoomVectorEnv",
            "cell_index_of", "darkroom_goals", "frame_of", "optimal_return", "position_of"]

from understudy.envs import families, minatar, minatar_columns  # noqa: E402
from understudy.envs.families import EnvFamily, family_of  # noqa: E402

__all__ += ["families", "minatar", "minatar_columns", "EnvFamily", "family_of"]
