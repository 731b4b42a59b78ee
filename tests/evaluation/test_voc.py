"""Pascal VOC AP against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from rcnn_cli.evaluation.voc import ap_11_point, ap_area, voc_evaluate


def _gt(boxes):
    """boxes: (image_id, category_id, xywh, difficult)."""
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "iscrowd": 0,
             "difficult": int(d), "area": b[2] * b[3]} for i, (im, c, b, d) in enumerate(boxes)]
    return {"images": [{"id": 1}, {"id": 2}, {"id": 3}], "annotations": anns,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def _det(im, c, b, s):
    return {"image_id": im, "category_id": c, "bbox": b, "score": s}


GT = _gt([(1, 1, [0, 0, 10, 10], False), (1, 1, [50, 50, 10, 10], True),
          (2, 1, [20, 20, 10, 10], False)])
DETS = [_det(1, 1, [0, 0, 10, 10], 0.9),      # TP
        _det(1, 1, [50, 50, 10, 10], 0.8),    # matches a difficult object: ignored
        _det(2, 1, [80, 80, 10, 10], 0.7),    # FP
        _det(2, 1, [21, 20, 10, 10], 0.6)]    # TP (IoU 0.82)


def test_difficult_objects_are_ignored_and_11_point_differs_from_area():
    # Ranked TP, FP, TP over 2 positives: recall .5 .5 1, precision 1 .5 2/3.
    area = voc_evaluate(GT, DETS, "voc")
    eleven = voc_evaluate(GT, DETS, "voc07")
    assert area.per_class_ap[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)          # 5/6
    assert eleven.per_class_ap[0] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)     # 28/33
    assert area.num_gt == [2, 0]
    assert area.per_class_ap[1] is None and area.mean_ap == pytest.approx(5 / 6)


def test_a_difficult_object_counted_as_positive_would_lower_recall():
    gt = _gt([(1, 1, [0, 0, 10, 10], False), (1, 1, [50, 50, 10, 10], False),
              (2, 1, [20, 20, 10, 10], False)])
    # Ranked TP, TP, FP, TP over 3 positives: the envelope is 1 up to recall 2/3, then 3/4.
    res = voc_evaluate(gt, DETS, "voc")
    assert res.per_class_ap[0] == pytest.approx(2 / 3 * 1 + 1 / 3 * 3 / 4)


def test_duplicates_and_low_iou_are_false_positives_and_no_detections_give_zero():
    gt = _gt([(1, 1, [0, 0, 10, 10], False), (3, 2, [0, 0, 10, 10], False)])
    dets = [_det(1, 1, [0, 0, 10, 10], 0.9), _det(1, 1, [0, 0, 10, 10], 0.8),
            _det(1, 1, [5, 0, 10, 10], 0.95)]  # IoU 1/3: a false positive ranked first
    res = voc_evaluate(gt, dets, "voc")
    # FP, TP, FP: recall 0, 1, 1; precision 0, 1/2, 1/3 -> AP = 1/2.
    assert res.per_class_ap[0] == pytest.approx(0.5)
    assert res.per_class_ap[1] == 0.0  # a class with ground truth but no detections
    assert voc_evaluate(gt, [], "voc07").mean_ap == 0.0


def test_ap_formulas_on_a_perfect_and_a_half_curve():
    assert ap_area(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert ap_11_point(np.array([0.5]), np.array([1.0])) == pytest.approx(6 / 11)
    assert ap_area(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5)


def test_detections_on_an_image_without_ground_truth_are_false_positives():
    # Image 3 has no annotation at all. Ranked FP, TP, (difficult), FP, TP over 2 positives:
    # recall 0 .5 .5 1, precision 0 1/2 1/3 1/2; the envelope is 1/2 everywhere.
    dets = DETS + [_det(3, 1, [0, 0, 10, 10], 0.95)]
    assert voc_evaluate(GT, dets, "voc").per_class_ap[0] == pytest.approx(0.5)
    assert voc_evaluate(GT, dets, "voc07").per_class_ap[0] == pytest.approx(0.5)


def test_non_finite_boxes_are_dropped_and_counted_for_voc_too():
    from rcnn_cli.evaluation.build import DetectionEvaluator

    nan = _det(1, 1, [float("nan"), 0, 10, 10], 0.99)
    ev = DetectionEvaluator(GT, metric="voc07")
    clean, dirty = ev.evaluate(DETS), ev.evaluate(DETS + [nan])
    assert dirty["bbox/dropped_nonfinite"] == 1 and clean["bbox/dropped_nonfinite"] == 0
    assert dirty["voc07/mAP"] == clean["voc07/mAP"] == pytest.approx(28 / 33)
