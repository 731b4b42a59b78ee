"""Every bad value a config or dataset can hold ends in one line and exit 1, no traceback."""

from __future__ import annotations

import logging

import pytest

from rcnn_cli.cli import report_errors
from rcnn_cli.engine.train import train
from tests.conftest import NO_OPTIMIZER_STATE, TINY, compose_cfg, run_cli

QUICK = [*TINY, "schedule.max_iter=1", "log.images_every=0"]

# override -> a word the message must contain (the key to change)
BAD = {
    "dataset.min_objects=0": "dataset.min_objects",
    "dataset.min_scale=0": "dataset.min_scale",
    "dataset.max_aspect=0.5": "dataset.max_aspect",
    "dataset.train_size=0": "dataset.train_size",
    "dataset.image_size=0": "dataset.image_size",
    "dataset.min_size=0": "dataset.min_size",
    "dataset.train_min_sizes=[0]": "dataset.train_min_sizes",
    "dataset.flip_prob=2": "dataset.flip_prob",
    "dataset.vflip_prob=-0.5": "dataset.vflip_prob",
    "dataset.color_jitter=-1": "dataset.color_jitter",
    "dataset.repeat_factor_threshold=-0.1": "dataset.repeat_factor_threshold",
    "schedule.momentum=2": "schedule.momentum",
    "schedule.weight_decay=-1": "schedule.weight_decay",
    "schedule.gamma=-1": "schedule.gamma",
    "schedule.clip_grad_norm=-1": "schedule.clip_grad_norm",
    "sampler.rpn.positive_fraction=2": "sampler.rpn",
    "pooler.output_size=0": "pooler",
    "anchors.aspect_ratios=[]": "anchors",
}


@pytest.mark.parametrize("override", list(BAD))
def test_bad_value_is_one_line_and_exit_1(override, tmp_path, caplog):
    cfg = compose_cfg("train", [*QUICK, override])
    with caplog.at_level(logging.ERROR, logger="rcnn_cli"), pytest.raises(SystemExit) as stop:
        with report_errors():
            train(cfg, tmp_path)
    assert stop.value.code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    message = errors[0].getMessage()
    assert "\n" not in message and BAD[override] in message, message


def test_the_console_script_prints_one_line(tmp_path):
    r = run_cli("rcnn-train", *QUICK, "dataset.flip_prob=2", f"hydra.run.dir={tmp_path}")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out
    assert [line for line in out.splitlines() if "dataset.flip_prob" in line] != []


def test_a_training_set_smaller_than_the_batch_trains(tmp_path):
    cfg = compose_cfg("train", [*QUICK, *NO_OPTIMIZER_STATE, "dataset.train_size=2",
                                "schedule.batch_size=4", "schedule.max_iter=2"])
    metrics = train(cfg, tmp_path)
    assert metrics["iteration"] == 2


def test_iou_crop_with_external_proposals_is_refused(tmp_path):
    from rcnn_cli.config import validate
    from rcnn_cli.errors import ConfigError

    cfg = compose_cfg("train", [*QUICK, "dataset.iou_crop=true", "model=fast",
                                "proposals=selective_search"])
    with pytest.raises(ConfigError, match="dataset.iou_crop"):
        validate(cfg)


@pytest.mark.parametrize("extra", [["schedule=alternating"], ["model=rcnn", "backbone=alexnet",
                                                               "proposals=selective_search"]])
def test_ema_and_early_stop_are_refused_in_stage_graphs(extra):
    from rcnn_cli.config import validate
    from rcnn_cli.errors import ConfigError

    for key in ("schedule.ema.decay=0.9", "schedule.early_stop.patience=2"):
        cfg = compose_cfg("train", [*QUICK, *extra, key])
        with pytest.raises(ConfigError, match=key.split("=")[0]):
            validate(cfg)
