"""platform/ asks the registries what an imitator, an env family, an encoder or an RLlib teacher
kind does and never branches on its name: no comparison or membership test against an
imitator's, a family's, an encoder's or a teacher kind's name, no identity test against a family
object, no import of one family's own module.
The branches still there are listed in KNOWN with why; one fixed must leave the list, and a new
one fails (tests/test_sources.py holds the same for history sources)."""
import ast
from pathlib import Path

from understudy.algorithms import encoders, imitators, teacher_kinds
from understudy.envs import families

ROOT = Path(__file__).resolve().parents[1]
FAMILY_OBJECTS = {"ALE", "MINATAR", "MINATAR_COLUMNS", "DARKROOM"}  # envs/families.py
FAMILY_MODULES = {"understudy.envs.atari", "understudy.envs.darkroom", "understudy.envs.minatar",
                  "understudy.envs.minatar_columns"}

# (file, the branch's source) -> why it is still there
KNOWN: dict[tuple[str, str], str] = {}


def _strings(node) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def _name(node) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def branches(path: Path, names: set[str]) -> list[tuple[str, str]]:
    """(file, source) of each comparison in `path` with one of `names` (a literal, or in a
    literal tuple, list or set) or with a family object, and each import of a family's module."""
    text = path.read_text()
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if {s for side in sides for s in _strings(side)} & names or {_name(s) for s in sides} & FAMILY_OBJECTS:
                found.append((path.name, ast.get_source_segment(text, node)))
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            if modules & FAMILY_MODULES:
                found.append((path.name, ast.get_source_segment(text, node)))
    return found


def names() -> set[str]:
    return (set(imitators.names()) | {f.name for f in families.registered()} | set(encoders.ENCODERS)
            | set(teacher_kinds.names()))


def test_platform_never_branches_on_an_imitator_family_encoder_or_teacher_kind_name():
    found = [b for p in sorted((ROOT / "platform").glob("*.py")) for b in branches(p, names())]
    new = [f"{f}: {src}" for f, src in found if (f, src) not in KNOWN]
    assert not new, f"branches on a name in platform/ (ask the registry instead): {new}"
    fixed = [k for k in KNOWN if k not in found]
    assert not fixed, f"no longer there, take them out of KNOWN: {fixed}"


def test_the_check_sees_each_kind_of_branch(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from understudy.envs.darkroom import NUM_ACTIONS\n"
                   "if cfg.algorithm == 'ad': pass\n"
                   "if algorithm in ('bc', 'dt'): pass\n"
                   "if family.name != \"darkroom\": pass\n"
                   "if family is ALE: pass\n"
                   "if 'small' == cnn: pass\n"
                   "if cfg.algorithm == \"dqn\": pass\n"
                   "if kind in AGENT_KINDS or x == 'teacher': pass\n")
    assert [src for _, src in branches(bad, names())] == [
        "from understudy.envs.darkroom import NUM_ACTIONS", "cfg.algorithm == 'ad'", "algorithm in ('bc', 'dt')",
        'family.name != "darkroom"', "family is ALE", "'small' == cnn", 'cfg.algorithm == "dqn"']
