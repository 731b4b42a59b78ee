"""The CUDA path (``schedule.amp=auto`` on a GPU, a training run, evaluation parity): these run
only where a CUDA device is present (never in CI) and are skipped elsewhere. The whole GPU
measurement is ``benchmarks/gpu_check.py``; its CPU dry run is in tests/benchmarks."""

from __future__ import annotations

import math

import pytest
import torch

from rcnn_cli.engine import runtime
from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.train import train
from rcnn_cli.io import load_checkpoint
from tests.conftest import TINY, compose_cfg

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_picks_bf16_where_the_gpu_has_it_else_fp16():
    choice, reason = runtime.choose_amp(torch.device("cuda", 0))
    assert choice == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert torch.cuda.get_device_name(0) in reason


def test_training_on_the_gpu_with_auto_amp_stores_the_choice_and_evaluates_alike(tmp_path):
    cfg = compose_cfg("train", TINY + ["device=cuda", "schedule.amp=auto",
                                       "schedule.fused_optimizer=true", "log.tensorboard=false",
                                       "model.box_head.score_thresh=0.0"])
    metrics = train(cfg, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["config"]["schedule"]["amp"] == runtime.choose_amp(
        torch.device("cuda", 0))[0]
    assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("bbox/"))
    again = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={last}", "device=cuda"]),
                                tmp_path / "eval")
    for k, v in metrics.items():
        if k.startswith("bbox/"):
            assert again[k] == pytest.approx(v, abs=1e-6), k
