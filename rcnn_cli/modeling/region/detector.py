"""What R-CNN (Girshick et al. 2014) and SPPNet (He et al. 2014) share: external proposals in,
one feature vector per region, then the region-wise scoring.

- fine-tuning (R-CNN §2.3 "Supervised pre-training / domain-specific fine-tuning"): the network
  is an (N+1)-way classifier of regions; ground-truth boxes join the proposals, a region is
  foreground (its best ground truth's class) at IoU >= 0.5, background below; each minibatch
  holds ``positive_fraction`` foreground (R-CNN: 32 of 128). In training mode the detector
  returns this softmax loss.
- test (R-CNN §2.2): every proposal is scored per class (linear SVMs on fc7, or the fine-tuned
  softmax), moved by the class-specific ridge box regressor (Appendix C) and greedy per-class
  NMS keeps the best boxes. SVM, ridge and feature-scale parameters are buffers, filled by the
  staged training (``rcnn_cli.engine.stages.region``) and saved in the checkpoint.

Outputs are what every detector here returns (``boxes``, ``labels``, ``scores``). SVM scores are
margins; they are reported through a sigmoid (monotone, so AP is unchanged; 0.5 is the SVM's
decision boundary), so score thresholds mean the same as for the softmax models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.region.box_ridge import BoxRidge
from rcnn_cli.modeling.sampler import RangeMatcher, build_balanced_sampler


class RegionScorer(nn.Module):
    """Fine-tuning loss, or test-time scores + box regression + per-class NMS, from each
    region's ``pool5`` (regression) and ``fc7`` (classification) features."""

    def __init__(self, fc7_dim: int, pool5_dim: int, num_classes: int, *, classifier: str,
                 fg_iou_thresh: float, bg_iou_thresh: float, bg_iou_lo: float,
                 batch_size_per_image: int, positive_fraction: float, score_thresh: float,
                 nms_thresh: float, detections_per_img: int):
        super().__init__()
        if classifier not in ("svm", "softmax"):
            raise ConfigError(f"model.classifier={classifier}: use svm or softmax")
        k = num_classes - 1
        self.classifier = classifier
        self.cls_score = nn.Linear(fc7_dim, num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        self.register_buffer("svm_weight", torch.zeros(k, fc7_dim))
        self.register_buffer("svm_bias", torch.zeros(k))
        self.register_buffer("fc7_scale", torch.ones(()))
        self.register_buffer("ridge_weight", torch.zeros(k, pool5_dim + 1, 4))
        self.register_buffer("pool5_scale", torch.ones(()))
        self.proposal_matcher = RangeMatcher(fg_iou_thresh, bg_iou_thresh, bg_iou_lo)
        self.fg_bg_sampler = build_balanced_sampler("roi", batch_size_per_image,
                                                    positive_fraction)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img

    # --- fine-tuning ---------------------------------------------------------------------

    def sample(self, proposals: list[Tensor], targets: list[dict]):
        """Ground truth added to the proposals, each region labelled by its best ground truth
        (fg / bg / ignored by ``proposal_matcher``), then the balanced minibatch per image."""
        boxes, labels = [], []
        for props, t in zip(proposals, targets):
            regions = torch.cat([props, t["boxes"].to(props)])
            labels.append(region_labels(self.proposal_matcher, regions, t["boxes"].to(props),
                                        t["labels"]))
            boxes.append(regions)
        pos, neg = self.fg_bg_sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg)]
        return [b[k] for b, k in zip(boxes, keep)], [lab[k] for lab, k in zip(labels, keep)]

    def loss(self, fc7: Tensor, labels: list[Tensor]) -> dict[str, Tensor]:
        return {"loss_classifier": F.cross_entropy(self.cls_score(fc7), torch.cat(labels))}

    # --- test ----------------------------------------------------------------------------

    def class_scores(self, fc7: Tensor) -> Tensor:
        """``[R, K]`` foreground scores in [0, 1]: sigmoid of the SVM margins, or softmax."""
        if self.classifier == "svm":
            margins = (fc7 * self.fc7_scale) @ self.svm_weight.T + self.svm_bias
            return torch.sigmoid(margins)
        return F.softmax(self.cls_score(fc7), dim=-1)[:, 1:]

    def regress(self, pool5: Tensor, boxes: Tensor) -> Tensor:
        """``[R, K, 4]``: each region moved by each class's ridge regressor."""
        ridge, x = BoxRidge(self.ridge_weight), pool5 * self.pool5_scale
        full = boxes.new_empty((len(boxes),), dtype=torch.int64)
        return torch.stack([ridge.apply(x, boxes, full.fill_(k + 1))
                            for k in range(self.ridge_weight.shape[0])], dim=1)

    def forward(self, pool5: Tensor, fc7: Tensor, proposals: list[Tensor],
                image_sizes: list[tuple[int, int]], labels: list[Tensor] | None = None):
        if labels is not None:
            return self.loss(fc7, labels)
        scores, boxes = self.class_scores(fc7), self.regress(pool5, torch.cat(proposals))
        counts = [len(p) for p in proposals]
        return [self.postprocess(b, s, size) for b, s, size in
                zip(boxes.split(counts), scores.split(counts), image_sizes)]

    def postprocess(self, boxes: Tensor, scores: Tensor, size) -> dict[str, Tensor]:
        """Score threshold, greedy NMS per class (R-CNN §2.2), the top detections."""
        k = scores.shape[1]
        labels = torch.arange(1, k + 1, device=scores.device).expand_as(scores)
        boxes = clip_boxes_to_image(boxes.reshape(-1, 4), size)
        scores, labels = scores.reshape(-1), labels.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[:self.detections_per_img]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}


