"""The joint training loop: run directory contents, exact resume, evaluation parity."""

from __future__ import annotations

import json

import pytest
import torch

from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.train import train
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import load_checkpoint
from tests.conftest import NO_OPTIMIZER_STATE, TINY, compose_cfg

# A schedule that does not depend on max_iter, so a short run is a prefix of a long one.
FLAT = TINY + ["schedule.decay=step", "schedule.decay_steps=[]", "log.tensorboard=false"]


def weights(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow  # three trainings; the fast test_resume.py::
# test_interrupted_then_resumed_run_is_bit_identical checks all of it (model, optimizer state and
# lr, iteration, scheduler, scaler, RNG, the final bbox/AP) and the batch order besides
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path):
    full = train(compose_cfg("train", FLAT), tmp_path / "full")
    train(compose_cfg("train", FLAT + ["schedule.max_iter=2"]), tmp_path / "part")
    resumed = train(compose_cfg("train", FLAT + [f"resume={tmp_path / 'part'}"]),
                    tmp_path / "resumed")
    a = weights(tmp_path / "full" / "checkpoints" / "last.pt")
    b = weights(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert b["iteration"] == a["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, state in a["optimizer"]["state"].items():
        assert state.keys() == b["optimizer"]["state"][k].keys()
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][k][name]), (k, name)
    assert full["bbox/AP"] == resumed["bbox/AP"]


@pytest.mark.slow  # covered without a training of its own by test_resume.py::
# test_resume_with_a_changed_model_or_data_config_lists_the_keys (the same message, more keys)
def test_resume_with_a_changed_model_lists_the_keys(tmp_path):
    train(compose_cfg("train", FLAT + ["schedule.max_iter=2"]), tmp_path / "a")
    cfg = compose_cfg("train", FLAT + [f"resume={tmp_path / 'a'}", "backbone.fpn_channels=64"])
    with pytest.raises(ConfigError, match="backbone.fpn_channels: 128 -> 64"):
        train(cfg, tmp_path / "b")


def test_eval_of_last_checkpoint_reproduces_the_training_metrics(tmp_path):
    metrics = train(compose_cfg("train", FLAT + NO_OPTIMIZER_STATE +
                                ["model.box_head.score_thresh=0.0"]), tmp_path / "run")
    cfg = compose_cfg("eval", [f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.pt'}"])
    again = evaluate_checkpoint(cfg, tmp_path / "eval")
    assert "val/total_loss" in metrics  # the validation loss is rcnn-train's only
    for k, v in metrics.items():
        if not k.startswith("val/"):
            assert again[k] == pytest.approx(v, abs=1e-6), k
    dets_train = json.loads((tmp_path / "run" / "predictions" / "detections.json").read_text())
    dets_eval = json.loads((tmp_path / "eval" / "predictions" / "detections.json").read_text())
    assert len(dets_train) > 0 and dets_train == dets_eval


def test_non_finite_loss_stops_with_iteration_and_image_ids(tmp_path, monkeypatch):
    from rcnn_cli.engine import trainer as trainer_mod

    real = trainer_mod.build_detector

    def poisoned(cfg, num_classes):
        model = real(cfg, num_classes)
        model.roi_heads.box_predictor.bbox_pred.bias.data.fill_(float("nan"))
        return model

    monkeypatch.setattr(trainer_mod, "build_detector", poisoned)
    with pytest.raises(trainer_mod.NonFiniteLossError, match=r"iteration 1: .*image ids \["):
        train(compose_cfg("train", FLAT), tmp_path / "nan")


def test_bf16_autocast_trains_on_cpu(tmp_path):
    metrics = train(compose_cfg("train", FLAT + NO_OPTIMIZER_STATE + [
        "schedule.amp=bf16", "schedule.max_iter=2", "device=cpu"]), tmp_path / "bf16")
    assert metrics["iteration"] == 2
    ckpt = weights(tmp_path / "bf16" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_fp16_on_cpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="schedule.amp=fp16 needs device=cuda"):
        train(compose_cfg("train", FLAT + ["schedule.amp=fp16", "device=cpu"]), tmp_path / "x")


def test_frozen_stages_keep_their_batchnorm_statistics(tmp_path):
    """backbone.trainable_layers=3 with trainable BN: conv1/res2 are frozen, weights and running
    statistics alike; res4's statistics do move."""
    cfg = compose_cfg("train", [*TINY, *NO_OPTIMIZER_STATE, "schedule.max_iter=2",
                                "backbone.trainable_layers=3", "schedule.checkpoint_period=2"])
    train(cfg, tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    body = "backbone.body."
    assert torch.equal(state[body + "bn1.running_var"], torch.ones(64))
    assert torch.equal(state[body + "layer1.0.bn1.running_mean"], torch.zeros(64))
    assert not torch.equal(state[body + "layer3.0.bn1.running_mean"], torch.zeros(256))
