"""Test-time augmentation: one detector run per view of the image, boxes merged.

Views: ``flip`` = the image and its horizontal mirror; ``flips`` = the four flips (none,
horizontal, vertical, both), for images with no up or down (trained with
``dataset.vflip_prob``); ``scales`` = the image resized to each shorter side in
``eval.tta_scales`` (the longer-side cap scaled alike). The model already maps its boxes (and
masks) back to original image coordinates; mirrored outputs are mirrored back.
Merging is per class: NMS (``batched_nms``) or weighted box fusion (Solovyev et al. 2021,
"Weighted boxes fusion", §2: clusters of boxes above ``tta_iou`` become their score-weighted
mean box with the mean score, scaled by ``min(views, cluster size) / views``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.ops import batched_nms, box_iou
from torchvision.transforms.v2 import functional as F

from rcnn_cli.config.run import TTA_MERGES, TTA_MODES
from rcnn_cli.errors import ConfigError

FLIPS = {"flip": [(False, False), (True, False)],
         "flips": [(False, False), (True, False), (False, True), (True, True)]}
FLIP_BOXES = {-1: F.horizontal_flip_bounding_boxes, -2: F.vertical_flip_bounding_boxes}


class TTADetector(nn.Module):
    """Wraps an eval-mode detector; ``views`` are ``(horizontal flip, vertical flip, shorter
    side or None)``."""

    def __init__(self, model: nn.Module, views: list[tuple[bool, bool, int | None]], merge: str,
                 iou: float, detections_per_img: int):
        super().__init__()
        self.model, self.views = model, views
        self.merge, self.iou, self.top = merge, iou, detections_per_img

    @torch.inference_mode()
    def forward(self, images: list[torch.Tensor], **kwargs) -> list[dict]:
        if kwargs:
            raise ConfigError("eval.tta does not support external proposals (model=fast)")
        per_view = [self.run_view(images, *view) for view in self.views]
        return [self.combine([v[i] for v in per_view]) for i in range(len(images))]

    def run_view(self, images, hflip: bool, vflip: bool, size: int | None) -> list[dict]:
        dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
        with resized(self.model, size):
            outs = self.model([im.flip(dims) if dims else im for im in images])
        for dim in dims:
            outs = [mirror(o, tuple(im.shape[-2:]), dim) for o, im in zip(outs, images)]
        return outs

    def combine(self, outs: list[dict]) -> dict:
        cat = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        if self.merge == "wbf":
            return fuse(cat, self.iou, len(outs), self.top)
        keep = batched_nms(cat["boxes"], cat["scores"], cat["labels"], self.iou)[:self.top]
        return {k: v[keep] for k, v in cat.items()}


@contextlib.contextmanager
def resized(model: nn.Module, size: int | None):
    """The model's own resize set to shorter side ``size`` (None: unchanged)."""
    t = model.transform
    saved = (t.min_size, t.max_size)
    if size is not None:
        t.min_size, t.max_size = (size,), round(t.max_size * size / t.min_size[-1])
    try:
        yield
    finally:
        t.min_size, t.max_size = saved


def mirror(out: dict, canvas_size: tuple[int, int], dim: int = -1) -> dict:
    """Detections of a flipped ``(height, width)`` image mapped back: along the width
    (``dim=-1``) or the height (-2)."""
    boxes = FLIP_BOXES[dim](out["boxes"], format=tv_tensors.BoundingBoxFormat.XYXY,
                            canvas_size=canvas_size)
    out = {**out, "boxes": boxes}
    if "masks" in out:
        out["masks"] = out["masks"].flip(dim)
    return out


def fuse(cat: dict, iou: float, views: int, top: int) -> dict:
    """Weighted box fusion per class, highest score first."""
    boxes, scores, labels = [], [], []
    for c in cat["labels"].unique().tolist():
        sel = cat["labels"] == c
        b, s = cat["boxes"][sel], cat["scores"][sel]
        order = s.argsort(descending=True, stable=True)
        b, s = b[order], s[order]
        clusters: list[list[int]] = []
        fused: list[torch.Tensor] = []
        for i in range(len(b)):
            if fused:
                ious = box_iou(b[i:i + 1], torch.stack(fused))[0]
                j = int(ious.argmax())
                if ious[j] > iou:
                    clusters[j].append(i)
                    w = s[clusters[j]]
                    fused[j] = (b[clusters[j]] * w[:, None]).sum(0) / w.sum()
                    continue
            clusters.append([i])
            fused.append(b[i])
        for members, box in zip(clusters, fused):
            boxes.append(box)
            scores.append(s[members].mean() * min(views, len(members)) / views)
            labels.append(c)
    if not boxes:
        return {k: v[:0] for k, v in cat.items() if k in ("boxes", "scores", "labels")}
    scores_t = torch.stack(scores)
    keep = scores_t.argsort(descending=True, stable=True)[:top]
    return {"boxes": torch.stack(boxes)[keep], "scores": scores_t[keep],
            "labels": torch.tensor(labels, device=scores_t.device)[keep]}


def wrap(model: nn.Module, mode: str, scales: list[int], merge: str, iou: float,
         masks: bool) -> nn.Module:
    """``eval.tta`` / ``tta_scales`` / ``tta_merge`` / ``tta_iou``; ``none`` returns the model."""
    if mode not in TTA_MODES:
        raise ConfigError(f"eval.tta={mode}: must be one of {', '.join(TTA_MODES)}")
    if merge not in TTA_MERGES:
        raise ConfigError(f"eval.tta_merge={merge}: must be one of {', '.join(TTA_MERGES)}")
    if mode == "none":
        return model
    if not (hasattr(model, "transform") and hasattr(model, "roi_heads")):
        raise ConfigError(f"tta={mode}: test-time augmentation needs a torchvision-style "
                          "detector (not model=rcnn|sppnet)")
    if masks and merge == "wbf":
        raise ConfigError("eval.tta_merge=wbf fuses boxes only; use eval.tta_merge=nms for masks")
    if mode == "scales" and not scales:
        raise ConfigError("eval.tta=scales needs eval.tta_scales (shorter sides, e.g. [600,800])")
    views = ([(h, v, None) for h, v in FLIPS[mode]] if mode in FLIPS
             else [(False, False, s) for s in scales])
    top = model.roi_heads.detections_per_img
    return TTADetector(model, views, merge, iou, top).eval()
