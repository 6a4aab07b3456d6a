"""Every bad input in docs/bad_input.md, tried for real through the CLI: the exit code, and a
one-line message that names the field, the value and what would be valid. Nothing is left
half-written. `python tests/test_bad_input.py` prints the table that docs/bad_input.md holds.

Exit codes: 2 bad input caught before any work, 1 a stage refused its input.
"""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import REPO_ROOT  # noqa: E402

TEACH = "kind: teach\nalgorithm: ppo\ngames: [Pong]\nenv_steps: 512\n"
DARKROOM_TEACH = ("kind: teach\nname: dr\nalgorithm: qlearning\ngames: [DarkRoom]\nenv_steps: 200\n"
                  "env_steps_per_iter: 20\n")
DARKROOM_DISTILL = textwrap.dedent("""\
    kind: distill
    name: dr-ad
    teacher: dr
    game: DarkRoom
    algorithm: ad
    model: {cnn: grid, stack: 1, context: 40, d_model: 16, layers: 1, heads: 2}
    epochs: 1
    max_batches_per_epoch: 2
    verify_shards: false
    allow_unlearned: true
    allow_flat_windows: true
    """)


@dataclass
class Case:
    id: str
    what: str  # the bad input, in words
    argv: list  # CLI arguments; "{tmp}" / "{ws}" / "{cfg}" are filled in
    config: str | None  # the YAML written to {cfg}, if any
    exit_code: int
    says: tuple  # fragments the one-line message must contain
    needs_darkroom: bool = False  # a workspace with a recorded Dark Room teacher and AD imitator
    env: tuple = ()  # (name, value) environment variables set while it runs


