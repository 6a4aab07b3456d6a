"""platform/ must never shadow the standard library's `platform` module."""
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_no_init_in_platform_folder():
    assert not os.path.exists(os.path.join(REPO_ROOT, "platform", "__init__.py"))


def test_stdlib_platform_wins_with_repo_root_on_sys_path():
    code = ("import sys; sys.path.insert(0, %r); import platform; platform.system(); "
            "print(platform.__file__)" % REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert not out.startswith(REPO_ROOT), out
    assert out.endswith("platform.py")


def test_package_imports_from_repo_root():
    code = ("import platform; platform.machine(); "
            "import understudy.platform.cli, understudy.envs, understudy.algorithms.bc")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
