"""Cascade R-CNN (Cai & Vasconcelos 2018): a sequence of box heads trained at rising IoU.

Stage t re-samples its RoIs from the boxes stage t-1 regressed (§4.2), labels them at IoU
threshold u_t (0.5/0.6/0.7), regresses class-agnostic deltas normalised by its own box-coder
weights ((10,10,5,5)/(20,20,10,10)/(30,30,15,15), §4.1) and adds ``w_t`` x its Fast R-CNN loss
(1/0.5/0.25). At test time the proposals pass through every stage; each detection keeps the
last stage's box and the mean of the stages' class probabilities (§4.3, "ensemble").

Cascade Mask R-CNN (§5 of the journal version, Cai & Vasconcelos 2019) has either one mask
branch on the last stage (``mask_parts``) or one mask head per stage (``mask_stages``): stage t's
head is trained on stage t's positive RoIs with loss weight ``w_t``, and at test time the
detections' masks are the mean of the stages' mask probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.masks import (
    MaskStage,
    check_mask_targets,
    head_layout,
    mask_losses,
    mask_predictions,
    positive_rois,
)
from rcnn_cli.modeling.sampler import RangeMatcher, build_balanced_sampler


class AgnosticPredictor(nn.Module):
    """Class scores (background + classes) and one class-agnostic box delta per RoI."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeStage(nn.Module):
    def __init__(self, head: nn.Module, predictor: nn.Module):
        super().__init__()
        self.head = head
        self.predictor = predictor