CASES = [
    Case("binary-config", "a config file of binary bytes", ["teach", "{cfg}"], "\udca4binary",
         2, ("config.yaml", "not a UTF-8 text", "0xa4", "position 0")),
    Case("duplicate-key", "a YAML mapping with the same key twice", ["teach", "{cfg}"],
         TEACH + "env_steps: 1024\n", 2, ("config.yaml", "line 5", "'env_steps' appears twice", "line 4")),
    Case("wrong-game", "a game name that does not exist", ["teach", "{cfg}"],
         TEACH.replace("[Pong]", "[Pongg]"), 2, ("games[0]", "Pongg", "Pong")),
    Case("negative-budget", "a negative env-step budget", ["teach", "{cfg}"],
         TEACH.replace("512", "-1"), 2, ("env_steps", "-1", "greater than 0")),
    Case("zero-budget", "a zero env-step budget", ["teach", "{cfg}"],
         TEACH.replace("512", "0"), 2, ("env_steps", "greater than 0")),
    Case("zero-episodes", "zero evaluation episodes", ["evaluate", "{cfg}"],
         "kind: evaluate\nimitator: a\nteacher: b\ngames: [Pong]\nepisodes: 0\n", 2, ("episodes", "greater than 0")),
    Case("unknown-algorithm", "an algorithm that does not exist", ["teach", "{cfg}"],
         TEACH.replace("ppo", "a2c"), 2, ("algorithm", "a2c", "ppo", "dqn", "annealed", "qlearning")),
    Case("unknown-imitator", "an imitator algorithm that does not exist", ["distill", "{cfg}"],
         "kind: distill\nteacher: t\ngame: Pong\nalgorithm: gpt\n", 2, ("algorithm", "gpt", "'ad'", "'ad_gru'")),
    Case("malformed-yaml", "malformed YAML", ["teach", "{cfg}"],
         "kind: teach\ngames: [Pong\n", 2, ("malformed YAML at line",)),
    Case("unknown-key", "a config key that does not exist (typo)", ["teach", "{cfg}"],
         TEACH + "env_step: 100\n", 2, ("env_step: unknown", "env_steps")),
    Case("unknown-nested-key", "a nested key that does not exist", ["distill", "{cfg}"],
         "kind: distill\nteacher: t\ngame: Pong\nalgorithm: ad\nmodel: {layer: 2}\n", 2, ("model.layer", "layers")),
    Case("key-of-another-imitator", "a model key the chosen imitator does not take", ["distill", "{cfg}"],
         "kind: distill\nteacher: t\ngame: Pong\nalgorithm: bc\nmodel: {context: 64}\n", 2,
         ("model.context", "algorithm 'bc'", "cnn, stack, hidden")),
    Case("unknown-kind", "a config of an unknown kind", ["teach", "{cfg}"],
         "kind: train\n", 2, ("kind", "train", "teach, distill, evaluate")),
    Case("wrong-kind", "a distill config given to `teach`", ["teach", "{cfg}"],
         "kind: distill\nteacher: t\ngame: Pong\n", 2, ("distill", "teach")),
    Case("unknown-suite", "a game suite that does not exist", ["teach", "{cfg}"],
         "kind: teach\nalgorithm: ppo\nsuite: dev\nenv_steps: 512\n", 2, ("suite", "dev5", "mgdt")),
    Case("unsweepable", "a search over a key that cannot be swept", ["distill", "{cfg}"],
         "kind: distill\nteacher: t\ngame: Pong\nalgorithm: ad\nsearch: {teacher: {grid: [a, b]}}\n", 2,
         ("search.teacher", "not a sweepable key", "model.d_model")),
    Case("darkroom-ppo", "Dark Room with an Atari teacher algorithm", ["teach", "{cfg}"],
         DARKROOM_TEACH.replace("qlearning", "ppo"), 2, ("DarkRoom", "qlearning")),
    Case("gap-and-expert", "gap subsampling combined with expert-only data", ["distill", "{cfg}"],
         "kind: distill\nteacher: t\ngame: Pong\ndata: {gap: 2, expert_last: 5}\n", 2,
         ("expert_last and gap cannot be combined",)),
    Case("unknown-experiment", "an experiment name that does not exist", ["experiment", "darkroom"],
         None, 2, ("darkroom", "ready ones", "darkroom_ad")),
    Case("unknown-scale", "an experiment scale that does not exist", ["experiment", "darkroom_ad", "--scale", "huge"],
         None, 2, ("scale 'huge'", "demo", "full")),
    Case("heldout-in-training-config", "a held-out game that is also a training game (experiment file)",
         ["experiment", "{cfg}"],
         textwrap.dedent("""\
             kind: experiment
             name: leak
             teach: {algorithm: ppo, games: [Breakout, Pong], env_steps: 1024}
             distill: {games: [Breakout, Pong]}
             evaluate: {games: [Breakout, Pong], heldout_games: [Pong]}
             """), 2, ("heldout_games", "Pong", "never be trained on")),
    Case("missing-config", "a config file that does not exist", ["teach", "{tmp}/nope.yaml"],
         None, 2, ("nope.yaml",)),
    Case("unwritable-shard-root", "a shard root that cannot be written",
         ["--shard-root", "{tmp}/a-file/shards", "teach", "{cfg}"], TEACH, 2, ("not writable", "a-file")),
    Case("no-catalog-root", "a shard root with no recorded runs (no catalog)",
         ["shards", "ls", "--root", "{tmp}"], None, 1, ("no recorded runs", "catalog")),
    Case("missing-root", "a shard root that does not exist", ["shards", "verify", "--root", "{tmp}/none"],
         None, 1, ("does not exist", "none")),
    Case("missing-stage", "evaluate names a distill stage that was never run", ["evaluate", "{cfg}"],
         "kind: evaluate\nimitator: never-ran\nteacher: dr\ngames: [DarkRoom]\nagents: [imitator]\n", 2,
         ("never-ran",), needs_darkroom=True),
    Case("catalog-lost", "distill from a teacher run whose catalog was deleted", ["distill", "{cfg}"],
         DARKROOM_DISTILL.replace("name: dr-ad", "name: dr-ad2"), 1, ("no catalog", "shards verify"),
         needs_darkroom=True),
    Case("foreign-checkpoint", "an imitator checkpoint holding another model's weights",
         ["evaluate", "{cfg}"],
         "kind: evaluate\nimitator: dr-ad\nteacher: dr\ngames: [DarkRoom]\nagents: [imitator]\n",
         1, ("checkpoint of distill stage 'dr-ad' cannot be used", "do not fit a ad model"), needs_darkroom=True),
    Case("unknown-preset", "a teacher preset that does not exist", ["teach", "{cfg}"],
         TEACH + "preset: cleanrl\n", 2, ("preset", "'cleanrl'", "'ppo'", "atari")),
    Case("minatar-imitator-cnn", "a MinAtar game for an imitator with an 84x84 encoder", ["distill", "{cfg}"],
         "kind: distill\nteacher: t\ngame: MinAtar/Breakout\nmodel: {cnn: small}\n", 2,
         ("MinAtar/Breakout", "model.cnn", "cnn: minatar")),
    Case("short-context", "an AD context too short to hold two of its data's episodes", ["distill", "{cfg}"],
         DARKROOM_DISTILL.replace("name: dr-ad", "name: dr-short").replace("context: 40", "context: 30"), 1,
         ("model.context 30", "1.5 episodes", ">= 40", "allow_short_context"), needs_darkroom=True),
    Case("broken-manifest", "a stage manifest edited by hand into something else", ["evaluate", "{cfg}"],
         "kind: evaluate\nimitator: dr-ad\nteacher: dr\ngames: [DarkRoom]\nagents: [imitator]\n", 2,
         ("distill-dr-ad.json", "not a valid distill manifest", "checkpoint"), needs_darkroom=True),
    Case("heldout-in-training-stage", "evaluate calls a game held out that the imitator was trained on",
         ["evaluate", "{cfg}"],
         "kind: evaluate\nimitator: dr-ad\nteacher: dr\ngames: [DarkRoom]\nheldout_games: [DarkRoom]\n"
         "agents: [random]\n",
         1, ("heldout_games", "DarkRoom", "training data", "data "), needs_darkroom=True),
    Case("env-not-a-number", "an environment variable that should be a number", ["teach", "{cfg}"], TEACH, 2,
         ("UNDERSTUDY_STORAGE_RETRY_S='abc'", "not a number", "valid: a number >= 0", "default 300"),
         env=(("UNDERSTUDY_STORAGE_RETRY_S", "abc"),)),
    Case("env-out-of-range", "an environment variable out of its range", ["teach", "{cfg}"], TEACH, 2,
         ("UNDERSTUDY_NUM_CPUS='0'", "out of range", "a whole number >= 1"), env=(("UNDERSTUDY_NUM_CPUS", "0"),)),
    Case("cutoff-beyond-histories", "a teacher cutoff past the end of every history it reads", ["distill", "{cfg}"],
         DARKROOM_DISTILL.replace("name: dr-ad", "name: dr-cut") + "data: {cutoff_env_steps: 100000}\n", 1,
         ("cutoff_env_steps=100000", "beyond every history", "the longest, run darkroom-", "200 env steps"),
         needs_darkroom=True),
]


