"""Imitators register themselves (algorithms/imitators.py): one shared tester runs every
registered imitator through what distill and evaluate do with it (its config schema read from
its constructor, a training step on its own kind of sample, a checkpoint that loads weights only,
its player in a real env), a new one is a registration and nothing else, and a checkpoint that
names an unknown module never makes it import."""
import json
import sys

import numpy as np
import pytest
import torch

from understudy.algorithms import imitation, imitators
from understudy.envs.darkroom import NUM_ACTIONS, DarkRoomFrames, darkroom_goals
from understudy.histories.data import History, make_batch
from understudy.platform.config import ConfigError, parse_config
from understudy.platform.players import Agent, make_player, play_episodes

TINY = {"cnn": "grid", "stack": 1, "context": 24, "d_model": 16, "layers": 1, "heads": 2, "hidden": 16}


def tiny(algorithm: str) -> dict:
    """Small sizes of the parameters this imitator takes."""
    return {k: v for k, v in TINY.items() if k in imitators.get(algorithm).parameters()}


class _Random:
    """Uniform random play that keeps every step as a shard would (the newest frame)."""

    def __init__(self):
        self.rng, self.frames, self.actions, self.rewards, self.starts = np.random.default_rng(0), [], [], [], []

    def act(self, obs, prev_action, prev_reward, new_episode):
        if self.frames:
            self.rewards.append(float(prev_reward[0]))
        a = self.rng.integers(NUM_ACTIONS, size=1)
        self.frames.append(obs[0, ..., -1].copy())
        self.actions.append(int(a[0]))
        self.starts.append(bool(new_episode[0]))
        return a

    def history(self) -> History:
        n = len(self.rewards)
        episode_id = np.cumsum(self.starts[:n]) - 1
        return History(frames=np.stack(self.frames[:n]), actions=np.array(self.actions[:n]),
                       rewards=np.array(self.rewards, np.float32),
                       episode_start=np.flatnonzero(self.starts[:n])[episode_id], episode_id=episode_id,
                       target=np.ones(n, bool), history_start=np.zeros(n, np.int64))


@pytest.fixture(scope="module")
def darkroom_history():
    recorder = _Random()
    play_episodes(DarkRoomFrames(darkroom_goals("train")[:1]), recorder, 1, NUM_ACTIONS, episodes=3, seed=0)
    return recorder.history()


