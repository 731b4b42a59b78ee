"""``eval.metric`` -> one evaluator: COCO (either backend, bbox/segm) or Pascal VOC AP.

Every evaluator takes COCO-format results with the dataset's original category ids and a
COCO-format ground truth from ``dataset.coco_gt()``; it returns flat metrics and keeps per-class
tables and precision-recall curves of its last call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rcnn_cli.evaluation import coco, voc


@dataclass
class PerClass:
    """A per-class table: one row per class name, one column per metric (None = no GT)."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[float | None]]]


@dataclass
class Curves:
    """Precision-recall curves at IoU 0.5, one per class that has ground truth."""

    tag: str
    names: list[str]
    recall: list[np.ndarray]
    precision: list[np.ndarray]
    num_gt: list[int]


class DetectionEvaluator:
    def __init__(self, gt: dict, metric: str = "coco", backend: str = "faster-coco-eval",
                 iou_types: tuple[str, ...] | list[str] = ("bbox",)):
        self.metric = getattr(metric, "value", metric)
        if self.metric not in ("coco", "voc07", "voc"):
            from rcnn_cli.errors import ConfigError

            raise ConfigError(f"eval.metric={self.metric} is not supported; use coco, voc07, voc")
        self.gt = gt
        self.coco = coco.CocoEvaluator(gt, iou_types, backend) if self.metric == "coco" else None
        self.voc: voc.VocResult | None = None

    def evaluate(self, detections: list[dict]) -> dict[str, float | int | None]:
        if self.coco is not None:
            return self.coco.evaluate(detections)
        dets, dropped = coco.finite_detections(detections)
        if dropped:
            coco.log.warning("dropped %d detection(s) with non-finite box or score", dropped)
        self.voc = voc.voc_evaluate(self.gt, dets, self.metric)
        return {**voc.flat_metrics(self.voc), "bbox/dropped_nonfinite": dropped}

    def per_class(self) -> list[PerClass]:
        if self.coco is not None:
            return [PerClass(f"{r.iou_type} per class", ["AP", "AP50"],
                             [(n, [a, b]) for n, a, b in
                              zip(r.class_names, r.per_class_ap, r.per_class_ap50)])
                    for r in self.coco.results]
        if self.voc is None:
            return []
        return [PerClass(f"{self.metric} per class (IoU 0.5)", ["AP"],
                         [(n, [a]) for n, a in zip(self.voc.class_names, self.voc.per_class_ap)])]

    def curves(self) -> list[Curves]:
        out = []
        if self.coco is not None:
            for r in self.coco.results:
                has = [k for k in range(len(r.class_names)) if (r.precision[k] > -1).any()]
                out.append(Curves(r.iou_type, [r.class_names[k] for k in has],
                                  [r.recall] * len(has),
                                  [np.clip(r.precision[k], 0, 1) for k in has],
                                  [r.num_gt[k] for k in has]))
        elif self.voc is not None:
            v = self.voc
            has = [k for k, n in enumerate(v.num_gt) if n > 0]
            out.append(Curves(v.metric, [v.class_names[k] for k in has],
                              [v.curves[k][0] for k in has], [v.curves[k][1] for k in has],
                              [v.num_gt[k] for k in has]))
        return out


def build_evaluator(gt: dict, eval_cfg, iou_types=("bbox",)) -> DetectionEvaluator:
    """From the ``eval`` config group: ``metric`` and ``backend``."""
    return DetectionEvaluator(gt, eval_cfg.metric, eval_cfg.backend, iou_types)


def iou_types_for(cfg) -> tuple[str, ...]:
    """Box AP always; mask AP too when the model predicts masks (``model=mask|cascade_mask``)."""
    from rcnn_cli.modeling.build import uses_masks

    return ("bbox", "segm") if uses_masks(cfg.model.name) else ("bbox",)


def headline(metrics: dict) -> float:
    """The number a run is ranked by: COCO box AP, else VOC mAP (0.0 when undefined)."""
    for key in ("bbox/AP", "voc/mAP", "voc07/mAP"):
        if metrics.get(key) is not None:
            return float(metrics[key])
    return 0.0
