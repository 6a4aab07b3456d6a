"""The package as its users get it, with no source tree anywhere on the path.

The wheel is built from exactly what the Dockerfile copies into the image, installed on its own
(`--no-deps`) into a fresh virtual environment, and run from another directory: `plan` on a
ready experiment by its bare name (the README's `tune_configs/...` paths checked there too),
then a tiny ready experiment end to end. The imitator that experiment registers in MLflow is
then loaded and run in a second fresh environment built from the model's own logged
requirements, with understudy's code coming only from what the model carries.

No network: the dependencies (torch, Ray, MLflow...) are this test environment's own, made
importable through a .pth file naming a folder of links to this environment's site-packages
entries, understudy's own install left out. A plain path entry, unlike the site-packages folder
itself, runs no .pth file in it (the editable install's finder is one), so neither fresh
environment can reach the checkout.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

EXPERIMENT = "darkroom_annealed_floor"  # the cheapest ready experiment's tiny scale
PLANNED = ("minatar_breakout_to_spaceinvaders", "full")  # the RayJob example's (k8s/rayjob.yaml)


def dockerfile_context(dest: Path) -> Path:
    """A build context holding what the Dockerfile's COPY lines bring into its WORKDIR."""
    text = (Path(REPO_ROOT) / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, target = [a for a in shlex.split(line) if not a.startswith("--")]
        assert not os.path.isabs(target), f"COPY {line}: the test reads targets relative to WORKDIR"
        for source in sources:
            into = target.endswith("/") or len(sources) > 1
            to = dest / target / Path(source).name if into else dest / target
            to.parent.mkdir(parents=True, exist_ok=True)
            src = Path(REPO_ROOT) / source
            if src.is_dir():
                shutil.copytree(src, to, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, to)
    return dest


def dependencies_view(dest: Path) -> Path:
    """A folder of links to this environment's installed packages, understudy's own left out."""
    dest.mkdir()
    folders = dict.fromkeys(sysconfig.get_paths(vars={"base": sys.prefix, "platbase": sys.prefix})[k]
                            for k in ("purelib", "platlib"))
    for folder in folders:
        for entry in Path(folder).iterdir():
            if "understudy" in entry.name.lower() or entry.suffix == ".pth" or (dest / entry.name).exists():
                continue
            (dest / entry.name).symlink_to(entry)
    return dest


def fresh_env(path: Path, dependencies: Path) -> Path:
    """A new virtual environment (no pip: this environment's pip installs into it) whose only
    extra path entry is `dependencies`; its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = path / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=clean_env()).stdout.strip()
    Path(site, "test_dependencies.pth").write_text(f"{dependencies}\n")
    return python


def clean_env(bin_dir: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def pip_into(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check",
                           *args], capture_output=True, text=True, timeout=300, env=clean_env())


def run(argv: list, cwd: Path, bin_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(bin_dir), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(map(str, argv))}: exit {proc.returncode}\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of the Dockerfile's build context, installed alone into a fresh environment."""
    tmp = tmp_path_factory.mktemp("wheel")
    context = dockerfile_context(tmp / "context")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp / "dist"), str(context)],
                           capture_output=True, text=True, timeout=300, env=clean_env())
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp / "dist").glob("*.whl")
    dependencies = dependencies_view(tmp / "dependencies")
    python = fresh_env(tmp / "venv", dependencies)
    done = pip_into(python, "install", "--quiet", "--no-deps", "--no-index", str(wheel))
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"tmp": tmp, "wheel": wheel, "venv": tmp / "venv", "bin": tmp / "venv" / "bin", "python": python,
            "dependencies": dependencies, "cwd": elsewhere}


@pytest.fixture(scope="module")
def experiment_run(installed):
    """The tiny ready experiment by bare name, run by the installed `understudy` from elsewhere."""
    workspace = installed["tmp"] / "workspace"
    proc = run([installed["bin"] / "understudy", "--workspace", workspace, "experiment", EXPERIMENT,
                "--scale", "tiny"], installed["cwd"], installed["bin"])
    return workspace, proc


