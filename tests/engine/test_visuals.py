"""Pictures during training: images/val and PR curves in TensorBoard, tables and PNGs on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rcnn_cli.engine.train import train
from tests.conftest import NO_OPTIMIZER_STATE, TINY, compose_cfg

SHORT = TINY + NO_OPTIMIZER_STATE + ["log.images_every=2", "log.images_count=3", "log.images_score_thresh=0.0",
                "schedule.eval_period=2", "model.box_head.score_thresh=0.0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("visuals") / "run"
    train(compose_cfg("train", SHORT), run_dir)
    return run_dir


def test_events_hold_val_images_and_pr_curves(run):
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert "images/val" in acc.Tags()["images"]
    shots = acc.Images("images/val")
    assert [s.step for s in shots] == [2, 4]
    # 3 rows of (ground truth | predictions), 64 px tiles with a 2 px border
    assert (shots[0].width, shots[0].height) == (2 + 2 * 66, 2 + 3 * 66)
    curves = [t for t in acc.Tags()["tensors"] if t.startswith("pr_curves/bbox/")]
    assert sorted(curves) == ["pr_curves/bbox/ellipse", "pr_curves/bbox/rectangle",
                              "pr_curves/bbox/triangle"]
    steps = [e.step for e in acc.Tensors("pr_curves/bbox/rectangle")]
    assert steps == [2, 4]
    data = acc.Tensors("pr_curves/bbox/rectangle")[-1].tensor_proto
    assert list(data.tensor_shape.dim)[0].size == 6  # TP, FP, TN, FN, precision, recall
    scalars = set(acc.Tags()["scalars"])
    assert {"bbox/AP-rectangle", "bbox/AP50-triangle"} <= scalars


def test_run_dir_has_per_class_table_pr_png_and_metrics(run):
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("rectangle", "ellipse", "triangle"):
        assert f"bbox/AP-{name}" in metrics and f"bbox/AP50-{name}" in metrics
    table = (run / "per_class.md").read_text()
    assert "| class | AP | AP50 |" in table and "| triangle |" in table
    assert (run / "pr_curves" / "bbox.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_images_off_and_voc_metric(tmp_path):
    run_dir = tmp_path / "voc"
    metrics = train(compose_cfg("train", TINY + NO_OPTIMIZER_STATE + [
        "log.images_every=0", "eval.metric=voc07", "eval.backend=pycocotools",
        "model.box_head.score_thresh=0.0"]), run_dir)
    assert "voc07/mAP" in metrics and "bbox/AP" not in metrics
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["confusion_matrix"]  # an evaluation figure, not val images
    assert "pr_curves/voc07/rectangle" in acc.Tags()["tensors"]
    assert (run_dir / "pr_curves" / "voc07.png").is_file()
    assert "voc07 per class" in (run_dir / "per_class.md").read_text()
