"""The private names of RLlib, Tune and Ray Data that the project uses are all in
algorithms/rllib_compat.py, and each is there on the installed Ray as expected: an upgrade that
renames or reshapes one fails here, naming it and why the project needs it."""
import ast
import importlib
import inspect
import re
from pathlib import Path

from understudy.algorithms import rllib_compat

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("envs", "histories", "algorithms", "platform")
# Private names that are not Ray's: torch's fused per-tensor ops (algorithms/dqn_teacher.py), and
# what ABCMeta sets on every abstract class.
NOT_RAY = {"_foreach_norm", "_foreach_mul_", "_abc_impl"}


def resolve(place: str):
    """(the object a `module:Qual.name` place names; what is missing, "" if nothing)."""
    module, _, qualname = place.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        return None, f"module {module} cannot be imported ({err})"
    for part in qualname.split("."):
        if not hasattr(obj, part):
            return None, f"{module} has no {qualname}"
        obj = getattr(obj, part)
    return obj, ""


def problem(entry: rllib_compat.Private) -> str | None:
    """What is wrong with one private name on the installed Ray, or None."""
    if entry.kind == "attribute":  # an instance attribute: set in its class's (or a base class's) own code
        owner, _, attribute = entry.place.rpartition(".")
        cls, missing = resolve(owner)
        if missing:
            return missing
        sources = [inspect.getsource(c) for c in cls.__mro__ if c.__module__.startswith("ray.")]
        setter = re.compile(rf"self\.{re.escape(attribute)}\s*(:[^=\n]*)?=[^=]")
        return None if any(setter.search(s) for s in sources) else f"{cls.__name__} no longer sets self.{attribute}"
    obj, missing = resolve(entry.place)
    if missing:
        return missing
    if entry.kind == "value" or entry.kind == "override" and not callable(obj):  # a class attribute
        return None
    if entry.kind == "text":
        return None if entry.expects[0] in inspect.getsource(obj) else f"{entry.expects[0]!r} is not in its source"
    params = tuple(inspect.signature(obj).parameters)
    if entry.kind == "keyword":
        return None if entry.expects[0] in params else f"takes no {entry.expects[0]} (its parameters: {params})"
    if params != entry.expects:  # override, call
        return f"takes {params}, expected {entry.expects}"
    return None


def test_every_private_name_is_there_as_expected():
    found = [f"{e.place} ({e.kind}): {p}. Needed because {e.why} (used by {e.used_by})"
             for e in rllib_compat.NAMES if (p := problem(e)) is not None]
    assert not found, "Ray changed a private name understudy uses (algorithms/rllib_compat.py):\n" + "\n".join(found)


def test_the_check_sees_a_changed_name():
    gone = rllib_compat.Private("ray.rllib.env.single_agent_env_runner:SingleAgentEnvRunner._no_such", "call", "", "")
    reshaped = rllib_compat.Private("ray.rllib.env.single_agent_env_runner:SingleAgentEnvRunner._log_episode_metrics",
                                    "override", "", "", ("self", "length"))
    unset = rllib_compat.Private("ray.rllib.env.single_agent_env_runner:SingleAgentEnvRunner._never_set",
                                 "attribute", "", "")
    assert "has no SingleAgentEnvRunner._no_such" in problem(gone)
    assert "takes ('self', 'length', 'ret', 'sec')" in problem(reshaped)
    assert "no longer sets self._never_set" in problem(unset)


def own_names(trees) -> set[str]:
    """Every name the project defines: functions, classes, variables, arguments, and attributes
    it sets on `self` or `cls`."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
    return names


def private_uses(path: Path, own: set[str]) -> list[str]:
    """Each private name `path` uses that the project does not define: an attribute, a keyword
    argument or a key of a dict spread into a call's keywords; an override's call of its own
    name on super() is the override's."""
    tree = ast.parse(path.read_text(), str(path))
    overrides = {f"{n.name}" for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Attribute):
            is_super = isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "super"
            if not (is_super and node.attr in overrides):
                names = [node.attr]
        elif isinstance(node, ast.keyword) and node.arg:
            names = [node.arg]
        elif isinstance(node, ast.Dict):
            names = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                     and re.fullmatch(r"_[a-z]\w*", k.value)]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                  if n.startswith("_") and not n.startswith("__") and n not in own and n not in NOT_RAY]
    return found


def test_no_private_ray_name_is_used_outside_the_compat_module():
    paths = [p for layer in LAYERS for p in sorted((ROOT / layer).glob("*.py")) if p.name != "rllib_compat.py"]
    own = own_names(ast.parse(p.read_text()) for p in paths)
    found = [use for p in paths for use in private_uses(p, own)]
    assert not found, f"private names of Ray used outside algorithms/rllib_compat.py (go through it): {found}"


def test_the_scan_sees_a_private_use(tmp_path):
    bad = ROOT / "algorithms" / "_scan_example.py"
    try:
        bad.write_text("def f(runner, group):\n    runner._seed\n    group.update(_no_metrics_reduce=True)\n"
                       "    group.update(**{'_return_metrics': True})\n    self._mine = 1\n    self._mine\n")
        uses = [u.split(": ")[1] for u in private_uses(bad, own_names([ast.parse(bad.read_text())]))]
    finally:
        bad.unlink()
    assert uses == ["_seed", "_no_metrics_reduce", "_return_metrics"]


def ray_subclasses():
    """The project's classes that subclass a Ray class (those made by a function, too)."""
    from ray.rllib.algorithms.dqn import DQN
    from ray.rllib.algorithms.ppo import PPO

    from understudy.algorithms import atari_runner, dqn_teacher, teachers
    from understudy.histories import arrow_datasource
    from understudy.platform import tracking

    modules = (atari_runner, dqn_teacher, teachers, arrow_datasource, tracking)
    classes = {c for m in modules for c in vars(m).values() if isinstance(c, type) and c.__module__ == m.__name__}
    classes |= {teachers.recording_algorithm(PPO), teachers.recording_algorithm(DQN),
                teachers.recording_algorithm(dqn_teacher.DQNTeacher)}
    return [c for c in classes if any(b.__module__.startswith("ray.") for b in c.__mro__[1:])]


def test_every_private_override_of_a_ray_class_is_listed():
    """A private method of a project class that a Ray base class also has is an override of a
    private hook: listed in rllib_compat, or (a helper of ours that a new Ray shadows) renamed."""
    listed = {e.place.partition(":")[2].rpartition(".")[2] for e in rllib_compat.NAMES if e.kind == "override"}
    unlisted = []
    for cls in ray_subclasses():
        bases = [b for b in cls.__mro__[1:] if b.__module__.startswith("ray.")]
        for name in vars(cls):
            if name.startswith("_") and not name.startswith("__") and any(hasattr(b, name) for b in bases) \
                    and name not in listed | NOT_RAY:
                unlisted.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    assert not unlisted, f"private methods of Ray classes overridden but not in algorithms/rllib_compat.py: {unlisted}"
    assert len(ray_subclasses()) >= 7