def test_the_wheel_is_named_as_ours_and_holds_the_shipped_data(installed):
    name = tomllib.loads((Path(REPO_ROOT) / "pyproject.toml").read_text())["project"]["name"]
    assert name == "understudy-icrl"  # PyPI's `understudy` is another project
    assert installed["wheel"].name.startswith("understudy_icrl-")
    files = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for shipped in ("tune_configs/experiments/darkroom_ad.yaml", "tune_configs/pipelines/demo.yaml",
                    "bench_results/stage_speeds.json", "k8s/raycluster.yaml"):
        assert f"understudy/{shipped}" in files


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    """`import understudy` resolves to the wheel in the fresh environment, and so do the shipped
    experiments, speeds and the README's `tune_configs/...` paths given from another directory."""
    probe = ("import json, importlib.metadata as m, understudy, understudy.platform.cli as cli, "
             "understudy.platform.experiment as e, understudy.platform.plan as p, understudy.platform.shipped as s; "
             "print(json.dumps({'path': list(understudy.__path__), 'cli': cli.__file__, "
             "'experiments': str(e.EXPERIMENTS), 'bench': str(p.BENCH), 'version': m.version('understudy-icrl'), "
             "'pipeline': str(s.config_path('tune_configs/pipelines/demo.yaml').resolve())}))")
    found = json.loads(run([installed["python"], "-c", probe], installed["cwd"], installed["bin"]).stdout)
    venv_root = str(installed["venv"].resolve())
    places = [*found["path"], found["cli"], found["experiments"], found["bench"], found["pipeline"]]
    assert Path(found["pipeline"]).is_file()
    assert all(str(Path(p).resolve()).startswith(venv_root) for p in places), found
    assert not any(str(Path(p).resolve()).startswith(str(Path(REPO_ROOT).resolve())) for p in places), found


def test_plan_by_bare_name_from_another_directory(installed):
    from understudy.platform.plan import run_plan

    name, scale = PLANNED
    proc = run([installed["bin"] / "understudy", "plan", name, "--scale", scale], installed["cwd"], installed["bin"])
    # the same plan as the checkout's: the experiment, every benchmark speed and the cluster were shipped
    assert proc.stdout == run_plan(name, scale) + "\n"
    assert "not measured" not in proc.stdout


def test_a_tiny_ready_experiment_runs_from_the_installed_wheel(experiment_run):
    workspace, proc = experiment_run
    assert "=== experiment done" in proc.stdout + proc.stderr
    assert (workspace / "mlflow.db").is_file()


