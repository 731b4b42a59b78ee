"""COCO metrics: both backends agree; zero detections, NaN boxes, images without ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from rcnn_cli.errors import ConfigError
from rcnn_cli.evaluation.build import DetectionEvaluator, headline
from rcnn_cli.evaluation.coco import CocoEvaluator, coco_evaluate
from tests.evaluation.synthetic import generate

BACKENDS = ["faster-coco-eval", "pycocotools"]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_both_backends_give_the_same_12_stats_and_per_class_ap(iou_type):
    gt, dets = generate(300, masks=iou_type == "segm")
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert {a["image_id"] for a in gt["annotations"]} != {i["id"] for i in gt["images"]}
    fast = coco_evaluate(gt, dets, iou_type, "faster-coco-eval")
    ref = coco_evaluate(gt, dets, iou_type, "pycocotools")
    assert len(fast.stats) == 12
    assert 0.05 < ref.stats[0] < 0.95  # a non-trivial operating point
    np.testing.assert_allclose(fast.stats, ref.stats, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.array(fast.per_class_ap, float),
                               np.array(ref.per_class_ap, float), atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast.precision, ref.precision, atol=1e-6, rtol=0)
    assert fast.class_names == ["class1", "class3", "class7", "class8"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_detections_give_ap_zero(backend):
    gt, _ = generate(20)
    metrics = CocoEvaluator(gt, backend=backend).evaluate([])
    assert metrics["bbox/AP"] == 0.0 and metrics["bbox/AP50"] == 0.0
    assert metrics["bbox/AP-class1"] == 0.0
    assert headline(metrics) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_boxes_are_dropped_and_counted(backend):
    gt, dets = generate(40, seed=1)
    clean = CocoEvaluator(gt, backend=backend).evaluate(dets)
    a = gt["annotations"][0]
    bad = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.99,
            "bbox": [float("nan"), 0.0, 10.0, 10.0]},
           {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.98,
            "bbox": [0.0, 0.0, float("inf"), 10.0]},
           {"image_id": a["image_id"], "category_id": a["category_id"], "score": float("nan"),
            "bbox": list(a["bbox"])}]
    dirty = CocoEvaluator(gt, backend=backend).evaluate(dets + bad)
    assert dirty["bbox/dropped_nonfinite"] == 3 and clean["bbox/dropped_nonfinite"] == 0
    for k, v in clean.items():
        if k != "bbox/dropped_nonfinite":
            assert dirty[k] == v, k


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_without_ground_truth_are_kept(backend):
    gt = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
          "categories": [{"id": 5, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40],
                           "area": 1600.0, "iscrowd": 0}]}
    hit = {"image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.5}
    false_alarm = {"image_id": 2, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.9}
    ev = CocoEvaluator(gt, backend=backend)
    assert ev.evaluate([hit])["bbox/AP50"] == pytest.approx(1.0)
    # The false alarm on the image with no ground truth outranks the hit: precision 1/2.
    assert ev.evaluate([hit, false_alarm])["bbox/AP50"] == pytest.approx(0.5, abs=0.01)


def test_voc_metric_is_selectable_on_coco_ground_truth():
    gt, dets = generate(60, seed=2)
    ev = DetectionEvaluator(gt, metric="voc")
    metrics = ev.evaluate(dets)
    assert 0.0 < metrics["voc/mAP"] <= 1.0 and "bbox/AP" not in metrics
    assert headline(metrics) == metrics["voc/mAP"]
    assert [row[0] for row in ev.per_class()[0].rows] == ["class1", "class3", "class7", "class8"]
    assert len(ev.curves()[0].names) == 4


def test_unknown_backend_and_metric_are_config_errors():
    gt, _ = generate(2)
    with pytest.raises(ConfigError, match="eval.backend=cocoapi"):
        CocoEvaluator(gt, backend="cocoapi")
    with pytest.raises(ConfigError, match="eval.metric=map"):
        DetectionEvaluator(gt, metric="map")
