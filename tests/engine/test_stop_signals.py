"""Stops the way clusters send them: a signal to the whole process group (``kill -- -<pgid>``,
``timeout``, SLURM), advance-warning signals, a DataLoader worker killed alone, torchrun.

Each run is ``rcnn-train`` (through ``stop_worker.py``, which holds a DataLoader worker at a
chosen item so the test signals at a known point) in its own session, signalled with
``os.killpg``; the printed resume command must reach the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rcnn_cli.engine.faults import EXIT_INTERRUPTED
from rcnn_cli.engine.train import train
from rcnn_cli.io import load_checkpoint
from tests.conftest import BIN, compose_cfg
from tests.engine.test_distributed import free_port

WORKER = Path(__file__).with_name("stop_worker.py")
RUN = ["dataset.train_size=8", "dataset.val_size=4", "dataset.image_size=64",
       "schedule.batch_size=2", "schedule.max_iter=4", "schedule.warmup_iters=2",
       "schedule.checkpoint_period=100", "schedule.eval_period=0", "log.period=1",
       "log.tensorboard=false", "dataset.num_workers=2", "threads=1", "device=cpu"]
TIMEOUT = 900  # generous: the test machine may be heavily loaded

pytestmark = pytest.mark.slow


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
            **extra}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Final weights of the uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(compose_cfg("train", RUN), run)
    return final_weights(run)


def final_weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def start(tmp_path: Path, overrides: list[str], gate: str, launcher=(sys.executable,)):
    """The run in a new session (its own process group), held at ``gate``
    (``<train|eval>:<n>``); returns the process and the gate directory."""
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    log = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen(
        [*launcher, str(WORKER), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        env=env(STOP_GATE=f"{gate}:{gate_dir}", STOP_EXIT_DIR=str(tmp_path)))
    return proc, gate_dir


def wait_for(condition, proc, tmp_path: Path, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert proc.poll() is None, f"exited before {what}:\n{output(tmp_path)[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def output(tmp_path: Path) -> str:
    return (tmp_path / "out.txt").read_text()


def reached(gate_dir: Path) -> list[int]:
    return [int(p.suffix[1:]) for p in gate_dir.glob("reached.*")]


def signal_group(proc, gate_dir: Path, sig: int) -> None:
    os.killpg(proc.pid, sig)
    (gate_dir / "go").touch()


def finish(proc, tmp_path: Path) -> int:
    try:
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60  # the workers go too: nothing is left in the group
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, "processes left in the group after the run"
        time.sleep(0.2)
    return proc.returncode


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def resume_and_compare(tmp_path: Path, reference: dict, staged: bool = False) -> int:
    """Run the printed resume command; its final weights equal the uninterrupted run's.
    Returns the iteration of the checkpoint it resumed from (joint training)."""
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    command = [ln.split("Resume with: ", 1)[1] for ln in lines if "Resume with: " in ln]
    assert len(command) == 1, lines[-5:]
    args = shlex.split(command[0])
    assert args[0] == "rcnn-train" and args[-1] == f"resume={tmp_path / 'run'}"
    r = subprocess.run([str(BIN / args[0]), *args[1:], f"hydra.run.dir={tmp_path / 'resumed'}"],
                       capture_output=True, text=True, timeout=TIMEOUT, env=env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    weights = final_weights(tmp_path / "resumed")
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    if staged:
        return -1
    stopped = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"]
    assert f"at iteration {stopped}" in (tmp_path / "resumed" / "train.log").read_text()
    return stopped


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_group_stop_during_training_checkpoints_exits_75_and_resumes_exactly(
        tmp_path, reference, sig):
    proc, gate = start(tmp_path, RUN, "train:3")
    wait_for(lambda: reached(gate), proc, tmp_path, "a worker loading iteration 3")
    signal_group(proc, gate, getattr(signal, sig))
    assert finish(proc, tmp_path) == EXIT_INTERRUPTED, output(tmp_path)[-3000:]
    out = output(tmp_path)
    assert "Traceback" not in out and f"{sig} at iteration" in out
    assert resume_and_compare(tmp_path, reference) < 4


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_group_stop_during_evaluation_keeps_the_training_checkpoint(tmp_path, reference, sig):
    proc, gate = start(tmp_path, [*RUN, "schedule.eval_period=2"], "eval:1")
    wait_for(lambda: reached(gate), proc, tmp_path, "evaluation at iteration 2")
    signal_group(proc, gate, getattr(signal, sig))
    assert finish(proc, tmp_path) == EXIT_INTERRUPTED, output(tmp_path)[-3000:]
    out = output(tmp_path)
    assert "Traceback" not in out
    assert f"{sig} during evaluation at iteration 2" in out
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert resume_and_compare(tmp_path, reference) == 2


def test_a_worker_killed_alone_is_one_line_and_the_checkpoint_stays(tmp_path):
    proc, gate = start(tmp_path, [*RUN, "schedule.checkpoint_period=2"], "train:3")
    index = tmp_path / "run" / "checkpoints" / "index.json"
    wait_for(lambda: reached(gate) and index.is_file(), proc, tmp_path, "checkpoint 2")
    victim = reached(gate)[0]
    os.kill(victim, signal.SIGKILL)  # what the out-of-memory killer does
    assert finish(proc, tmp_path) == 1
    out = output(tmp_path)
    log = (tmp_path / "run" / "train.log").read_text()
    errors = [ln for ln in log.splitlines() if "TrainingFault" in ln]
    assert "Traceback" not in out and "Traceback" not in log and len(errors) == 1, out[-3000:]
    for part in (f"pid {victim}", "out-of-memory", "dataset.num_workers", "schedule.batch_size"):
        assert part in errors[0], errors[0]
    assert json.loads(index.read_text())["last"]["iteration"] == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 2


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_torchrun_group_stop_stops_every_rank_at_one_step(tmp_path, sig):
    """torchrun forwards the signal to the ranks as well: each gets it twice."""
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={free_port()}", "--shutdown_timeout=600")
    overrides = [*RUN, "backbone.norm=frozen_bn", "dist.timeout_s=600"]
    proc, gate = start(tmp_path, overrides, "train:3", launcher=launcher)
    wait_for(lambda: len(reached(gate)) >= 2, proc, tmp_path, "both ranks' workers")
    signal_group(proc, gate, getattr(signal, sig))
    finish(proc, tmp_path)
    out = output(tmp_path)
    codes = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    assert codes == [str(EXIT_INTERRUPTED)] * 2, out[-3000:]
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("model_*.pt"))
    assert len(ckpts) == 1, out[-3000:]
    stopped = load_checkpoint(ckpts[0])["iteration"]
    assert f"{sig} at iteration {stopped}" in (tmp_path / "run" / "train.log").read_text()


STAGE_ITERS = ["schedule.stages.rpn1.max_iter=2", "schedule.stages.fast1.max_iter=4",
               "schedule.stages.rpn2.max_iter=2", "schedule.stages.fast2.max_iter=2"]
ALT = [*RUN, "schedule=alternating", "schedule.proposals.post_nms_top_n=300", *STAGE_ITERS]


@pytest.fixture(scope="module")
def alternating_reference(tmp_path_factory) -> dict:
    """Final weights of an uninterrupted 4-step run."""
    run = tmp_path_factory.mktemp("alternating") / "run"
    train(compose_cfg("train", ALT), run)
    return final_weights(run)


# gate train:3 holds fast1's third batch (rpn1 has two); eval:1 holds proposals1's first image
@pytest.mark.parametrize("sig,gate,where,checkpoint", [
    ("SIGTERM", "train:3", "at iteration", "fast1"),
    ("SIGINT", "eval:1", "during stage proposals1", "rpn1")], ids=["fast1", "proposals1"])
def test_group_stop_inside_a_4_step_stage_resumes_to_the_same_weights(
        tmp_path, alternating_reference, sig, gate, where, checkpoint):
    proc, gate_dir = start(tmp_path, ALT, gate)
    wait_for(lambda: reached(gate_dir), proc, tmp_path, f"the stage held at {gate}")
    signal_group(proc, gate_dir, getattr(signal, sig))
    assert finish(proc, tmp_path) == EXIT_INTERRUPTED, output(tmp_path)[-3000:]
    out = output(tmp_path)
    assert "Traceback" not in out and f"{sig} {where}" in out, out[-3000:]
    stage_ckpt = tmp_path / "run" / "stages" / checkpoint / "checkpoints" / "last.pt"
    assert load_checkpoint(stage_ckpt)["iteration"] >= 1
    resume_and_compare(tmp_path, alternating_reference, staged=True)


def rcnn_overrides(root: Path) -> list[str]:
    """A tiny R-CNN run (selective-search proposals cached under ``root``)."""
    return [*RUN, "model=rcnn", "backbone=alexnet", "proposals=selective_search",
            "sampler=rcnn", f"proposals.cache_dir={root / 'cache'}", "proposals.workers=0",
            "model.warp_size=64", "model.context=5", "model.box_head.representation_size=64",
            "model.svm.initial_negatives=50", "log.images_every=0"]


def test_group_stop_inside_an_rcnn_features_stage_resumes_to_the_same_weights(
        tmp_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("rcnn_cache")
    reference = tmp_path_factory.mktemp("rcnn") / "run"
    train(compose_cfg("train", rcnn_overrides(cache)), reference)
    proc, gate_dir = start(tmp_path, rcnn_overrides(cache), "eval:1")  # features: first image
    wait_for(lambda: reached(gate_dir), proc, tmp_path, "the features stage")
    signal_group(proc, gate_dir, signal.SIGTERM)
    assert finish(proc, tmp_path) == EXIT_INTERRUPTED, output(tmp_path)[-3000:]
    out = output(tmp_path)
    assert "Traceback" not in out and "SIGTERM during stage features" in out, out[-3000:]
    assert load_checkpoint(tmp_path / "run" / "stages" / "finetune" / "checkpoints" /
                           "last.pt")["iteration"] == 4
    resume_and_compare(tmp_path, final_weights(reference), staged=True)
