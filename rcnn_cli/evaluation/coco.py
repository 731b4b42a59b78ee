"""COCO box AP (and mask AP for mask models) with pycocotools; the ground truth is built once
from the annotations."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math

import numpy as np

log = logging.getLogger("rcnn_cli")

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
              "ARl"]


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


class CocoEvaluator:
    """Evaluate COCO-format detections (original category ids) against a COCO ground truth."""

    def __init__(self, gt: dict, iou_type: str = "bbox"):
        from pycocotools.coco import COCO

        self.iou_type = iou_type
        with _quiet():
            self.coco = COCO()
            self.coco.dataset = copy.deepcopy(gt)
            self.coco.createIndex()

    def evaluate(self, detections: list[dict]) -> dict[str, float | None]:
        """Flat ``{iou_type}/AP...`` stats in [0, 1]; None where COCO has no ground truth (-1)."""
        from pycocotools.cocoeval import COCOeval

        dets, dropped = finite_detections(detections)
        if dropped:
            log.warning("dropped %d detection(s) with non-finite box or score", dropped)
        if not dets:
            stats = np.zeros(len(STAT_NAMES))
        else:
            with _quiet():
                dt = self.coco.loadRes(copy.deepcopy(dets))
                ev = COCOeval(self.coco, dt, self.iou_type)
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            stats = ev.stats
        out = {f"{self.iou_type}/{n}": (None if s < 0 else float(s))
               for n, s in zip(STAT_NAMES, stats)}
        out[f"{self.iou_type}/dropped_nonfinite"] = dropped
        return out


class CocoEvaluators:
    """``bbox`` AP, plus ``segm`` AP when the detector predicts masks (Mask R-CNN §4)."""

    def __init__(self, gt: dict, with_masks: bool = False):
        types = ("bbox", "segm") if with_masks else ("bbox",)
        self.parts = [CocoEvaluator(gt, t) for t in types]

    def evaluate(self, detections: list[dict]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for part in self.parts:
            out.update(part.evaluate(detections))
        return out


def encode_masks(masks: np.ndarray) -> list[dict]:
    """COCO RLE (counts as str, JSON-ready) of binary ``(N, H, W)`` masks."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


def finite_detections(dets: list[dict]) -> tuple[list[dict], int]:
    keep = [d for d in dets
            if all(math.isfinite(v) for v in d["bbox"]) and math.isfinite(d["score"])]
    return keep, len(dets) - len(keep)
