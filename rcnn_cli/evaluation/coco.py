"""COCO AP/AR (Lin et al. 2014, "Microsoft COCO", §5 and the cocodataset.org detection eval).

Two interchangeable backends compute the same numbers: ``faster-coco-eval`` (C++ evaluate and
accumulate, the default) and ``pycocotools`` (the reference). The ground truth is a COCO-format
dict built once from the annotations (``dataset.coco_gt()``), never by re-running transforms.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from rcnn_cli.errors import ConfigError

log = logging.getLogger("rcnn_cli")

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
              "ARl"]
BACKENDS = ("faster-coco-eval", "pycocotools")
IOU_TYPES = ("bbox", "segm")


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _api(backend: str):
    """(COCO class, COCOeval class) of a backend."""
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ConfigError(f"eval.backend={backend} is not supported; available: {', '.join(BACKENDS)}")


@dataclass
class CocoResult:
    """One IoU type: the 12 stats (-1 where COCO has no ground truth), per-class AP/AP50 and
    the precision at IoU 0.5 over COCO's 101 recall thresholds, per class."""

    iou_type: str
    stats: np.ndarray
    class_names: list[str]
    per_class_ap: list[float | None]
    per_class_ap50: list[float | None]
    recall: np.ndarray
    precision: np.ndarray  # (K, 101); -1 where the class has no ground truth
    num_gt: list[int] = field(default_factory=list)


def encode_binary_masks(masks: np.ndarray) -> list[dict]:
    """Binary ``(N, H, W)`` masks -> COCO compressed RLEs (``counts`` as str, JSON-ready)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}
            for r in rles]


def finite_detections(dets: list[dict]) -> tuple[list[dict], int]:
    """Drop detections whose box or score is NaN/inf: pycocotools would count a NaN box as a
    match (its IoU comparisons are all False), so they are removed and counted instead."""
    keep = [d for d in dets
            if all(math.isfinite(v) for v in d["bbox"]) and math.isfinite(d["score"])]
    return keep, len(dets) - len(keep)


def _gt_for(gt: dict, iou_type: str) -> dict:
    """Copy of the ground truth; VOC ``difficult`` objects become ignore regions (crowd)."""
    anns = []
    for a in gt["annotations"]:
        a = dict(a)
        if a.get("difficult"):
            a["iscrowd"] = 1
        if iou_type == "segm" and "segmentation" not in a:
            raise ConfigError("segm evaluation needs ground-truth masks: annotation "
                              f"{a.get('id')} of image {a.get('image_id')} has no 'segmentation'")
        anns.append(a)
    return {**gt, "annotations": anns}


def _results_for(dets: list[dict], iou_type: str) -> list[dict]:
    """Shallow copies (the loaders add keys); segm results lose their box so that their area
    is the mask area, as in the reference evaluation."""
    if iou_type == "segm":
        return [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
    return [dict(d) for d in dets]


def _load(coco_cls, gt_coco, gt: dict, dets: list[dict]):
    if dets:
        with _quiet():
            return gt_coco.loadRes(dets)
    empty = coco_cls()
    empty.dataset = {"images": list(gt["images"]), "categories": list(gt["categories"]),
                     "annotations": []}
    with _quiet():
        empty.createIndex()
    return empty


def coco_evaluate(gt: dict, dets: list[dict], iou_type: str = "bbox",
                  backend: str = "faster-coco-eval", timings: dict | None = None) -> CocoResult:
    """Evaluate finite COCO results (original category ids) against ``gt`` with ``backend``.

    ``timings``, if given, receives the seconds spent loading (index + ``loadRes``) and in
    evaluate + accumulate + summarize (for benchmarks/eval_speed.py)."""
    t0 = time.perf_counter()
    if iou_type not in IOU_TYPES:
        raise ConfigError(f"iou type {iou_type!r} is not supported; available: {IOU_TYPES}")
    coco_cls, eval_cls = _api(backend)
    gt = _gt_for(gt, iou_type)
    with _quiet():
        gt_coco = coco_cls()
        gt_coco.dataset = gt
        gt_coco.createIndex()
    dt_coco = _load(coco_cls, gt_coco, gt, _results_for(dets, iou_type))
    t1 = time.perf_counter()
    with _quiet():
        ev = eval_cls(gt_coco, dt_coco, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if timings is not None:
        timings.update(load=t1 - t0, evaluate=time.perf_counter() - t1)
    return _result(ev, gt, iou_type)


def _result(ev, gt: dict, iou_type: str) -> CocoResult:
    precision = np.asarray(ev.eval["precision"])  # (T, R, K, A, M)
    cat_ids = [int(c) for c in ev.params.catIds]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    at_all = precision[:, :, :, 0, -1]  # area "all", maxDets 100
    ap, ap50 = [], []
    for k in range(len(cat_ids)):
        p = at_all[:, :, k]
        ap.append(float(p[p > -1].mean()) if (p > -1).any() else None)
        p50 = p[0]
        ap50.append(float(p50[p50 > -1].mean()) if (p50 > -1).any() else None)
    num_gt = [sum(1 for a in gt["annotations"] if a["category_id"] == c and not a.get("iscrowd"))
              for c in cat_ids]
    return CocoResult(iou_type, np.asarray(ev.stats[:12], dtype=float),
                      [names[c] for c in cat_ids], ap, ap50,
                      np.asarray(ev.params.recThrs, dtype=float), at_all[0].T.copy(), num_gt)


def flat_metrics(result: CocoResult) -> dict[str, float | None]:
    """``{iou_type}/{stat}`` in [0, 1] (None where COCO has no ground truth: its -1), then
    ``{iou_type}/AP-{class}`` and ``{iou_type}/AP50-{class}``."""
    t = result.iou_type
    out: dict[str, float | None] = {f"{t}/{n}": (None if s < 0 else float(s))
                                    for n, s in zip(STAT_NAMES, result.stats)}
    for name, ap, ap50 in zip(result.class_names, result.per_class_ap, result.per_class_ap50):
        out[f"{t}/AP-{name}"] = ap
        out[f"{t}/AP50-{name}"] = ap50
    return out


class CocoEvaluator:
    """COCO metrics for detections in COCO results format against a fixed ground truth.

    ``evaluate(dets)`` returns flat metrics; ``self.results`` keeps the per-IoU-type
    :class:`CocoResult` of the last call (tables, PR curves).
    """

    def __init__(self, gt: dict, iou_types: tuple[str, ...] | list[str] = ("bbox",),
                 backend: str = "faster-coco-eval"):
        _api(backend)
        self.gt = copy.deepcopy(gt)
        self.iou_types, self.backend = list(iou_types), backend
        self.results: list[CocoResult] = []

    def evaluate(self, detections: list[dict]) -> dict[str, float | int | None]:
        dets, dropped = finite_detections(detections)
        if dropped:
            log.warning("dropped %d detection(s) with non-finite box or score", dropped)
        self.results = [coco_evaluate(self.gt, dets, t, self.backend) for t in self.iou_types]
        out: dict[str, float | int | None] = {}
        for r in self.results:
            out.update(flat_metrics(r))
        out["bbox/dropped_nonfinite"] = dropped
        return out