def region_labels(matcher: RangeMatcher, regions: Tensor, gt_boxes: Tensor,
                  gt_labels: Tensor) -> Tensor:
    """Class of the best ground truth for foreground, 0 for background, -1 for ignored."""
    if len(gt_boxes) == 0:
        return torch.zeros(len(regions), dtype=torch.int64, device=regions.device)
    matched = matcher(box_iou(gt_boxes, regions))
    labels = gt_labels.to(regions.device)[matched.clamp(min=0)].clone()
    labels[matched == matcher.BELOW_LOW_THRESHOLD] = 0
    labels[matched == matcher.BETWEEN_THRESHOLDS] = -1
    return labels


def external_proposals(model: str, targets, proposals):
    if proposals is not None:
        return proposals
    if targets is None or any("proposals" not in t for t in targets):
        raise ConfigError(f"model={model} needs external proposals (proposals=selective_search "
                          "or precomputed): none came with the batch")
    return [t["proposals"] for t in targets]


class RegionDetector(nn.Module):
    """``transform -> backbone -> roi_heads`` on external proposals; the subclass says how the
    backbone and the heads meet (``run``) and what a region's features are (``features``)."""

    name = "region"

    def __init__(self, backbone: nn.Module, roi_heads: RegionScorer,
                 transform: GeneralizedRCNNTransform):
        super().__init__()
        self.backbone, self.roi_heads, self.transform = backbone, roi_heads, transform

    def run(self, images: Tensor, proposals, image_sizes, labels=None):
        raise NotImplementedError

    def features(self, images: Tensor, proposals) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _prepare(self, images, targets, proposals):
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        proposals = [resize_boxes(p.float(), old, new)
                     for p, old, new in zip(proposals, original_sizes, batch.image_sizes)]
        return batch, targets, proposals, original_sizes

    def forward(self, images, targets=None, proposals=None):
        proposals = external_proposals(self.name, targets, proposals)
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        batch, targets, proposals, original_sizes = self._prepare(images, targets, proposals)
        if self.training:
            proposals, labels = self.roi_heads.sample(proposals, targets)
            return self.run(batch.tensors, proposals, batch.image_sizes, labels)
        detections = self.run(batch.tensors, proposals, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    @torch.no_grad()
    def region_features(self, images: list[Tensor], proposals: list[Tensor]):
        """``(pool5, fc7)`` of the given regions (original image pixels), in eval mode: what
        R-CNN caches on disk for the SVMs and the box regressor (§2.3)."""
        batch, _, proposals, _ = self._prepare(images, None, proposals)
        return self.features(batch.tensors, proposals)
