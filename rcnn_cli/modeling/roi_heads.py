"""Fast R-CNN box head (Fast R-CNN §2): pooled RoI -> head -> class scores + boxes.

The head is either two fc layers (fc6/fc7: VGG-16 and FPN designs) or, for C4 backbones, the
ResNet res5 stage applied per RoI followed by global average pooling (He et al. 2016, app. A).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads

from rcnn_cli.modeling.sampler import RangeMatcher, build_balanced_sampler


class Res5Head(nn.Module):
    """C4 box head: res5 on the pooled RoI features (stride 2), then average pooling."""

    def __init__(self, res5: nn.Module):
        super().__init__()
        self.res5 = res5

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.res5(x).mean(dim=(2, 3)), 1)


def build_box_head(in_channels: int, pool_size: int, representation_size: int,
                   res5: nn.Module | None, res5_channels: int) -> tuple[nn.Module, int]:
    """The per-RoI feature head and its output width."""
    if res5 is not None:
        return Res5Head(res5), res5_channels
    return TwoMLPHead(in_channels * pool_size**2, representation_size), representation_size


def build_box_roi_heads(pooler: nn.Module, box_head: nn.Module, head_dim: int, num_classes: int,
                        *, box_coder_weights: list[float], score_thresh: float, nms_thresh: float,
                        detections_per_img: int, fg_iou_thresh: float, bg_iou_thresh: float,
                        bg_iou_lo: float, batch_size_per_image: int,
                        positive_fraction: float) -> RoIHeads:
    """``num_classes`` counts the background class (index 0)."""
    heads = RoIHeads(
        box_roi_pool=pooler,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(head_dim, num_classes),
        fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction,
        bbox_reg_weights=tuple(float(w) for w in box_coder_weights),
        score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
    )
    heads.proposal_matcher = RangeMatcher(fg_iou_thresh, bg_iou_thresh, bg_iou_lo)
    heads.fg_bg_sampler = build_balanced_sampler("roi", batch_size_per_image, positive_fraction)
    return heads
