"""Exact resume: interrupted + resumed == uninterrupted, bit for bit; config changes refused."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from rcnn_cli.engine import trainer as trainer_mod
from rcnn_cli.engine.resume import check_resume_config, config_differences
from rcnn_cli.engine.runtime import config_dict
from rcnn_cli.engine.train import train
from rcnn_cli.errors import ConfigError
from tests.conftest import TINY, compose_cfg

# A schedule that does not depend on max_iter, so a short run is a prefix of a long one.
FLAT = TINY + ["schedule.decay=step", "schedule.decay_steps=[]", "log.tensorboard=false"]


REAL_BUILD = trainer_mod.build_detector  # captured before any test patches it


def recording_builder(seen: list):
    """A ``build_detector`` whose models record the image ids of every training batch."""
    real = REAL_BUILD

    def build(cfg, num_classes):
        model = real(cfg, num_classes)

        def pre(module, args):
            if module.training and torch.is_grad_enabled():  # not the validation loss
                seen.append([t["image_id"] for t in args[1]])

        model.register_forward_pre_hook(pre)
        return model

    return build


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    seen: dict[str, list] = {"full": [], "part": []}
    metrics = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, extra in [("full", []), ("part", ["schedule.max_iter=2"])]:
            mp.setattr(trainer_mod, "build_detector", recording_builder(seen[name]))
            metrics[name] = train(compose_cfg("train", FLAT + extra), root / name)
    return root, seen, metrics["full"]


def load(path):
    return torch.load(path, weights_only=True)


def assert_same(a, b, where=""):
    """Recursive bit-for-bit equality of nested checkpoint values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


# Row 7: identical weights, optimizer, lr, iteration, scaler, RNG; no repeated/skipped batch.
def test_interrupted_then_resumed_run_is_bit_identical(runs, tmp_path, monkeypatch, caplog):
    root, seen, full_metrics = runs
    resumed_batches: list = []
    monkeypatch.setattr(trainer_mod, "build_detector", recording_builder(resumed_batches))
    with caplog.at_level(logging.INFO, logger="rcnn_cli"):
        resumed = train(compose_cfg("train", FLAT + [f"resume={root / 'part'}"]),
                        tmp_path / "resumed")
    assert ("at iteration 2 (epoch 0, batch 2 of the epoch): model, optimizer, scheduler, "
            "scaler, RNG states") in caplog.text
    a = load(root / "full" / "checkpoints" / "last.pt")
    b = load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for key in ["model", "optimizer", "scheduler", "scaler", "iteration", "rng"]:
        assert_same(a[key], b[key], key)
    assert a["iteration"] == 4
    assert seen["part"] + resumed_batches == seen["full"]
    assert len(seen["full"]) == 4
    assert resumed["bbox/AP"] == full_metrics["bbox/AP"]


# Row 10: a changed model/data config lists every differing key; the whitelist may change.
def test_resume_with_a_changed_model_or_data_config_lists_the_keys(runs, tmp_path):
    root, _, _ = runs
    cfg = compose_cfg("train", FLAT + [f"resume={root / 'part'}", "backbone.fpn_channels=64",
                                       "dataset.image_size=48", "schedule.max_iter=9"])
    with pytest.raises(ConfigError) as err:
        train(cfg, tmp_path / "b")
    msg = str(err.value)
    assert "backbone.fpn_channels: 128 -> 64" in msg and "dataset.image_size: 64 -> 48" in msg
    assert "max_iter" not in msg


def test_whitelisted_keys_may_change():
    saved = {"schedule": {"max_iter": 10, "lr": 0.1}, "faults": {"max_nonfinite_steps": 3},
             "resume": None, "ckpt_trust": False}
    current = {"schedule": {"max_iter": 20, "lr": 0.1}, "faults": {"max_nonfinite_steps": 9},
               "resume": "x", "ckpt_trust": True}
    assert config_differences(saved, current) == []
    assert config_differences(saved, {**current, "schedule": {"max_iter": 20, "lr": 0.2}}) == [
        "schedule.lr: 0.1 -> 0.2"]


def test_a_key_newer_than_the_checkpoint_differs_only_from_its_schema_default():
    """A checkpoint written before dataset.vflip_prob and schedule.ema existed resumes with
    their defaults (what the code did then), not with vertical flips or an EMA."""
    cfg = compose_cfg("train", FLAT)
    saved = config_dict(cfg)
    del saved["dataset"]["vflip_prob"], saved["schedule"]["ema"], saved["optimized_mode"]
    check_resume_config(saved, cfg, "old.pt")
    flips = compose_cfg("train", FLAT + ["dataset.vflip_prob=0.5", "schedule.ema.decay=0.99"])
    with pytest.raises(ConfigError) as err:
        check_resume_config(saved, flips, "old.pt")
    assert str(err.value).splitlines()[1:] == ["  dataset.vflip_prob: 0.0 -> 0.5",
                                               "  schedule.ema.decay: 0.0 -> 0.99"]


# Row 8 (through train): resume=auto takes the latest run beside this one, or starts fresh.
def test_resume_auto(runs, tmp_path, caplog):
    root, _, _ = runs
    shutil.copytree(root / "part", tmp_path / "runs" / "part")
    with caplog.at_level(logging.INFO, logger="rcnn_cli"):
        metrics = train(compose_cfg("train", FLAT + ["resume=auto", "schedule.max_iter=3"]),
                        tmp_path / "runs" / "next")
    assert metrics["iteration"] == 3
    assert f"resume=auto: latest run is {tmp_path / 'runs' / 'part'}" in caplog.text
    assert "at iteration 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rcnn_cli"):
        metrics = train(compose_cfg("train", FLAT + ["resume=auto", "schedule.max_iter=1"]),
                        tmp_path / "alone" / "run")
    assert "STARTING FRESH" in caplog.text and metrics["iteration"] == 1
