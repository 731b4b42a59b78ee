"""Shared fixtures: Hydra state hygiene and tiny configurations that train in seconds."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import rcnn_cli.config  # noqa: F401
from rcnn_cli.benchmark import FP32_PLAIN_STEP

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = [
    "dataset.train_size=8", "dataset.val_size=4", "dataset.image_size=64",
    "schedule.batch_size=2", "schedule.max_iter=4", "schedule.warmup_iters=2",
    "schedule.checkpoint_period=2", "schedule.eval_period=0", "log.period=2",
    "dataset.num_workers=0",  # no worker start-up in tiny runs (shapes default: 2)
    # fp32 and the plain optimizer step whatever the CPU (the shapes recipe picks bf16 where the
    # CPU has it natively, and torch's fused AdamW): the same numbers on every CI machine
    *FP32_PLAIN_STEP,
]
# SGD without momentum keeps no optimizer state, so a checkpoint is the model alone: a third of
# one with the recipe's AdamW (two moments per weight, ~160 MB for the default model). A tiny run
# writes and hashes two checkpoints, best.pt and the export: runs whose tests never look at the
# optimizer add this to TINY (the tests of exact resume keep the recipe's AdamW).
NO_OPTIMIZER_STATE = ["schedule.optimizer=sgd", "schedule.momentum=0"]


# Test files go to RAM where enough of it is free: the suite writes gigabytes of checkpoints
# (each written and hashed), and the CI machine's disk takes them at ~100 MB/s.
MEMORY_TEMP = Path("/dev/shm")
MEMORY_TEMP_FREE = 12 * 2**30  # the suite's files peak at ~5 GB with every module's left in
# tmp_path_factory folders whose name starts with this outlive their module (session fixtures)
SESSION_TEMP = "session-"


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core) each worker computes on one
    thread, and so do the programs its tests start (threads=0 leaves torch at OMP_NUM_THREADS).
    The controlling process points TMPDIR at a RAM-backed folder (the workers and the programs
    the tests start inherit it) unless TMPDIR is set or too little memory is free there."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    elif "TMPDIR" not in os.environ and free_bytes(MEMORY_TEMP) >= MEMORY_TEMP_FREE:
        root = MEMORY_TEMP / "rcnn-cli-tests"
        root.mkdir(exist_ok=True)
        os.environ["TMPDIR"] = str(root)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


@pytest.fixture(scope="module", autouse=True)
def module_temp_cleanup(request, tmp_path_factory):
    """A module's tmp_path_factory folders go when it ends with no failure (tmp_path_retention_
    policy = "failed" removes only function-scoped ones as each test passes, the rest at the
    end of the session): the suite's files peak at one module's per worker, not all of them."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            if not path.name.startswith(SESSION_TEMP):
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def clean_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def compose_cfg(name: str = "train", overrides: list[str] | None = None):
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        return compose(name, overrides=overrides or [])


def run_cli(tool: str, *args: str, cwd: Path | None = None, timeout: int = 600):
    """``tool ARGS`` as a user runs it (in a fork of the preloaded helper: ``tests/preloaded``)."""
    from importlib.metadata import entry_points

    from tests import preloaded

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    (entry,) = entry_points(group="console_scripts", name=tool)
    return preloaded.run([str(BIN / tool), *args], f"entry:{entry.value}", env, cwd, timeout)


@pytest.fixture(scope="session", autouse=True)
def preloaded_helper():
    """The preloaded helper ends with the session."""
    from tests import preloaded

    yield
    preloaded.close()
