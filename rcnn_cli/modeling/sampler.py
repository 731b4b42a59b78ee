"""Training-sample selection: which anchors / RoIs are foreground, background or ignored.

- RPN (Faster R-CNN §3.1.2-3.1.3): an anchor is positive if its IoU with some ground truth is
  >= ``fg_iou_thresh`` *or* it is the best anchor of some ground truth; negative if its IoU is
  < ``bg_iou_thresh`` for every ground truth; anchors crossing the image border may be ignored.
  A minibatch of ``batch_size_per_image`` anchors holds at most ``positive_fraction`` positives.
- RoI (Fast R-CNN §2.3): foreground if IoU >= ``fg_iou_thresh``; background if IoU is in
  ``[bg_iou_lo, bg_iou_thresh)``; ``positive_fraction`` of ``batch_size_per_image`` are fg.

torchvision's ``Matcher`` and ``BalancedPositiveNegativeSampler`` do the matching and the
sampling; this module adds the two rules they lack: the background lower bound and the
border rule.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou

from rcnn_cli.errors import ConfigError


class RangeMatcher(Matcher):
    """``Matcher`` whose background is ``[bg_lo, bg_hi)``: a best IoU below ``bg_lo`` is ignored
    (Fast R-CNN §2.3 uses [0.1, 0.5) as a heuristic for hard example mining)."""

    def __init__(self, fg_iou: float, bg_hi: float, bg_lo: float = 0.0,
                 allow_low_quality_matches: bool = False):
        check_thresholds("roi", fg_iou, bg_hi, bg_lo)
        super().__init__(fg_iou, bg_hi, allow_low_quality_matches=allow_low_quality_matches)
        self.bg_lo = bg_lo

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        matches = super().__call__(match_quality_matrix)
        if self.bg_lo > 0 and match_quality_matrix.numel() > 0:
            best, _ = match_quality_matrix.max(dim=0)
            too_low = (best < self.bg_lo) & (matches == self.BELOW_LOW_THRESHOLD)
            matches[too_low] = self.BETWEEN_THRESHOLDS
        return matches


def check_thresholds(stage: str, fg: float, bg_hi: float, bg_lo: float = 0.0) -> None:
    if not 0.0 <= bg_lo <= bg_hi <= fg <= 1.0:
        raise ConfigError(f"sampler.{stage}: need 0 <= bg_iou_lo <= bg_iou_thresh <= "
                          f"fg_iou_thresh <= 1, got {bg_lo}, {bg_hi}, {fg}")


def check_batch(stage: str, batch_size_per_image: int, positive_fraction: float) -> None:
    if batch_size_per_image < 1 or not 0.0 < positive_fraction <= 1.0:
        raise ConfigError(f"sampler.{stage}: need batch_size_per_image >= 1 and "
                          f"0 < positive_fraction <= 1, got {batch_size_per_image}, "
                          f"{positive_fraction}")


def build_rpn_matcher(fg_iou: float, bg_iou: float) -> Matcher:
    """The RPN rule, including 'the anchor with the highest IoU for a ground truth'."""
    check_thresholds("rpn", fg_iou, bg_iou)
    return Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)


def build_balanced_sampler(stage: str, batch_size_per_image: int,
                           positive_fraction: float) -> BalancedPositiveNegativeSampler:
    check_batch(stage, batch_size_per_image, positive_fraction)
    return BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)


def crosses_border(anchors: Tensor, image_size: tuple[int, int], tolerance: float = 0.0) -> Tensor:
    """Anchors reaching outside the ``(height, width)`` image by more than ``tolerance`` px."""
    h, w = image_size
    return ((anchors[:, 0] < -tolerance) | (anchors[:, 1] < -tolerance)
            | (anchors[:, 2] > w + tolerance) | (anchors[:, 3] > h + tolerance))


def label_anchors(matcher: Matcher, anchors: Tensor, gt_boxes: Tensor,
                  image_size: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
    """RPN labels (1 fg, 0 bg, -1 ignored) and matched ground-truth boxes for one image.

    With ``image_size`` set, border-crossing anchors take no part in matching (so the
    best-anchor-per-GT rule only picks anchors inside the image) and are ignored.
    """
    if gt_boxes.numel() == 0:
        return (torch.zeros(len(anchors), dtype=torch.float32, device=anchors.device),
                torch.zeros_like(anchors))
    iou = box_iou(gt_boxes, anchors)
    outside = crosses_border(anchors, image_size) if image_size is not None else None
    if outside is not None:
        iou[:, outside] = -1.0
    matched = matcher(iou)
    matched_gt = gt_boxes[matched.clamp(min=0)]
    labels = (matched >= 0).to(torch.float32)
    labels[matched == matcher.BETWEEN_THRESHOLDS] = -1.0
    if outside is not None:
        labels[outside] = -1.0
    return labels, matched_gt
