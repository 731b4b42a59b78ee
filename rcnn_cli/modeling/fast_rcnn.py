"""Fast R-CNN (Girshick 2015) on external proposals: one CNN pass per image, RoI pooling,
fc6/fc7 with dropout, two sibling layers and a multi-task loss.

The proposal source is outside the network (selective search or a proposal file): proposals
arrive with the batch, ``target["proposals"]`` in training or ``proposals=`` at test, in the
pixels of the image as given; they are resized here exactly as the transform resizes boxes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.sampler import RangeMatcher, build_balanced_sampler


class FastRCNNHead(nn.Module):
    """flatten -> fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout (Fast R-CNN §2, VGG16 fc6/7).

    Named like torchvision's ``TwoMLPHead`` (``fc6``, ``fc7``), so truncated SVD treats both.
    """

    def __init__(self, in_features: int, representation_size: int, dropout: float):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.fast_rcnn.dropout={dropout}: must be in [0, 1)")
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.relu(self.fc6(x.flatten(start_dim=1))))
        return self.dropout(F.relu(self.fc7(x)))


def fast_rcnn_loss(class_logits, box_regression, labels, regression_targets, beta: float,
                   box_weight: float) -> dict[str, torch.Tensor]:
    """L = L_cls + lambda [u >= 1] L_loc (Fast R-CNN eq. 1); smooth-L1 over the true class."""
    labels = torch.cat(labels)
    regression_targets = torch.cat(regression_targets)
    loss_cls = F.cross_entropy(class_logits, labels)
    fg = torch.where(labels > 0)[0]
    per_class = box_regression.reshape(len(labels), -1, 4)[fg, labels[fg]]
    loss_box = F.smooth_l1_loss(per_class, regression_targets[fg], beta=beta, reduction="sum")
    return {"loss_classifier": loss_cls, "loss_box_reg": box_weight * loss_box / labels.numel()}


class FastRCNNRoIHeads(RoIHeads):
    """torchvision's RoIHeads (sampling, box coding, per-class NMS at test) with Fast R-CNN's
    loss options. The background band [bg_iou_lo, bg_iou_thresh) comes from the shared
    ``RangeMatcher`` (rcnn_cli.modeling.sampler); ground-truth boxes join the proposals in
    training (``RoIHeads.add_gt_proposals``).
    """

    def __init__(self, *args, smooth_l1_beta: float, box_loss_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta, self.box_loss_weight = smooth_l1_beta, box_loss_weight

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(
                proposals, targets)
        x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(x)
        if self.training:
            return [], fast_rcnn_loss(class_logits, box_regression, labels, regression_targets,
                                      self.smooth_l1_beta, self.box_loss_weight)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression,
                                                            proposals, image_shapes)
        return [{"boxes": b, "labels": c, "scores": s}
                for b, c, s in zip(boxes, labels, scores)], {}


class FastRCNN(nn.Module):
    """``transform -> backbone -> RoI heads`` with proposals given from outside."""

    def __init__(self, backbone: nn.Module, roi_heads: FastRCNNRoIHeads,
                 transform: GeneralizedRCNNTransform):
        super().__init__()
        self.backbone, self.roi_heads, self.transform = backbone, roi_heads, transform

    def forward(self, images, targets=None, proposals=None):
        if proposals is None:
            if targets is None or any("proposals" not in t for t in targets):
                raise ConfigError("model=fast needs external proposals (proposals="
                                  "selective_search or precomputed): none came with the batch")
            proposals = [t["proposals"] for t in targets]
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        proposals = [resize_boxes(p.float(), old, new)
                     for p, old, new in zip(proposals, original_sizes, batch.image_sizes)]
        features = self.backbone(batch.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        detections, losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return losses
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def build_fast_rcnn_roi_heads(pooler: nn.Module, box_head: nn.Module, head_dim: int,
                              num_classes: int, *, box_coder_weights: list[float],
                              score_thresh: float, nms_thresh: float, detections_per_img: int,
                              fg_iou_thresh: float, bg_iou_thresh: float, bg_iou_lo: float,
                              batch_size_per_image: int, positive_fraction: float,
                              smooth_l1_beta: float, box_loss_weight: float) -> FastRCNNRoIHeads:
    """``num_classes`` counts the background class (index 0)."""
    heads = FastRCNNRoIHeads(
        pooler, box_head, FastRCNNPredictor(head_dim, num_classes),
        fg_iou_thresh, bg_iou_thresh, batch_size_per_image, positive_fraction,
        tuple(float(w) for w in box_coder_weights), score_thresh, nms_thresh, detections_per_img,
        smooth_l1_beta=smooth_l1_beta, box_loss_weight=box_loss_weight)
    heads.proposal_matcher = RangeMatcher(fg_iou_thresh, bg_iou_thresh, bg_iou_lo)
    heads.fg_bg_sampler = build_balanced_sampler("roi", batch_size_per_image, positive_fraction)
    return heads