@pytest.mark.parametrize("algorithm", imitators.names())
def test_every_imitator_trains_saves_loads_and_plays(algorithm, darkroom_history, tmp_path):
    imitator = imitators.get(algorithm)
    # its config schema is its constructor's: every parameter, and nothing else
    cfg = parse_config({"kind": "distill", "teacher": "t", "game": "DarkRoom", "algorithm": algorithm,
                        "model": tiny(algorithm)})
    assert set(type(cfg.model).model_fields) == set(imitator.parameters())
    assert cfg.model.model_dump(exclude_none=True) == tiny(algorithm)

    torch.manual_seed(0)
    model = imitation.build(algorithm, NUM_ACTIONS, **cfg.model.model_dump(exclude_none=True))
    assert model.spec["algorithm"] == algorithm and model.spec["num_actions"] == NUM_ACTIONS
    spec = model.sample_spec()
    h = darkroom_history
    rows = np.arange(0, len(h) - spec.length, max(1, spec.length // 2))[:4]
    batch = imitation.to_torch(make_batch(h, rows, spec, NUM_ACTIONS,
                                          h.returns_to_go() if spec.kind == "episode" else None))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    loss, info = model.loss(batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and int(info["targets"]) > 0

    imitation.save(model, str(tmp_path / "ck"), {"epoch": 1})
    loaded, meta = imitation.load(str(tmp_path / "ck"))
    assert meta["algorithm"] == algorithm and loaded.spec == model.spec
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)

    # evaluate's player: the checkpoint, as the imitator of its distill stage, in Dark Room rooms
    player, stack, _ = make_player(Agent("imitator", str(tmp_path / "ck"), target_return=1.0, algorithm=algorithm),
                                   2, NUM_ACTIONS, greedy=False, seed=0, game="DarkRoom", device="cpu")
    assert stack == spec.stack
    played = play_episodes(DarkRoomFrames(darkroom_goals("heldout")[:2]), player, stack, NUM_ACTIONS, 2, seed=0)
    assert [len(p) for p in played] == [2, 2]


def test_derived_lists_come_from_the_registry():
    assert {"bc", "dt", "ad", "ad_gru"} <= set(imitators.names())
    assert imitation.CROSS_EPISODE == imitators.cross_episode() == ("ad", "ad_gru")
    assert imitation.MODELS["ad"] is imitators.get("ad").model
    with pytest.raises(ConfigError, match="'gpt' is not an imitator; valid: 'ad', 'ad_gru', 'bc', 'dt'"):
        parse_config({"kind": "distill", "teacher": "t", "game": "Pong", "algorithm": "gpt"})


def test_model_keys_are_checked_against_the_imitator_s_constructor():
    def error_of(algorithm, model) -> str:
        with pytest.raises(ConfigError) as err:
            parse_config({"kind": "distill", "teacher": "t", "game": "Pong", "algorithm": algorithm, "model": model})
        return str(err.value)

    msg = error_of("bc", {"context": 64})
    assert "model.context: unknown key for algorithm 'bc'; valid keys here: cnn, stack, hidden" in msg
    assert "attention_dropout" in error_of("ad_gru", {"attention_dropout": 0.1})
    assert "model.context" in error_of("ad", {"context": 0}) and "greater than 0" in error_of("ad", {"context": 0})
    assert "model.dropout" in error_of("dt", {"dropout": 1.0})
    # DT's own parameters are settable now, as its constructor declares them
    cfg = parse_config({"kind": "distill", "teacher": "t", "game": "Pong", "algorithm": "dt",
                        "model": {"rtg_scale": 20.0, "max_timestep": 1000}})
    assert (cfg.model.rtg_scale, cfg.model.max_timestep) == (20.0, 1000)
    # a search sweeps the imitator's own keys
    with pytest.raises(ConfigError, match="search.model.context: not a sweepable key"):
        parse_config({"kind": "distill", "teacher": "t", "game": "Pong", "algorithm": "bc",
                      "search": {"model.context": {"grid": [8, 16]}}})
    # a manifest's config of older code (every shared key, mostly None) still validates
    old = {"cnn": "small", "stack": None, "hidden": None, "context": 64, "d_model": None, "layers": None,
           "heads": None, "dropout": None, "attention_dropout": None}
    assert parse_config({"kind": "distill", "teacher": "t", "game": "Pong", "algorithm": "ad",
                         "model": old}).model.model_dump(exclude_none=True) == {"cnn": "small", "context": 64}


class _Mean(torch.nn.Module):
    """A new imitator of the tests: the action a linear layer of the mean pixel gives."""

    def __init__(self, num_actions: int, scale: imitators.PositiveFloat = 1.0):
        super().__init__()
        self.head = torch.nn.Linear(1, num_actions)

    def sample_spec(self):
        from understudy.histories.data import SampleSpec

        return SampleSpec("step", 1, 1)

    def forward(self, obs):
        return self.head(obs.float().mean((1, 2, 3))[:, None])


def test_a_new_imitator_is_one_registration(monkeypatch):
    monkeypatch.setattr(imitators, "_IMITATORS", dict(imitators._IMITATORS))
    mean = imitators.register("mean", imitators.Imitator(_Mean, lambda model, n, greedy, seed: None))
    assert "mean" in imitators.names() and not mean.cross_episode
    cfg = parse_config({"kind": "distill", "teacher": "t", "game": "Pong", "algorithm": "mean", "model": {"scale": 2}})
    assert cfg.model.model_dump(exclude_none=True) == {"scale": 2.0}
    with pytest.raises(ConfigError, match="valid keys here: scale"):
        parse_config({"kind": "distill", "teacher": "t", "game": "Pong", "algorithm": "mean",
                      "model": {"cnn": "small"}})
    # a model that keeps no spec gets one: its constructor arguments, defaults included
    assert imitation.build("mean", 3).spec == {"num_actions": 3, "scale": 1.0, "algorithm": "mean"}
    with pytest.raises(ValueError, match="already registered"):
        imitators.register("mean", imitators.Imitator(torch.nn.Linear, lambda *a, **k: None))
    with pytest.raises(ConfigError, match="context_reset is a control of in-context learning"):
        parse_config({"kind": "pipeline", "teach": {"kind": "teach", "algorithm": "ppo", "games": ["Pong"],
                                                    "env_steps": 1024},
                      "distill": {"game": "Pong", "algorithm": "mean"},
                      "evaluate": {"games": ["Pong"], "agents": ["imitator", "context_reset"]}})


def test_a_checkpoint_never_makes_a_module_import(tmp_path, monkeypatch):
    """A checkpoint's model.json names its imitator; a `module:attribute` there is not imported
    (it would run the module's code): only a caller that names it itself (expect=) imports it."""
    canary = tmp_path / "canary_module_understudy.py"
    canary.write_text("import pathlib\npathlib.Path(__file__).with_suffix('.imported').touch()\nX = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = imitation.build("bc", 3, cnn="grid", stack=1)
    imitation.save(model, str(tmp_path / "ck"), {})
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    (tmp_path / "ck" / "model.json").write_text(json.dumps({**meta, "algorithm": "canary_module_understudy:X"}))
    with pytest.raises(ValueError, match="imported only when the caller expects it"):
        imitation.load(str(tmp_path / "ck"))
    imported = tmp_path / "canary_module_understudy.imported"
    assert "canary_module_understudy" not in sys.modules and not imported.exists()
    with pytest.raises(ValueError, match="int is not an Imitator"):  # named by the caller: imported, then refused
        imitation.load(str(tmp_path / "ck"), expect="canary_module_understudy:X")
    assert imported.exists()


def test_encoders_are_declared_once_and_both_networks_read_the_declaration():
    """An imitator's CNN (nets.FrameEncoder) and an RLlib teacher's (teachers.CNN_FILTERS) are
    built from the one declaration in algorithms/encoders.py."""
    from understudy.algorithms.encoders import ENCODERS
    from understudy.algorithms.nets import FrameEncoder
    from understudy.algorithms.teachers import CNN_FILTERS

    assert CNN_FILTERS["nature"] == [[32, [8, 8], 4, "valid"], [64, [4, 4], 2, "valid"], [64, [3, 3], 1, "valid"]]
    for name, encoder in ENCODERS.items():
        convs = [m for m in FrameEncoder(name, 1, 8).modules() if isinstance(m, torch.nn.Conv2d)]
        assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == list(encoder.convs), name
        assert [[o, [k, k], s, "valid"] for o, k, s in encoder.convs] == CNN_FILTERS.get(name, []), name