class CascadeRoIHeads(nn.Module):
    """Drop-in for torchvision's ``RoIHeads`` inside ``GeneralizedRCNN``."""

    def __init__(self, box_roi_pool: nn.Module, stages: list[CascadeStage], *,
                 iou_thresholds: list[float], stage_loss_weights: list[float],
                 box_coder_weights: list[list[float]], bg_iou_lo: float,
                 batch_size_per_image: int, positive_fraction: float, score_thresh: float,
                 nms_thresh: float, detections_per_img: int,
                 mask_parts: tuple[nn.Module, nn.Module, nn.Module] | None = None,
                 mask_stages: tuple[nn.Module, list[MaskStage]] | None = None):
        super().__init__()
        n = len(stages)
        if not n or not len(iou_thresholds) == len(stage_loss_weights) == len(box_coder_weights) == n:
            raise ConfigError(f"model.cascade: {n} stage(s) need as many iou_thresholds, "
                              f"stage_loss_weights and box_coder_weights (got "
                              f"{len(iou_thresholds)}, {len(stage_loss_weights)}, "
                              f"{len(box_coder_weights)})")
        if any(len(w) != 4 for w in box_coder_weights):
            raise ConfigError("model.cascade.box_coder_weights: four weights per stage")
        self.box_roi_pool = box_roi_pool
        self.stages = nn.ModuleList(stages)
        self.iou_thresholds = [float(u) for u in iou_thresholds]
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.box_coders = [BoxCoder(tuple(float(x) for x in w)) for w in box_coder_weights]
        self.matchers = [RangeMatcher(u, u, bg_iou_lo) for u in self.iou_thresholds]
        self.fg_bg_sampler = build_balanced_sampler("roi", batch_size_per_image,
                                                    positive_fraction)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = self.mask_head = self.mask_predictor = self.mask_stages = None
        if mask_parts is not None and mask_stages is not None:
            raise ConfigError("model.cascade.stage_masks: one mask branch or one per stage")
        if mask_parts is not None:
            self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_parts
        if mask_stages is not None:
            if len(mask_stages[1]) != n:
                raise ConfigError(f"model.cascade: {n} stage(s) need {n} mask heads")
            self.mask_roi_pool = mask_stages[0]
            self.mask_stages = nn.ModuleList(mask_stages[1])

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict] | None = None):
        if self.training:
            return [], self.losses(features, proposals, image_shapes, targets)
        probs, boxes = self.stage_outputs(features, proposals, image_shapes)
        results = self.postprocess(torch.stack(probs).mean(dim=0), boxes[-1], image_shapes,
                                   [p.shape[0] for p in proposals])
        if self.mask_stages is not None:
            self.predict_stage_masks(features, results, image_shapes)
        elif self.mask_roi_pool is not None:
            mask_predictions(self, features, results, image_shapes)
        return results, {}

    def run_stage(self, t: int, features, boxes: list[Tensor], image_shapes):
        x = self.box_roi_pool(features, boxes, image_shapes)
        return self.stages[t].predictor(self.stages[t].head(x))

    def refine(self, t: int, deltas: Tensor, boxes: list[Tensor], image_shapes) -> list[Tensor]:
        """Stage t's regressed boxes, clipped to the image: the next stage's input."""
        decoded = self.box_coders[t].decode_single(deltas, torch.cat(boxes))
        out = []  # counts from .shape, not len(): a traced graph must not freeze them
        for b, shape in zip(decoded.split([x.shape[0] for x in boxes]), image_shapes):
            out.append(box_ops.clip_boxes_to_image(b, shape))
        return out

    def stage_outputs(self, features, proposals: list[Tensor],
                      image_shapes) -> tuple[list[Tensor], list[Tensor]]:
        """Test time: per stage, the class probabilities and the boxes it regressed."""
        probs, boxes, current = [], [], proposals
        for t in range(len(self.stages)):
            logits, deltas = self.run_stage(t, features, current, image_shapes)
            probs.append(F.softmax(logits, -1))
            current = self.refine(t, deltas, current, image_shapes)
            boxes.append(torch.cat(current))
        return probs, boxes

    def sample(self, t: int, proposals: list[Tensor], targets: list[dict]):
        """Stage t's minibatch: ground truth added, labelled at IoU u_t, fg/bg balanced."""
        boxes, labels, matched, reg = [], [], [], []
        for props, tgt in zip(proposals, targets):
            gt_boxes, gt_labels = tgt["boxes"], tgt["labels"]
            props = torch.cat([props, gt_boxes])
            if gt_boxes.numel() == 0:
                idx = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                lab = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                gt_boxes = torch.zeros((1, 4), dtype=props.dtype, device=props.device)
            else:
                idx = self.matchers[t](box_ops.box_iou(gt_boxes, props))
                lab = gt_labels[idx.clamp(min=0)].to(torch.int64)
                lab[idx == RangeMatcher.BELOW_LOW_THRESHOLD] = 0
                lab[idx == RangeMatcher.BETWEEN_THRESHOLDS] = -1
                idx = idx.clamp(min=0)
            labels.append(lab)
            matched.append(idx)
            boxes.append(props)
            reg.append(gt_boxes[idx])
        pos, neg = self.fg_bg_sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg)]
        boxes = [b[k] for b, k in zip(boxes, keep)]
        labels = [lab[k] for lab, k in zip(labels, keep)]
        matched = [m[k] for m, k in zip(matched, keep)]
        reg = [self.box_coders[t].encode_single(g[k], b) for g, k, b in zip(reg, keep, boxes)]
        return boxes, labels, matched, reg

    def losses(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        if targets is None:
            raise ValueError("targets are needed in training")
        losses: dict[str, Tensor] = {}
        if self.mask_roi_pool is not None:
            check_mask_targets(targets)
        current = [p.detach() for p in proposals]
        for t, w in enumerate(self.stage_loss_weights):
            boxes, labels, matched, reg = self.sample(t, current, targets)
            logits, deltas = self.run_stage(t, features, boxes, image_shapes)
            cls, box = agnostic_fastrcnn_loss(logits, deltas, torch.cat(labels), torch.cat(reg))
            losses[f"loss_classifier_stage{t + 1}"] = w * cls
            losses[f"loss_box_reg_stage{t + 1}"] = w * box
            if t + 1 < len(self.stages) or self.mask_stages is not None:
                refined = [b.detach() for b in self.refine(t, deltas, boxes, image_shapes)]
            if self.mask_stages is not None:
                losses[f"loss_mask_stage{t + 1}"] = w * self.stage_mask_loss(
                    t, features, (boxes, labels, matched), refined, targets, image_shapes)
            if t + 1 < len(self.stages):
                current = refined
        if self.mask_stages is None and self.mask_roi_pool is not None:
            losses.update(mask_losses(self, features, boxes, labels, matched, targets,
                                      image_shapes))
        return losses

    def stage_mask_loss(self, t: int, features, sample: tuple, refined: list[Tensor],
                        targets: list[dict], image_shapes) -> Tensor:
        """Stage t's mask loss on the positive RoIs of its own minibatch (``refined``, the boxes
        stage t regressed, is what HTC's interleaved execution trains on instead)."""
        boxes, idxs = positive_rois(*sample)
        logits = self.stage_mask_logits(t, features, boxes, image_shapes)
        return maskrcnn_loss(logits, boxes, [x["masks"] for x in targets],
                             [x["labels"] for x in targets], idxs)

    def stage_mask_logits(self, t: int, features, boxes: list[Tensor], image_shapes) -> Tensor:
        return self.mask_stages[t](head_layout(self.mask_roi_pool(features, boxes, image_shapes)))

    def all_stage_mask_logits(self, features, boxes: list[Tensor], image_shapes) -> list[Tensor]:
        x = head_layout(self.mask_roi_pool(features, boxes, image_shapes))
        return [stage(x) for stage in self.mask_stages]

    def predict_stage_masks(self, features, results: list[dict], image_shapes) -> None:
        """Each detection's mask: the mean of the stages' probabilities for its class."""
        logits = self.all_stage_mask_logits(features, [r["boxes"] for r in results],
                                            image_shapes)
        labels = [r["labels"] for r in results]
        probs = [maskrcnn_inference(x, labels) for x in logits]
        for i, r in enumerate(results):
            r["masks"] = torch.stack([p[i] for p in probs]).mean(dim=0)

    def postprocess(self, scores: Tensor, boxes: Tensor, image_shapes,
                    counts: list[int]) -> list[dict[str, Tensor]]:
        """Per class: score threshold, drop tiny boxes, NMS, keep the top detections."""
        results = []
        num_classes = scores.shape[1]
        for s, b in zip(scores.split(counts), boxes.split(counts)):
            labels = torch.arange(1, num_classes, device=s.device).expand(s.shape[0], -1)
            b = b[:, None, :].expand(-1, num_classes - 1, -1).reshape(-1, 4)
            s, labels = s[:, 1:].reshape(-1), labels.reshape(-1)
            keep = torch.where(s > self.score_thresh)[0]
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.batched_nms(b, s, labels, self.nms_thresh)[:self.detections_per_img]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": labels[keep]})
        return results


def agnostic_fastrcnn_loss(logits: Tensor, deltas: Tensor, labels: Tensor,
                           targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy + smooth-L1 on foreground RoIs, normalised by the RoI count (as
    torchvision's ``fastrcnn_loss``)."""
    cls = F.cross_entropy(logits, labels)
    pos = torch.where(labels > 0)[0]
    box = F.smooth_l1_loss(deltas[pos], targets[pos], beta=1 / 9, reduction="sum")
    return cls, box / max(labels.numel(), 1)


def build_cascade_stages(make_head: Callable[[], tuple[nn.Module, int]], num_classes: int,
                         num_stages: int) -> list[CascadeStage]:
    """Each stage gets its own box head (``make_head()``) and its own predictor."""
    stages = []
    for _ in range(num_stages):
        head, dim = make_head()
        stages.append(CascadeStage(head, AgnosticPredictor(dim, num_classes)))
    return stages
