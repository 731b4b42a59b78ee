"""Run a program of benchmarks/ as a user would (a subprocess from the repository root)."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

from tests import preloaded
from tests.conftest import REPO


def run_program(name: str, *args: str, timeout: int = 300) -> str:
    """``python benchmarks/<name>.py ARGS``; fails the test with its stderr, returns stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    script = REPO / "benchmarks" / f"{name}.py"
    done = preloaded.run([sys.executable, str(script), *args], f"script:{script}", env, REPO,
                         timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def load_program(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module, to test its functions directly."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