COPY = ("catalog-lost", "foreign-checkpoint", "broken-manifest")  # cases that damage the workspace: run on a copy


def darkroom_workspace(base: Path) -> Path:
    """A workspace with a real (tiny) Dark Room teacher and AD imitator, run through the CLI."""
    from understudy.platform import cli

    ws = base / "ws"
    (base / "teach.yaml").write_text(DARKROOM_TEACH)
    (base / "distill.yaml").write_text(DARKROOM_DISTILL)
    assert cli.main(["--workspace", str(ws), "teach", str(base / "teach.yaml")]) == 0
    assert cli.main(["--workspace", str(ws), "distill", str(base / "distill.yaml")]) == 0
    return ws


def try_case(case: Case, tmp: Path, ws: Path, capsys=None) -> tuple[int, str]:
    """Run the case through the CLI; (exit code, what the user saw on stderr)."""
    from understudy.platform import cli

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "a-file").write_text("not a folder")
    cfg = tmp / "config.yaml"
    if case.config is not None:  # lone surrogates stand for raw bytes (a binary file)
        cfg.write_bytes(case.config.encode("utf-8", "surrogateescape"))
    if case.id == "catalog-lost":  # the teacher's catalog folders go away; its shards stay
        import json

        teach = json.loads((ws / "stages" / "teach-dr.json").read_text())
        for run in teach["runs"]:
            shutil.rmtree(os.path.join(teach["shard_root"], run["run_id"], "catalog"))
    if case.id == "broken-manifest":  # a hand edit dropped the checkpoint
        import json

        path = ws / "stages" / "distill-dr-ad.json"
        manifest = json.loads(path.read_text())
        del manifest["checkpoint"]
        path.write_text(json.dumps(manifest))
    if case.id == "foreign-checkpoint":  # a BC model's weights where the AD model's should be
        import json

        import torch

        from understudy.algorithms import bc

        checkpoint = json.loads((ws / "stages" / "distill-dr-ad.json").read_text())["checkpoint"]
        torch.save(bc.ConvPolicy(5, cnn="grid", stack=1).state_dict(), os.path.join(checkpoint, "model.pt"))
    argv = [a.format(tmp=tmp, ws=ws, cfg=cfg) for a in case.argv]
    saved = {name: os.environ.get(name) for name, _ in case.env}
    os.environ.update(dict(case.env))
    try:
        code = cli.main(["--workspace", str(ws), *argv])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    err = capsys.readouterr().err if capsys else ""
    return code, err.strip()


