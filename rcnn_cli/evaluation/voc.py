"""Pascal VOC average precision (Everingham et al. 2010, "The PASCAL VOC Challenge", §4.2).

Per class, detections of all images are ranked by score; a detection is a true positive when
its IoU with a not-yet-matched ground-truth box of that class in its image is >= 0.5, else a
false positive. ``difficult`` objects (and COCO crowd regions) are ignored: matching one is
neither a TP nor an FP, and they are not counted as positives.

* ``voc07``: the 11-point interpolated AP of VOC2007 (mean of the best precision at recall
  >= 0, 0.1, ..., 1).
* ``voc``: the VOC2010+ area under the monotone precision envelope (every recall step).

Boxes are continuous ``[x, y, w, h]`` (COCO results format) and IoU is computed without the
devkit's +1 pixel convention, like every other metric here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou


@dataclass
class VocResult:
    """Per-class AP (None for a class without positives) and its PR curve."""

    metric: str
    class_names: list[str]
    per_class_ap: list[float | None]
    curves: list[tuple[np.ndarray, np.ndarray]]  # (recall, precision) per class
    num_gt: list[int]

    @property
    def mean_ap(self) -> float | None:
        aps = [a for a in self.per_class_ap if a is not None]
        return float(np.mean(aps)) if aps else None


def ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007: mean over t in {0, 0.1, ..., 1} of max precision at recall >= t (0 if none)."""
    points = [precision[recall >= t].max() if (recall >= t).any() else 0.0
              for t in np.linspace(0, 1, 11)]
    return float(np.mean(points))


def ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+: area under the precision envelope, summed where recall changes."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _xyxy(boxes: list[list[float]]) -> torch.Tensor:
    t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


def _iou_rows(gt_by_image: dict, dets: list[dict]) -> list[np.ndarray]:
    """IoU of each detection with every ground-truth box of its image (one matrix per image)."""
    by_image: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(dets):
        by_image[d["image_id"]].append(i)
    rows: list[np.ndarray] = [np.zeros(0)] * len(dets)
    for iid, idx in by_image.items():
        anns = gt_by_image.get(iid, [])
        if anns:
            ious = box_iou(_xyxy([dets[i]["bbox"] for i in idx]), _xyxy([b for b, _ in anns]))
            for i, row in zip(idx, ious.numpy()):
                rows[i] = row
    return rows


def class_pr(gt_by_image: dict, dets: list[dict], iou_thresh: float = 0.5):
    """(recall, precision, num_positives) of one class. ``gt_by_image[image_id]`` is a list of
    (box xywh, ignored) pairs; ``dets`` are that class's results."""
    npos = sum(1 for anns in gt_by_image.values() for _, ignored in anns if not ignored)
    order = sorted(range(len(dets)), key=lambda i: -dets[i]["score"])  # stable on ties
    rows = _iou_rows(gt_by_image, dets)
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    used = {iid: np.zeros(len(anns), bool) for iid, anns in gt_by_image.items()}
    for rank, i in enumerate(order):
        iid, ious = dets[i]["image_id"], rows[i]
        j = int(ious.argmax()) if len(ious) else -1
        if j < 0 or ious[j] < iou_thresh:
            fp[rank] = 1
        elif gt_by_image[iid][j][1]:
            continue  # a difficult object: neither TP nor FP
        elif not used[iid][j]:
            used[iid][j] = True
            tp[rank] = 1
        else:
            fp[rank] = 1  # a duplicate
    keep = (tp + fp) > 0
    tp, fp = np.cumsum(tp[keep]), np.cumsum(fp[keep])
    recall = tp / max(npos, 1)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, npos


def voc_evaluate(gt: dict, dets: list[dict], metric: str = "voc",
                 iou_thresh: float = 0.5) -> VocResult:
    """VOC AP per class of COCO-format ``dets`` against a COCO-format ``gt``."""
    if metric not in ("voc07", "voc"):
        raise ValueError(f"unknown VOC metric {metric!r}")
    ap_fn = ap_11_point if metric == "voc07" else ap_area
    gt_by_cat: dict[int, dict] = defaultdict(lambda: defaultdict(list))
    for a in gt["annotations"]:
        ignored = bool(a.get("difficult") or a.get("iscrowd"))
        gt_by_cat[a["category_id"]][a["image_id"]].append((a["bbox"], ignored))
    dets_by_cat: dict[int, list] = defaultdict(list)
    for d in dets:
        dets_by_cat[d["category_id"]].append(d)
    names, aps, curves, counts = [], [], [], []
    for cat in gt["categories"]:
        recall, precision, npos = class_pr(gt_by_cat[cat["id"]], dets_by_cat[cat["id"]],
                                           iou_thresh)
        names.append(cat["name"])
        aps.append(ap_fn(recall, precision) if npos else None)
        curves.append((recall, precision))
        counts.append(npos)
    return VocResult(metric, names, aps, curves, counts)


def flat_metrics(result: VocResult) -> dict[str, float | None]:
    """``{metric}/mAP`` and ``{metric}/AP-{class}`` (AP at IoU 0.5, in [0, 1])."""
    out: dict[str, float | None] = {f"{result.metric}/mAP": result.mean_ap}
    for name, ap in zip(result.class_names, result.per_class_ap):
        out[f"{result.metric}/AP-{name}"] = ap
    return out
