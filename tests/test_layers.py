"""The layers import only downwards: envs -> histories -> algorithms -> platform -> bench.
A module may import from its own layer or any layer below it, never above (an upward import
is how `algorithms/` once reached into `platform/` for the shard and loader code)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["envs", "histories", "algorithms", "platform"]


def understudy_imports(path: Path) -> set[str]:
    """The layers a file imports from (top-level and inside functions alike)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "understudy" and len(parts) > 1:
                found.add(parts[1])
    return found


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
