"""Faults during training: NaN loss, non-finite grads, signals, OOM, data loader failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import train_loader
from rcnn_cli.engine import faults
from rcnn_cli.engine import trainer as trainer_mod
from rcnn_cli.engine.train import train
from rcnn_cli.errors import DataError
from rcnn_cli.io import load_checkpoint, sha256
from tests.conftest import BIN, NO_OPTIMIZER_STATE, TINY, compose_cfg

FLAT = TINY + NO_OPTIMIZER_STATE + ["schedule.decay=step", "schedule.decay_steps=[]", "log.tensorboard=false",
               "schedule.max_iter=6"]


def hook_detector(monkeypatch, on_step):
    """Build detectors whose training forward calls ``on_step(step, losses)`` (1-based)."""
    real = trainer_mod.build_detector

    def build(cfg, num_classes):
        model = real(cfg, num_classes)
        calls = {"n": 0}

        def hook(module, args, out):
            if not module.training:
                return None
            calls["n"] += 1
            return on_step(calls["n"], out)

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(trainer_mod, "build_detector", build)


def batch_ids(cfg, iteration: int) -> list[int]:
    view = build_dataset(cfg.dataset, "train", train=True)
    _, targets = next(iter(train_loader(view, cfg.schedule.batch_size, cfg.seed, iteration - 1,
                                        iteration, 0)))
    return [t["image_id"] for t in targets]


def last_entry(run):
    return json.loads((run / "checkpoints" / "index.json").read_text())["last"]


# Row 11: NaN at step k stops at k with iteration, losses, image ids; last good checkpoint kept.
def test_nan_loss_at_step_k_stops_there_with_the_image_ids(tmp_path, monkeypatch):
    k = 3

    def poison(step, losses):
        if step == k:
            return {**losses, "loss_classifier": losses["loss_classifier"] * float("nan")}
        return None

    hook_detector(monkeypatch, poison)
    cfg = compose_cfg("train", FLAT)
    with pytest.raises(faults.NonFiniteLossError,
                       match=rf"iteration {k}: .*loss_classifier=nan.*image ids \[") as err:
        train(cfg, tmp_path / "run")
    failed = json.loads((tmp_path / "run" / "failed_batch.json").read_text())
    assert failed["iteration"] == k and failed["losses"]["loss_classifier"] == "nan"
    assert failed["image_ids"] == batch_ids(cfg, k)
    assert str(failed["image_ids"]) in str(err.value)
    entry = last_entry(tmp_path / "run")
    assert entry["iteration"] == 2
    assert sha256(tmp_path / "run" / "checkpoints" / "last.pt") == entry["sha256"]


# Row 13: repeated non-finite gradients -> error after N skipped steps (AMP scaler and plain).
def test_grad_scaler_collapse_is_an_error_after_the_limit():
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    guard = faults.GradGuard(limit=3)
    with pytest.raises(faults.NonFiniteGradError, match="3 steps in a row.*iteration 3"):
        for it in range(1, 10):
            opt.zero_grad()
            scaler.scale(torch.sqrt(w).sum()).backward()  # d sqrt(w)/dw at 0 = inf
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            guard.update(scaler.get_scale() < scale, it)
    assert torch.equal(w, torch.zeros(1)) and scaler.get_scale() < 2.0**16


def test_non_finite_grads_skip_steps_then_stop_training(tmp_path, monkeypatch, caplog):
    real = trainer_mod.build_detector

    def build(cfg, num_classes):
        model = real(cfg, num_classes)
        for p in model.parameters():
            if p.requires_grad:
                p.register_hook(lambda g: torch.full_like(g, float("nan")))
        return model

    monkeypatch.setattr(trainer_mod, "build_detector", build)
    with pytest.raises(faults.NonFiniteGradError, match="2 steps in a row.*iteration 2"):
        train(compose_cfg("train", FLAT + ["faults.max_nonfinite_steps=2"]), tmp_path / "run")
    assert "iteration 1: non-finite gradients, optimizer step skipped" in caplog.text


# Row 14: SIGTERM -> checkpoint at the next step boundary, distinct exit, resume continues.
def test_stop_signal_defers_sigterm_to_the_step_boundary():
    before = signal.getsignal(signal.SIGTERM)
    with faults.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_repeated_sigint_interrupts_unless_it_is_the_same_stop_delivered_twice(monkeypatch):
    """Ctrl-C under torchrun reaches a rank twice at once (terminal + torchrun's forward)."""
    monkeypatch.setattr(faults, "REPEAT_S", 0.5)
    with faults.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert stop.requested == "SIGINT"
        time.sleep(0.5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)


@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGUSR2"])
def test_advance_warning_signals_stop_like_sigterm(sig):
    assert faults.stop_requested() is None
    with faults.StopSignal():
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(0.1)
        assert faults.stop_requested() == sig
    assert faults.stop_requested() is None


def test_nested_stop_blocks_share_the_stop():
    """The stage graph's block holds each stage's training loop: a stop met in either counts
    in both."""
    with faults.StopSignal() as outer:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        with faults.StopSignal() as inner:
            assert inner.requested == "SIGTERM"
    assert outer.requested == "SIGTERM"
    with faults.StopSignal() as outer:
        with faults.StopSignal():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.1)
        assert outer.requested == "SIGUSR1" and faults.stop_requested() == "SIGUSR1"
        with pytest.raises(faults.StopRequested):
            faults.stop_point()


