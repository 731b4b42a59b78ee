"""The wheel ships the config tree: console scripts work from outside the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("pkg")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", "outputs", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(work / "dist"), str(src)], check=True)
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    # Reuse the dependencies already installed here instead of downloading them again.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
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
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
