"""Region Proposal Network (Faster R-CNN §3.1) on torchvision's RegionProposalNetwork.

The only change to torchvision's module is the anchor labelling, which comes from
``rcnn_cli.modeling.sampler`` so that border-crossing anchors can be ignored (§3.1.3).
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from rcnn_cli.modeling.sampler import build_balanced_sampler, build_rpn_matcher, label_anchors


class RPN(RegionProposalNetwork):
    """torchvision's RPN with an optional border rule; same parameters, same outputs."""

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, *, fg_iou_thresh: float,
                 bg_iou_thresh: float, batch_size_per_image: int, positive_fraction: float,
                 pre_nms_top_n: dict[str, int], post_nms_top_n: dict[str, int],
                 nms_thresh: float, score_thresh: float, ignore_border: bool):
        super().__init__(anchor_generator, head, fg_iou_thresh, bg_iou_thresh,
                         batch_size_per_image, positive_fraction, pre_nms_top_n, post_nms_top_n,
                         nms_thresh, score_thresh)
        self.ignore_border = ignore_border
        self._image_sizes: list[tuple[int, int]] | None = None

    def forward(self, images, features, targets=None):
        self._image_sizes = list(images.image_sizes)
        try:
            return super().forward(images, features, targets)
        finally:
            self._image_sizes = None

    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]):
        labels, matched = [], []
        for i, (anchors_i, target) in enumerate(zip(anchors, targets)):
            size = self._image_sizes[i] if self.ignore_border and self._image_sizes else None
            lab, gt = label_anchors(self.proposal_matcher, anchors_i, target["boxes"], size)
            labels.append(lab)
            matched.append(gt)
        return labels, matched


def build_rpn(anchor_generator: AnchorGenerator, in_channels: int, *, fg_iou_thresh: float,
              bg_iou_thresh: float, batch_size_per_image: int, positive_fraction: float,
              ignore_border: bool, pre_nms_top_n_train: int, pre_nms_top_n_test: int,
              post_nms_top_n_train: int, post_nms_top_n_test: int, nms_thresh: float,
              score_thresh: float, box_coder_weights: list[float]) -> RPN:
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    rpn = RPN(
        anchor_generator, head,
        fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction,
        pre_nms_top_n={"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test},
        post_nms_top_n={"training": post_nms_top_n_train, "testing": post_nms_top_n_test},
        nms_thresh=nms_thresh, score_thresh=score_thresh, ignore_border=ignore_border,
    )
    rpn.proposal_matcher = build_rpn_matcher(fg_iou_thresh, bg_iou_thresh)
    rpn.fg_bg_sampler = build_balanced_sampler("rpn", batch_size_per_image, positive_fraction)
    rpn.box_coder = BoxCoder(weights=tuple(float(w) for w in box_coder_weights))
    return rpn
