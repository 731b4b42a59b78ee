"""Data parallelism: 2-process gloo DDP equals one process with the same global batch;
a failure on one rank stops both; accumulation equals a bigger batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rcnn_cli.data.loader import IterationBatchSampler
from rcnn_cli.engine import distributed
from rcnn_cli.engine.train import train
from tests.conftest import TINY, compose_cfg

# Batch-split independent settings: frozen BN (per-process BatchNorm statistics would differ),
# every iteration logged, and SGD: the default recipe's AdamW divides by sqrt(v), which turns
# float rounding differences in near-zero gradients into ~1e-3 loss differences within 2 steps.
DET = TINY + ["device=cpu", "threads=1", "backbone.norm=frozen_bn", "log.period=1",
              "log.tensorboard=false", "model.box_head.score_thresh=0.0",
              "schedule.optimizer=sgd", "schedule.lr=0.01", "schedule.weight_decay=0.0001",
              "schedule.checkpoint_period=100"]
WORKER = Path(__file__).with_name("ddp_fault_worker.py")


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "120",
            **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "total_loss" in r]


def loss_keys(row: dict) -> list[str]:
    keys = [k for k in row if k.startswith("loss") or k.endswith("loss") or k == "lr"]
    assert "total_loss" in keys and len(keys) >= 6, row
    return keys


def test_sharded_micro_batches_cover_the_global_batch():
    base = IterationBatchSampler(24, 8, seed=3, start_iter=0, max_iter=5)
    glob = list(base)
    parts = [list(distributed.ShardedBatchSampler(base, 2, 2, rank)) for rank in (0, 1)]
    for it in range(5):
        mine = [parts[r][it * 2 + m] for r in (0, 1) for m in (0, 1)]
        assert [x for mb in mine for x in mb] == glob[it]


def test_detect_env_torchrun_and_slurm():
    assert distributed.detect_env({}) == distributed.DistEnv()
    assert distributed.detect_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == \
        distributed.DistEnv(3, 4, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
             "MASTER_ADDR": "node1"}
    assert distributed.detect_env(slurm) == distributed.DistEnv(5, 8, 1)
    # an sbatch script without srun (no MASTER_ADDR) is one process, not a broken group
    assert not distributed.detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}).enabled


def test_scale_lr_is_explicit():
    cfg = compose_cfg("train", ["schedule.accum_steps=2"])
    assert distributed.effective_lr(cfg.schedule, 4) == cfg.schedule.lr
    cfg = compose_cfg("train", ["schedule.accum_steps=2", "schedule.scale_lr=true"])
    assert distributed.effective_lr(cfg.schedule, 4) == pytest.approx(cfg.schedule.lr * 8)


@pytest.mark.slow
def test_accumulating_two_micro_batches_equals_one_double_batch(tmp_path):
    big = train(compose_cfg("train", DET + ["schedule.batch_size=4"]), tmp_path / "big")
    acc = train(compose_cfg("train", DET + ["schedule.batch_size=2", "schedule.accum_steps=2"]),
                tmp_path / "acc")
    for a, b in zip(losses(tmp_path / "big"), losses(tmp_path / "acc"), strict=True):
        for k in loss_keys(a):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    wa = torch.load(tmp_path / "big" / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "acc" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5, msg=k)
    assert acc["bbox/AP"] == pytest.approx(big["bbox/AP"], abs=1e-6)


def test_two_process_ddp_equals_one_process_with_the_global_batch(tmp_path):
    """3 validation images: evaluation shards of 2 and 1 (the validation loss is image-weighted)."""
    det = DET + ["dataset.val_size=3"]
    train(compose_cfg("train", det + ["schedule.batch_size=4"]), tmp_path / "single")
    ddp_cwd = tmp_path / "ddp"
    ddp_cwd.mkdir()
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "rcnn_cli.train", *det, "schedule.batch_size=2"],
        capture_output=True, text=True, env=env(), cwd=ddp_cwd, timeout=900)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    runs = [p for p in (ddp_cwd / "outputs" / "train").iterdir()]
    assert len(runs) == 1, runs  # one run directory, chosen by rank 0
    assert sorted(p.name for p in ddp_cwd.iterdir()) == ["outputs"]
    run, ref = runs[0], tmp_path / "single"
    assert (run / "train.log").is_file() and (run / ".hydra" / "config.yaml").is_file()

    a, b = losses(ref), losses(run)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        for k in loss_keys(x):
            assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-6), (x["iteration"], k)
    wa = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5, msg=k)

    # distributed evaluation (sharded, gathered on rank 0) equals single-process evaluation
    ma = json.loads((ref / "metrics.json").read_text())
    mb = json.loads((run / "metrics.json").read_text())
    for k, v in ma.items():
        assert mb[k] == pytest.approx(v, abs=1e-6), k
    da = json.loads((ref / "predictions" / "detections.json").read_text())
    db = json.loads((run / "predictions" / "detections.json").read_text())
    assert len(da) == len(db) > 0
    assert [d["image_id"] for d in da] == [d["image_id"] for d in db]
    for x, y in zip(da, db):
        assert y["bbox"] == pytest.approx(x["bbox"], abs=1e-3)


def test_validation_loss_mean_weights_ranks_by_images_and_a_rank_may_have_none():
    """Shards of 2 and 1 images; then more ranks than images (rank 1 evaluated nothing, so its
    loss dict is empty): every rank gets the mean over all images."""
    cases = [[({"val/loss": 1.0}, 2), ({"val/loss": 3.0, "val/total_loss": 5.0}, 1)],
             [({"val/loss": 4.0}, 1), ({}, 0)]]
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER.with_name("ddp_mean_worker.py")),
                               str(rank), port, json.dumps(cases)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    for out, _ in outs:
        assert json.loads(out.strip().splitlines()[-1]) == [
            {"val/loss": 2.0}, {"val/loss": 3.0, "val/total_loss": 5.0}]


def launch_pair(tmp_path: Path, mode: str) -> tuple[list, list[str], dict, float]:
    """Both ranks as plain processes (no torchrun, whose agent would kill the survivor):
    returns the processes, their outputs, their end times and the fault time."""
    port, fault = free_port(), tmp_path / "fault_time"
    args = [*DET, "schedule.max_iter=20", "dist.timeout_s=600",
            f"hydra.run.dir={tmp_path / 'run'}"]
    procs = []
    for rank in (0, 1):
        e = env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), FAULT_TIME_FILE=str(fault))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), mode, *args], env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    ended = {}
    deadline = time.time() + 900
    while len(ended) < 2 and time.time() < deadline:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    outs = [p.communicate()[0] for p in procs]
    assert len(ended) == 2, outs[0][-2000:]
    assert fault.is_file(), outs[1][-3000:]
    return procs, outs, ended, float(fault.read_text())


@pytest.mark.parametrize("mode", ["raise", pytest.param("nan", marks=pytest.mark.slow)])
def test_failure_on_rank_1_stops_both_ranks_promptly(tmp_path, mode):
    procs, outs, ended, t_fault = launch_pair(tmp_path, mode)
    for i, p in enumerate(procs):
        assert p.returncode != 0, outs[i][-2000:]
        assert ended[i] - t_fault < 60, (i, ended[i] - t_fault)
    assert "failed" in outs[0] and "rank(s) [1]" in outs[0], outs[0][-2000:]
    if mode == "nan":
        assert "non-finite loss at iteration 2" in outs[1], outs[1][-2000:]
        failed = json.loads((tmp_path / "run" / "failed_batch.json").read_text())
        assert failed["iteration"] == 2 and len(failed["image_ids"]) == 2
    assert not list((tmp_path / "run" / "checkpoints").glob("model_*.pt"))


@pytest.mark.slow
def test_sigterm_on_one_rank_checkpoints_once_and_stops_every_rank(tmp_path):
    procs, outs, ended, t_fault = launch_pair(tmp_path, "term")
    for i, p in enumerate(procs):
        assert p.returncode == 75, outs[i][-2000:]  # faults.EXIT_INTERRUPTED, on every rank
    assert "a stop signal on another rank at iteration 2" in outs[0], outs[0][-2000:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpts.glob("model_*.pt")] == ["model_0000002.pt"]
    assert torch.load(ckpts / "last.pt", weights_only=True)["iteration"] == 2
