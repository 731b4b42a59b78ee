"""The wheel ships every module and the config tree: console scripts work from outside the
source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """A wheel built from a clean copy of the tree, and the build's verbose output."""
    work = tmp_path_factory.mktemp("pkg")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", "outputs", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-v", "-w", str(work / "dist"), str(src)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, done.stdout + done.stderr


def test_wheel_build_prints_no_warning_and_ships_every_config(built):
    work, output = built
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings[:10])
    wheel = next((work / "dist").glob("rcnn_cli-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    expected = {"rcnn_cli/conf/" + p.relative_to(REPO / "conf").as_posix()
                for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == expected, sorted(expected ^ shipped)
    modules = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "rcnn_cli").rglob("*.py")} | {
        "rcnn_cli/conf/" + p.relative_to(REPO / "conf").as_posix()
        for p in (REPO / "conf").rglob("*.py")}
    assert modules == sources, sorted(sources ^ modules)  # every subpackage is listed


@pytest.fixture(scope="module")
def venv(built) -> Path:
    work, _ = built
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    # Reuse the dependencies already installed here instead of downloading them again.
    # (every site-packages on our path: a venv may reuse another one's packages through a .pth)
    deps = [sysconfig.get_paths()["purelib"], *(p for p in sys.path if p.endswith("-packages"))]
    (site / "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    wheel = next((work / "dist").glob("rcnn_cli-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"),
                    "install", "--no-deps", "-q", str(wheel)], check=True)
    return env_dir


def _run(venv: Path, tool: str, *args: str, cwd: Path):
    return subprocess.run([str(venv / "bin" / tool), *args], capture_output=True, text=True,
                          cwd=cwd)


def test_wheel_contains_the_config_tree(venv: Path, tmp_path: Path):
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import rcnn_cli, importlib.resources as r; print(rcnn_cli.__file__); "
                        "print(sorted(p.name for p in r.files('rcnn_cli.conf').iterdir()))"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(venv) in r.stdout and "train.yaml" in r.stdout and "schedule" in r.stdout


def test_rcnn_train_cfg_job_outside_the_source_tree(venv: Path, tmp_path: Path):
    r = _run(venv, "rcnn-train", "--cfg", "job", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "max_iter" in r.stdout and "r18_fpn" in r.stdout
    r = _run(venv, "rcnn-train", "--info", "searchpath", cwd=tmp_path)
    assert r.returncode == 0 and "pkg://rcnn_cli.conf" in r.stdout


def test_rcnn_eval_help_outside_the_source_tree(venv: Path, tmp_path: Path):
    r = _run(venv, "rcnn-eval", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rcnn-eval" in r.stdout


def test_every_subpackage_is_listed_in_pyproject():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "rcnn_cli").rglob("__init__.py")}
    on_disk |= {".".join(("rcnn_cli", "conf", *p.relative_to(REPO / "conf").parts))
                for p in (REPO / "conf").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
