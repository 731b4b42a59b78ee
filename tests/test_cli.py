"""End to end through the console scripts, as a user runs them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY, run_cli

LOSSES = ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"]
METRIC_KEYS = ["bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl",
               "bbox/AR100", "iteration"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    # TINY's 4 iterations, checkpoints at 2 and 4, an evaluation at 2 (best.pt, bbox/AP in the
    # event stream) besides the final one; the recipe's AdamW, so the checkpoint holds state
    r = run_cli("rcnn-train", *TINY, "schedule.eval_period=2", "model.box_head.score_thresh=0.0",
                f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stdout + r.stderr
    # not a terminal: each log record is one line (rich would wrap it at 80 columns)
    assert any(line.endswith(f"[INFO] run directory: {run_dir}")
               for line in r.stdout.splitlines()), r.stdout[:2000]
    return run_dir


def test_console_log_is_one_plain_line_per_record_off_a_terminal(capsys):
    from rich.logging import RichHandler

    from rcnn_cli.cli import console_handler

    handler = console_handler()  # pytest's captured stdout is not a terminal
    assert not isinstance(handler, RichHandler)
    logger = logging.getLogger("rcnn_cli.tests.console")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("x" * 300 + " end")
    finally:
        logger.removeHandler(handler)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "[WARNING] " in out and out.endswith("x end\n")


def test_run_directory_layout(run: Path):
    for rel in [".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "metrics.jsonl",
                "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt",
                "checkpoints/index.json", "predictions/detections.json"]:
        assert (run / rel).is_file(), rel
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_metrics_json_contract(run: Path):
    metrics = json.loads((run / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert metrics["iteration"] == 4
    for k, v in metrics.items():
        if k.startswith("bbox/AP") or k.startswith("bbox/AR"):
            assert v is None or 0.0 <= v <= 1.0


def test_event_stream_has_every_loss_lr_and_timings(run: Path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*rows)
    for key in LOSSES + ["total_loss", "lr", "data_time", "step_time", "bbox/AP"]:
        assert key in logged, key
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(LOSSES + ["total_loss", "lr", "bbox/AP50"]) <= tags


def test_checkpoint_carries_everything_needed(run: Path):
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for key in ["model", "optimizer", "scheduler", "scaler", "iteration", "rng", "classes",
                "category_ids", "config"]:
        assert key in ckpt, key
    assert ckpt["classes"] == ["rectangle", "ellipse", "triangle"]
    assert ckpt["config"]["schedule"]["max_iter"] == 4
    assert ckpt["optimizer"]["state"]  # AdamW's moments, needed to resume exactly


def test_rcnn_eval_reproduces_the_final_metrics(run: Path, tmp_path: Path):
    r = run_cli("rcnn-eval", f"ckpt={run / 'checkpoints' / 'last.pt'}",
                f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stdout + r.stderr
    ours = json.loads((tmp_path / "metrics.json").read_text())
    final = json.loads((run / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(final[key], abs=1e-6, nan_ok=True) or (
            ours[key] is None and final[key] is None), key
    assert "bbox/AP50" in r.stdout


def test_resume_from_last_continues_at_the_saved_iteration(run: Path, tmp_path: Path):
    overrides = [o for o in TINY if not o.startswith("schedule.max_iter")]
    r = run_cli("rcnn-train", *overrides, "schedule.max_iter=6", "schedule.eval_period=2",
                "model.box_head.score_thresh=0.0", f"resume={run}", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in (tmp_path / "train.log").read_text()
    assert "at iteration 4" in (tmp_path / "train.log").read_text()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert min(r["iteration"] for r in rows) > 4
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 6


def test_bad_checkpoint_is_one_clear_line(tmp_path: Path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run_cli("rcnn-eval", f"ckpt={bad}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert r.returncode == 1
    assert "bad.pt" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr


# Row 1 end to end: rcnn-eval refuses a code payload, names the global, never runs it.
def test_rcnn_eval_refuses_a_code_payload(tmp_path: Path):
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch PAYLOAD_RAN",))

    torch.save({"format": "rcnn-cli/1", "model": {}, "x": Payload()}, tmp_path / "evil.pt",
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    r = run_cli("rcnn-eval", f"ckpt={tmp_path / 'evil.pt'}", f"hydra.run.dir={tmp_path / 'e'}",
                cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "evil.pt was refused" in out and "posix.system" in out and "ckpt_trust" in out
    assert "Traceback" not in out and not (tmp_path / "PAYLOAD_RAN").exists()


# Errors for people: the debug switch shows the traceback that is otherwise hidden.
def test_hydra_verbose_shows_the_traceback(tmp_path: Path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"")
    r = run_cli("rcnn-eval", f"ckpt={bad}", f"hydra.run.dir={tmp_path / 'eval'}",
                "hydra.verbose=true")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" in out and "CheckpointError" in out


# Row 32: one failing sweep job does not stop the others; the sweep exits non-zero.
@pytest.mark.slow
def test_sweep_with_a_failing_job_finishes_the_others(tmp_path: Path):
    overrides = [o for o in TINY if not o.startswith("schedule.max_iter")]
    r = run_cli("rcnn-train", "-m", *overrides, "schedule.max_iter=1", "log.tensorboard=false",
                "schedule.lr=-1,0.01", f"hydra.sweep.dir={tmp_path}")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "schedule.lr=-1.0: must be > 0" in out or "schedule.lr=-1: must be > 0" in out
    assert (tmp_path / "1" / "metrics.json").is_file(), out
    assert not (tmp_path / "0" / "metrics.json").exists()


def test_help_lists_only_choosable_options():
    from tests.conftest import REPO

    r = run_cli("rcnn-train", "--help")
    assert r.returncode == 0, r.stderr
    assert "_schema" not in r.stdout
    section = r.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = dict(line.split(": ", 1) for line in section.splitlines()
                  if line.split(":")[0] in ("backbone", "schedule", "dataset"))
    for group, listed in groups.items():
        files = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
        assert listed.split(", ") == files
    assert len(groups) == 3
