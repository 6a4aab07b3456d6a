"""Random-agent and human reference scores for the 57 Atari games, for human-normalised scores:

    normalised = (score - random) / (human - random)

so 0 is uniformly random play and 1 is the professional human tester. Both are mean undiscounted
returns of episodes that start after 1-30 no-ops, capped at 108,000 frames (30 minutes).

Source: DeepMind's DQN Zoo, `dqn_zoo/atari_data.py` (Quan & Ostrovski 2020,
https://github.com/google-deepmind/dqn_zoo), the standard Atari-57 no-op-starts table (the human
scores are those of the DeepMind human tester, as in Mnih et al. 2015 and its 57-game follow-ups).
Checked value by value against DQN Zoo and an independent copy of the same table; the rounded
"Random" and "Average human" columns of Badia et al. 2020 (Agent57, appendix) agree where we could
see them, and so do the Atari-100k tables in Dopamine-based code (e.g. google-research/
reincarnating_rl `atari_scores.py`), except for one value:

Caveat, Video Pinball: those Atari-100k tables put its random score at 0.0 instead of 16256.9.
We keep the Atari-57 value; with it random and human are only 1411 points apart, so normalised
Video Pinball scores are large and noisy.

Note the protocols differ from ours (no sticky actions there; sticky actions in
`AtariProtocol`): normalised scores are comparable across our own runs, and only roughly with
published numbers.
"""
from __future__ import annotations

import difflib
import re
from typing import NamedTuple


class Reference(NamedTuple):
    random: float
    human: float


# Game (ALE name, as `envs.atari.canonical_game` spells it) -> (random, human).
ATARI_SCORES: dict[str, Reference] = {g: Reference(*rh) for g, rh in {
    "Alien":            (227.8, 7127.7),
    "Amidar":           (5.8, 1719.5),
    "Assault":          (222.4, 742.0),
    "Asterix":          (210.0, 8503.3),
    "Asteroids":        (719.1, 47388.7),
    "Atlantis":         (12850.0, 29028.1),
    "BankHeist":        (14.2, 753.1),
    "BattleZone":       (2360.0, 37187.5),
    "BeamRider":        (363.9, 16926.5),
    "Berzerk":          (123.7, 2630.4),
    "Bowling":          (23.1, 160.7),
    "Boxing":           (0.1, 12.1),
    "Breakout":         (1.7, 30.5),
    "Centipede":        (2090.9, 12017.0),
    "ChopperCommand":   (811.0, 7387.8),
    "CrazyClimber":     (10780.5, 35829.4),
    "Defender":         (2874.5, 18688.9),
    "DemonAttack":      (152.1, 1971.0),
    "DoubleDunk":       (-18.6, -16.4),
    "Enduro":           (0.0, 860.5),
    "FishingDerby":     (-91.7, -38.7),
    "Freeway":          (0.0, 29.6),
    "Frostbite":        (65.2, 4334.7),
    "Gopher":           (257.6, 2412.5),
    "Gravitar":         (173.0, 3351.4),
    "Hero":             (1027.0, 30826.4),
    "IceHockey":        (-11.2, 0.9),
    "Jamesbond":        (29.0, 302.8),
    "Kangaroo":         (52.0, 3035.0),
    "Krull":            (1598.0, 2665.5),
    "KungFuMaster":     (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman":         (307.3, 6951.6),
    "NameThisGame":     (2292.3, 8049.0),
    "Phoenix":          (761.4, 7242.6),
    "Pitfall":          (-229.4, 6463.7),
    "Pong":             (-20.7, 14.6),
    "PrivateEye":       (24.9, 69571.3),
    "Qbert":            (163.9, 13455.0),
    "Riverraid":        (1338.5, 17118.0),
    "RoadRunner":       (11.5, 7845.0),
    "Robotank":         (2.2, 11.9),
    "Seaquest":         (68.4, 42054.7),
    "Skiing":           (-17098.1, -4336.9),
    "Solaris":          (1236.3, 12326.7),
    "SpaceInvaders":    (148.0, 1668.7),
    "StarGunner":       (664.0, 10250.0),
    "Surround":         (-10.0, 6.5),
    "Tennis":           (-23.8, -8.3),
    "TimePilot":        (3568.0, 5229.2),
    "Tutankham":        (11.4, 167.6),
    "UpNDown":          (533.4, 11693.2),
    "Venture":          (0.0, 1187.5),
    "VideoPinball":     (16256.9, 17667.9),  # see the caveat above
    "WizardOfWor":      (563.5, 4756.5),
    "YarsRevenge":      (3092.9, 54576.9),
    "Zaxxon":           (32.5, 9173.3),
}.items()}


def _key(name: str) -> str:
    # Same folding as envs.atari: 'space_invaders', 'SpaceInvaders', 'spaceinvaders' all match.
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(g): g for g in ATARI_SCORES}


def has_reference(game: str) -> bool:
    return _key(game) in _BY_KEY


def reference_scores(game: str) -> Reference:
    """(random, human) for an Atari-57 game; unknown game -> ValueError naming the closest."""
    if has_reference(game):
        return ATARI_SCORES[_BY_KEY[_key(game)]]
    close = difflib.get_close_matches(_key(game), list(_BY_KEY), n=3, cutoff=0.5)
    hint = (f"closest: {', '.join(_BY_KEY[c] for c in close)}" if close
            else f"valid: the Atari 57 ({', '.join(list(ATARI_SCORES)[:4])}, ...)")
    raise ValueError(f"no reference scores for game {game!r}; {hint}. For other environments "
                     "(e.g. DarkRoom) pass your own (random, best) reference")


def human_normalized(game: str, score):
    """(score - random) / (human - random): 0 = random play, 1 = human. `score` may be a float or
    a numpy array of scores."""
    random, human = reference_scores(game)
    return (score - random) / (human - random)
