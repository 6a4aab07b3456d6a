"""The layers import only downwards: envs -> histories -> algorithms -> platform -> bench.
A module may import from its own layer or any layer below it, never above (an upward import
is how `algorithms/` once reached into `platform/` for the shard and loader code)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["envs", "histories", "algorithms", "platform"]


def imported_names(path: Path) -> list[list[str]]:
    """Each project name a file imports, split at its dots (top-level and inside functions alike):
    ["understudy", "envs", "families", "family_of"]."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [name.split(".") for name in names if name.split(".")[0] == "understudy"]
    return found


def understudy_imports(path: Path) -> set[str]:
    """The layers a file imports from."""
    return {parts[1] for parts in imported_names(path) if len(parts) > 1}


@pytest.mark.parametrize("layer", ORDER)
def test_no_upward_imports(layer):
    above = set(ORDER[ORDER.index(layer) + 1:]) | {"bench"}
    offenders = {str(p.relative_to(ROOT)): sorted(understudy_imports(p) & above)
                 for p in sorted((ROOT / layer).glob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}, f"{layer}/ imports from a layer above it"


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from understudy.platform.shards import x\n")
    assert understudy_imports(bad) == {"platform"}


def test_nothing_reads_outside_the_repository():
    """The project stands alone: no code, test or config reaches beside the checkout (the
    KubeRay CRDs the k8s tests need are copied into k8s/crds/)."""
    offenders = []
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in (".venv", ".git", "docs", "workspace") or path.suffix not in (".py", ".yaml", ".toml", ".sh") \
                and path.name not in ("dev", "run"):
            continue
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.name == "test_layers.py":
            continue
        if "../shared" in text or '"..", "shared"' in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


def module_imports(path: Path) -> set[str]:
    """The project's modules a file imports ("platform.teach")."""
    return {f"{parts[1]}.{parts[2]}" for parts in imported_names(path)
            if len(parts) > 2 and (ROOT / parts[1] / f"{parts[2]}.py").is_file()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle of `graph` (module -> the modules it imports), once, from its smallest module."""
    cycles = []

    def walk(start, node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                cycles.append(path)
            elif nxt not in path and nxt > start:
                walk(start, nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return cycles


def test_no_import_cycles():
    """No module imports one that imports it back, even inside a function (platform/resources.py
    and platform/teach.py once did)."""
    graph = {f"{layer}.{p.stem}": module_imports(p) - {f"{layer}.{p.stem}"}
             for layer in ORDER for p in sorted((ROOT / layer).glob("*.py"))}
    assert not import_cycles(graph)


def test_the_check_sees_an_import_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
