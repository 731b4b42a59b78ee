"""Region Proposal Network (Faster R-CNN §3.1) on torchvision's RegionProposalNetwork."""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead


def build_rpn(anchor_generator: AnchorGenerator, in_channels: int, *, fg_iou_thresh: float,
              bg_iou_thresh: float, batch_size_per_image: int, positive_fraction: float,
              pre_nms_top_n_train: int, pre_nms_top_n_test: int, post_nms_top_n_train: int,
              post_nms_top_n_test: int, nms_thresh: float,
              score_thresh: float) -> RegionProposalNetwork:
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchor_generator, head,
        fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction,
        pre_nms_top_n={"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test},
        post_nms_top_n={"training": post_nms_top_n_train, "testing": post_nms_top_n_test},
        nms_thresh=nms_thresh, score_thresh=score_thresh,
    )