@pytest.fixture(scope="module")
def darkroom(ray_session, tmp_path_factory):
    return darkroom_workspace(tmp_path_factory.mktemp("darkroom"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, capsys, request):
    ws = request.getfixturevalue("darkroom") if case.needs_darkroom else tmp_path / "ws"
    if case.id in COPY:  # on a copy: the other cases use the intact workspace
        copy = tmp_path / "ws-copy"
        shutil.copytree(ws, copy)
        _retarget(copy, ws)
        ws = copy
    capsys.readouterr()
    code, err = try_case(case, tmp_path / "t", ws, capsys)
    assert code == case.exit_code, err
    message = [line for line in err.splitlines() if line.startswith("understudy:")]
    assert len(message) == 1, err
    for fragment in case.says:
        assert fragment in message[0], (fragment, message[0])
    if not case.needs_darkroom:
        assert not (tmp_path / "ws").exists() or case.id in ("no-catalog-root", "missing-root"), \
            "bad input must be refused before anything is written"


def _retarget(copy: Path, original: Path) -> None:
    """Point a copied workspace's stage manifests at the copy's own shards."""
    for path in (copy / "stages").glob("*.json"):
        path.write_text(path.read_text().replace(str(original), str(copy)))


def test_docs_table_lists_every_case():
    doc = (Path(REPO_ROOT) / "docs" / "bad_input.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"docs/bad_input.md lacks rows for {missing}: regenerate it with python tests/test_bad_input.py"


def main() -> None:
    """Print the docs table from what the CLI really says for each case."""
    import io
    import tempfile
    from contextlib import redirect_stderr, redirect_stdout

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = Path(tempfile.mkdtemp())
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        ws = darkroom_workspace(base)
    rows = []
    for i, case in enumerate(CASES):
        target = ws
        if case.id in COPY:
            target = base / f"ws-copy{i}"
            shutil.copytree(ws, target)
            _retarget(target, ws)
        elif not case.needs_darkroom:
            target = base / f"ws{i}"
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            code, _ = try_case(case, base / f"t{i}", target)
        line = next((x for x in err.getvalue().splitlines() if x.startswith("understudy:")), "")
        shown = " ".join(case.argv).replace("{cfg}", "cfg.yaml").replace("{tmp}", "/tmp/x").replace("{ws}", "ws")
        line = line.replace(str(base), "/tmp/x")
        env = "".join(f"{name}={value} " for name, value in case.env)
        rows.append(f"| `{case.id}` | {case.what} | `{env}understudy {shown}` | {code} | {line.replace('|', '/')} |")
    ray.shutdown()
    print("| case | bad input | command | exit | what the user sees (stderr) |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
