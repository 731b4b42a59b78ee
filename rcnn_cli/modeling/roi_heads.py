"""Fast R-CNN box head (Fast R-CNN §2): pooled RoI -> fc6 -> fc7 -> class scores + boxes."""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads


def build_box_roi_heads(pooler: nn.Module, in_channels: int, pool_size: int, num_classes: int, *,
                        representation_size: int, box_coder_weights: list[float],
                        score_thresh: float, nms_thresh: float, detections_per_img: int,
                        fg_iou_thresh: float, bg_iou_thresh: float, batch_size_per_image: int,
                        positive_fraction: float) -> RoIHeads:
    """``num_classes`` counts the background class (index 0)."""
    return RoIHeads(
        box_roi_pool=pooler,
        box_head=TwoMLPHead(in_channels * pool_size**2, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction,
        bbox_reg_weights=tuple(float(w) for w in box_coder_weights),
        score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
    )
