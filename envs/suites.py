"""Named, versioned game suites. A suite never changes once published: a changed list gets a
new version, so a result names exactly the games it was run on (e.g. "mgdt@1:heldout").

Spelled `NAME[@VERSION][:PART]`, PART one of all (default), train, heldout.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    train: tuple[str, ...]
    heldout: tuple[str, ...] = ()
    description: str = ""

    def part(self, which: str = "all") -> list[str]:
        games = {"all": self.train + self.heldout, "train": self.train, "heldout": self.heldout}
        if which not in games:
            raise ValueError(f"suite part {which!r}; valid: all, train, heldout")
        return list(games[which])


# The 57 games of the Atari-57 benchmark (Badia et al. 2020, Agent57).
ATARI57 = (
    "Alien", "Amidar", "Assault", "Asterix", "Asteroids", "Atlantis", "BankHeist", "BattleZone",
    "BeamRider", "Berzerk", "Bowling", "Boxing", "Breakout", "Centipede", "ChopperCommand",
    "CrazyClimber", "Defender", "DemonAttack", "DoubleDunk", "Enduro", "FishingDerby", "Freeway",
    "Frostbite", "Gopher", "Gravitar", "Hero", "IceHockey", "Jamesbond", "Kangaroo", "Krull",
    "KungFuMaster", "MontezumaRevenge", "MsPacman", "NameThisGame", "Phoenix", "Pitfall", "Pong",
    "PrivateEye", "Qbert", "Riverraid", "RoadRunner", "Robotank", "Seaquest", "Skiing", "Solaris",
    "SpaceInvaders", "StarGunner", "Surround", "Tennis", "TimePilot", "Tutankham", "UpNDown",
    "Venture", "VideoPinball", "WizardOfWor", "YarsRevenge", "Zaxxon",
)

# Multi-Game Decision Transformer's split (Lee et al. 2022): 41 training games, 5 held out.
MGDT_HELDOUT = ("Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner")
MGDT_TRAIN = (
    "Amidar", "Assault", "Asterix", "Atlantis", "BankHeist", "BattleZone", "BeamRider", "Boxing",
    "Breakout", "Carnival", "Centipede", "ChopperCommand", "CrazyClimber", "DemonAttack",
    "DoubleDunk", "Enduro", "FishingDerby", "Freeway", "Frostbite", "Gopher", "Gravitar", "Hero",
    "IceHockey", "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "NameThisGame", "Phoenix",
    "Pooyan", "Qbert", "Riverraid", "RoadRunner", "Robotank", "Seaquest", "TimePilot", "UpNDown",
    "VideoPinball", "WizardOfWor", "YarsRevenge", "Zaxxon",
)


SUITES: dict[tuple[str, int], Suite] = {}


def _add(suite: Suite) -> None:
    SUITES[(suite.name, suite.version)] = suite


_add(Suite("dev5", 1, ("Pong", "Breakout", "SpaceInvaders", "Seaquest", "Qbert"),
           description="five quick, varied games for development"))
_add(Suite("transfer2", 1, ("Breakout",), ("SpaceInvaders",),
           description="the essay's thought experiment: Breakout to Space Invaders"))
_add(Suite("dev5split", 1, ("Breakout", "Qbert", "Seaquest"), ("Pong", "SpaceInvaders"),
           description="dev5 split for a laptop-sized held-out-games experiment"))
_add(Suite("mgdt", 1, MGDT_TRAIN, MGDT_HELDOUT,
           description="Multi-Game Decision Transformer's 41 train / 5 held-out split"))
# MinAtar's five games (Young & Tian 2019); Space Invaders held out, the essay's direction.
# minatar_holdout holds out each game in turn (leave_one_out: minatar5@1).
_add(Suite("minatar5", 1, ("MinAtar/Asterix", "MinAtar/Breakout", "MinAtar/Freeway", "MinAtar/Seaquest"),
           ("MinAtar/SpaceInvaders",), description="MinAtar's five games, Space Invaders held out"))
# ale-py 0.12 ships all 57 ROMs (tests check every suite's games against the installed ROMs).
_add(Suite("atari57", 1, ATARI57, description="the Atari-57 benchmark"))


def _latest(name: str) -> Suite:
    versions = [v for (n, v) in SUITES if n == name]
    if not versions:
        names = sorted({n for n, _ in SUITES})
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(names)}"
                         + (f" (closest: {', '.join(close)})" if close else ""))
    return SUITES[(name, max(versions))]


def resolve_suite(spec: str) -> tuple[Suite, list[str]]:
    """'mgdt@1:heldout' -> (the suite, its games)."""
    name, _, part = spec.partition(":")
    name, _, version = name.partition("@")
    suite = _latest(name)
    if version:
        if (name, int(version)) not in SUITES:
            raise ValueError(f"suite {name!r} has no version {version}; latest is {suite.version}")
        suite = SUITES[(name, int(version))]
    return suite, suite.part(part or "all")


def suite_names() -> list[str]:
    return [f"{n}@{v}" for n, v in sorted(SUITES)]
