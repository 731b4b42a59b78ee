"""Checklist row 29: evaluation with zero predictions or NaN boxes never crashes."""

from __future__ import annotations

from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.evaluation.coco import CocoEvaluator


def gt():
    return ShapesDataset("val", 3, 64).coco_gt()


def test_zero_predictions_give_ap_zero():
    metrics = CocoEvaluator(gt()).evaluate([])
    assert metrics["bbox/AP"] == 0.0 and metrics["bbox/dropped_nonfinite"] == 0


def test_nan_boxes_are_dropped_and_counted_not_scored():
    g = gt()
    ann = g["annotations"][0]
    perfect = {"image_id": ann["image_id"], "category_id": ann["category_id"],
               "bbox": ann["bbox"], "score": 0.9}
    nan = {**perfect, "bbox": [float("nan")] * 4, "score": 0.99}
    inf = {**perfect, "score": float("inf")}
    with_nan = CocoEvaluator(g).evaluate([perfect, nan, inf])
    alone = CocoEvaluator(g).evaluate([perfect])
    assert with_nan["bbox/dropped_nonfinite"] == 2
    assert with_nan["bbox/AP"] == alone["bbox/AP"]
    only_nan = CocoEvaluator(g).evaluate([nan])
    assert only_nan["bbox/AP"] == 0.0 and only_nan["bbox/dropped_nonfinite"] == 1