def test_a_registered_imitator_predicts_in_an_environment_built_from_its_logged_requirements(installed,
                                                                                            experiment_run):
    """The registered model names no PyPI `understudy`: it carries understudy's code, and an
    environment with only its logged requirements (no understudy installed) loads it and
    predicts what the checkpoint's network computes."""
    import torch
    from mlflow.tracking import MlflowClient

    from understudy.algorithms import imitation

    workspace, _ = experiment_run
    tracking_uri = f"sqlite:///{workspace}/mlflow.db"
    client = MlflowClient(tracking_uri)
    registered = client.search_registered_models()
    assert registered
    version = max(registered[0].latest_versions, key=lambda v: int(v.version))
    uri = f"models:/{registered[0].name}/{version.version}"
    local = Path(client.get_model_version_download_uri(registered[0].name, version.version).removeprefix("file://"))

    requirements = (local / "requirements.txt").read_text().split()
    assert not [r for r in requirements if re.match(r"understudy\b", r)], requirements
    assert (local / "code" / "understudy" / "platform" / "imitator_model.py").is_file()

    env = installed["tmp"] / "model-env"
    python = fresh_env(env, installed["dependencies"])
    done = pip_into(python, "install", "--no-index", "-r", str(local / "requirements.txt"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    meta = json.loads((local / "data" / "checkpoint" / "model.json").read_text())
    assert meta["algorithm"] == "ad" and meta["cnn"] == "grid"  # Dark Room frames: 84x84, one per step
    rng = np.random.default_rng(0)
    steps = meta["context"]
    batch = {"obs": rng.integers(0, 2, (2, steps, 84, 84, meta["stack"])).astype(np.uint8) * 255,
             "prev_action": rng.integers(0, meta["num_actions"], (2, steps)),
             "prev_reward": rng.random((2, steps)).astype(np.float32),
             "new_episode": np.zeros((2, steps), bool)}
    np.savez(installed["tmp"] / "batch.npz", **batch)
    script = f"""
import json, importlib.metadata as m, sys
import numpy as np, mlflow
mlflow.set_tracking_uri({tracking_uri!r})
model = mlflow.pyfunc.load_model({uri!r})
batch = dict(np.load({str(installed['tmp'] / 'batch.npz')!r}))
np.save({str(installed['tmp'] / 'logits.npy')!r}, model.predict(batch))
try:
    installed = m.version("understudy-icrl")
except m.PackageNotFoundError:
    installed = None
print(json.dumps({{"code": sys.modules["understudy.platform.imitator_model"].__file__, "installed": installed}}))
"""
    found = json.loads(run([python, "-c", script], installed["cwd"], env / "bin").stdout.strip().splitlines()[-1])
    assert found["installed"] is None  # nothing but the model brought understudy
    assert f"{os.sep}code{os.sep}understudy{os.sep}platform{os.sep}imitator_model.py" in found["code"], found
    assert not found["code"].startswith(str(Path(REPO_ROOT).resolve()))

    model, _ = imitation.load(str(local / "data" / "checkpoint"))
    with torch.no_grad():
        expected = model({k: torch.as_tensor(v) for k, v in batch.items()}).numpy()
    np.testing.assert_allclose(np.load(installed["tmp"] / "logits.npy"), expected, rtol=1e-5, atol=1e-5)


def test_pyproject_ships_the_model_code_and_the_data_packages_and_nothing_else():
    """The packages pyproject.toml maps are the code a logged model carries (imitator_model)
    plus the data packages platform/shipped.py reads: a new one has to be placed in one of them."""
    from understudy.platform import imitator_model, shipped

    packages = tomllib.loads((Path(REPO_ROOT) / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(packages) == {*imitator_model.CODE_PACKAGES, shipped.CONFIGS, shipped.BENCH_RESULTS, shipped.K8S}


def test_a_users_own_config_wins_and_readme_paths_find_the_shipped_ones_from_anywhere(tmp_path, monkeypatch):
    from understudy.platform import experiment, shipped
    from understudy.platform.config import ConfigError

    monkeypatch.chdir(tmp_path)
    demo = shipped.config_path("tune_configs/pipelines/demo.yaml")
    assert demo == shipped.folder(shipped.CONFIGS) / "pipelines" / "demo.yaml" and demo.is_file()
    assert experiment.experiment_path("tune_configs/experiments/darkroom_ad.yaml") == experiment.EXPERIMENTS / \
        "darkroom_ad.yaml"
    own = tmp_path / "tune_configs" / "pipelines" / "demo.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("kind: pipeline\n")
    assert shipped.config_path("tune_configs/pipelines/demo.yaml").resolve() == own  # the user's file, here
    (tmp_path / "darkroom_ad.yaml").write_text("kind: experiment\n")
    assert experiment.experiment_path("darkroom_ad.yaml").resolve() == tmp_path / "darkroom_ad.yaml"
    assert experiment.experiment_path("darkroom_ad") == experiment.EXPERIMENTS / "darkroom_ad.yaml"
    assert shipped.config_path("elsewhere/missing.yaml") == Path("elsewhere/missing.yaml")  # reported by the loader
    with pytest.raises(ConfigError, match="ready ones: .*darkroom_ad"):
        experiment.experiment_path("no_such_experiment")