def test_submitit_preemption_signal_is_handed_on_after_the_checkpoint(monkeypatch):
    """submitit's handler (checkpoint-and-requeue) runs once our checkpoint is written."""
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with pytest.raises(faults.Interrupted):
            with faults.StopSignal():
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(0.1)
                assert calls == []
                raise faults.Interrupted("checkpoint written")
        assert calls == [signal.SIGUSR2]
        with faults.StopSignal():  # no stop: nothing handed on
            pass
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigterm_mid_run_checkpoints_that_step_and_resume_continues(tmp_path, monkeypatch):
    def term(step, losses):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return None

    hook_detector(monkeypatch, term)
    with pytest.raises(faults.Interrupted, match=r"SIGTERM at iteration 3.*resume=") as err:
        train(compose_cfg("train", FLAT), tmp_path / "run")
    assert err.value.exit_code == faults.EXIT_INTERRUPTED
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 3
    monkeypatch.undo()
    metrics = train(compose_cfg("train", FLAT + [f"resume={tmp_path / 'run'}"]),
                    tmp_path / "resumed")
    assert metrics["iteration"] == 6
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["iteration"] for r in rows) == 4


@pytest.mark.slow
def test_sigterm_to_a_training_subprocess(tmp_path):
    run = tmp_path / "run"
    overrides = [o for o in FLAT if not o.startswith("schedule.max_iter")]
    base = [str(BIN / "rcnn-train"), *overrides, "log.period=1"]
    proc = subprocess.Popen([*base, "schedule.max_iter=1000", f"hydra.run.dir={run}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").is_file() or '"iteration": 3' not in (
            run / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == faults.EXIT_INTERRUPTED, out
    assert "Traceback" not in out and "resume=" in out.replace("\n", "")
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")["iteration"]
    assert 3 <= stopped < 1000
    r = subprocess.run([*base, f"schedule.max_iter={stopped + 2}", f"resume={run}",
                        f"hydra.run.dir={tmp_path / 'resumed'}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"at iteration {stopped}" in (tmp_path / "resumed" / "train.log").read_text()
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["iteration"] for r in rows) == stopped + 1


# Row 15: out-of-memory -> image sizes and box counts; checkpoint intact.
def test_out_of_memory_names_image_sizes_and_box_counts(tmp_path, monkeypatch):
    def oom(step, losses):
        if step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    hook_detector(monkeypatch, oom)
    with pytest.raises(faults.TrainingFault,
                       match=r"out of memory at iteration 3.*image sizes \(h, w\) "
                             r"\[\[64, 64\], \[64, 64\]\], box counts \[\d+, \d+\]"):
        train(compose_cfg("train", FLAT), tmp_path / "run")
    entry = last_entry(tmp_path / "run")
    assert entry["iteration"] == 2
    assert sha256(tmp_path / "run" / "checkpoints" / "last.pt") == entry["sha256"]


# Row 16: DataLoader worker killed or hung.
class Killer(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGKILL)


class Sleeper(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        time.sleep(60)


@pytest.mark.parametrize("dataset,match", [
    (Killer(), r"worker \(pid \d+\) (exited unexpectedly|is killed by signal: Killed), most "
               r"likely ended by the out-of-memory killer: lower dataset.num_workers or "
               r"schedule.batch_size"),
    (Sleeper(), "timed out.*Hint")])
def test_dataloader_worker_failure_is_a_clear_error(dataset, match):
    loader = DataLoader(dataset, batch_size=2, num_workers=1)
    with pytest.raises(faults.TrainingFault, match=rf"data loading failed.*{match}"):
        list(faults.guarded_batches(loader, timeout=2.0))


# Rows 17/18 (last line of defence in the trainer): bad boxes never reach the model.
@pytest.mark.parametrize("box", [[1.0, 1.0, float("inf"), 5.0], [1.0, 1.0, float("nan"), 5.0],
                                 [4.0, 1.0, 4.0, 5.0], [4.0, 6.0, 8.0, 5.0]])
def test_bad_boxes_are_refused_before_the_model(box):
    targets = [{"image_id": 7, "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0], box])}]
    with pytest.raises(DataError, match=r"image 7: box 1 = "):
        faults.check_targets(targets)
    faults.check_targets([{"image_id": 8, "boxes": torch.zeros(0, 4)}])
