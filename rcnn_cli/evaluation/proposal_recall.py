"""Proposal recall (Hosang et al. 2015; COCO AR): the fraction of ground-truth boxes whose best
IoU with an image's top-N proposals reaches t, at t = 0.5 and averaged over t in 0.5:0.95."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

THRESHOLDS = torch.linspace(0.5, 0.95, 10)


def best_ious(proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor],
              top_n: int) -> torch.Tensor:
    """Per ground-truth box (all images), its best IoU with its image's first ``top_n``
    proposals (proposals are ordered by objectness, best first)."""
    out = []
    for props, gt in zip(proposals, gt_boxes):
        if len(gt) == 0:
            continue
        props = props[:top_n].float()
        out.append(box_iou(gt.float(), props).max(dim=1).values if len(props)
                   else torch.zeros(len(gt)))
    return torch.cat(out) if out else torch.zeros(0)


def recall_metrics(proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor],
                   counts: tuple[int, ...] = (100, 300, 1000)) -> dict[str, float]:
    """``R@N/IoU0.5`` and ``AR@N`` (mean recall over IoU 0.5:0.95) for each N."""
    metrics = {}
    for n in counts:
        ious = best_ious(proposals, gt_boxes, n)
        if len(ious) == 0:
            continue
        recall = (ious[None, :] >= THRESHOLDS[:, None]).float().mean(dim=1)
        metrics[f"R@{n}/IoU0.5"] = float(recall[0])
        metrics[f"AR@{n}"] = float(recall.mean())
    return metrics
