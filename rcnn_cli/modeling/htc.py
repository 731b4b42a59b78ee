"""Hybrid Task Cascade (Chen et al. 2019): Cascade Mask R-CNN with per-stage mask heads, plus

- interleaved execution (§3.1): stage t's mask head trains on the boxes stage t's box head just
  regressed, re-labelled at u_t and re-sampled (not on the boxes the box head was given);
- mask information flow (§3.2, eq. 4): mask head t adds a 1x1 conv of head t-1's features
  (after its convs, before the deconv) to its RoI features; head t-1 runs on stage t's RoIs, so
  head t's loss trains every earlier head too; at test time the heads run in sequence and the
  mask is the mean of their probabilities;
- the semantic branch (§3.3, ``rcnn_cli.modeling.semantic_head``): its feature map, pooled per
  RoI, is added to the box and mask RoI features; its loss is weighted by beta (eq. 6).

With every switch off, this is exactly ``CascadeRoIHeads`` with ``mask_stages``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.cascade import CascadeRoIHeads
from rcnn_cli.modeling.masks import MaskStage, head_layout
from rcnn_cli.modeling.semantic_head import FusedSemanticHead, semantic_loss

SEMANTIC = "semantic"  # the key of the semantic feature map among the RoI heads' features


class FlowMaskStage(MaskStage):
    """A mask head that takes the previous head's features through a 1x1 conv (eq. 4)."""

    def __init__(self, head: nn.Module, predictor: nn.Module, in_channels: int,
                 head_channels: int):
        super().__init__(head, predictor)
        self.conv_res = nn.Conv2d(head_channels, in_channels, 1)

    def features(self, x: Tensor, previous: Tensor | None) -> Tensor:
        return self.head(x + self.conv_res(previous))


def head_features(stage: MaskStage, x: Tensor, previous: Tensor | None) -> Tensor:
    """Features after a mask head's convs; the first head has no predecessor."""
    if previous is None or not isinstance(stage, FlowMaskStage):
        return stage.head(x)
    return stage.features(x, previous)


class HTCRoIHeads(CascadeRoIHeads):
    def __init__(self, *args, interleaved: bool, mask_info_flow: bool,
                 semantic_head: FusedSemanticHead | None = None,
                 semantic_pools: tuple[nn.Module, nn.Module] | None = None,
                 semantic_loss_weight: float = 0.2, **kwargs):
        super().__init__(*args, **kwargs)
        if self.mask_stages is None:
            raise ConfigError("model=htc needs one mask head per stage")
        flows = [isinstance(s, FlowMaskStage) for s in self.mask_stages]
        if flows != [False] + [mask_info_flow] * (len(flows) - 1):
            raise ConfigError("model.htc.mask_info_flow: every mask head after the first "
                              "takes its predecessor's features, or none does")
        if (semantic_head is None) != (semantic_pools is None):
            raise ConfigError("model.htc.semantic: the head and its RoI poolers go together")
        self.interleaved, self.mask_info_flow = interleaved, mask_info_flow
        self.semantic_head = semantic_head
        self.semantic_box_pool = self.semantic_mask_pool = None
        if semantic_pools is not None:
            self.semantic_box_pool, self.semantic_mask_pool = semantic_pools
        self.semantic_loss_weight = float(semantic_loss_weight)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict] | None = None):
        if self.semantic_head is None:
            return super().forward(features, proposals, image_shapes, targets)
        logits, semantic = self.semantic_head(features)
        features = {**features, SEMANTIC: semantic}
        results, losses = super().forward(features, proposals, image_shapes, targets)
        if self.training:
            stride = fusion_stride(logits, image_shapes)
            losses["loss_semantic"] = self.semantic_loss_weight * semantic_loss(
                logits, targets, image_shapes, stride)
        return results, losses

    def run_stage(self, t: int, features, boxes: list[Tensor], image_shapes):
        x = self.box_roi_pool(features, boxes, image_shapes)
        if self.semantic_box_pool is not None:
            x = x + self.semantic_box_pool(features, boxes, image_shapes)
        return self.stages[t].predictor(self.stages[t].head(x))

    def stage_mask_loss(self, t: int, features, sample: tuple, refined: list[Tensor],
                        targets: list[dict], image_shapes) -> Tensor:
        if self.interleaved:
            sample = self.sample(t, refined, targets)[:3]
        return super().stage_mask_loss(t, features, sample, refined, targets, image_shapes)

    def mask_rois(self, features, boxes: list[Tensor], image_shapes) -> Tensor:
        x = self.mask_roi_pool(features, boxes, image_shapes)
        if self.semantic_mask_pool is not None:
            x = x + self.semantic_mask_pool(features, boxes, image_shapes)
        return head_layout(x)

    def stage_mask_logits(self, t: int, features, boxes: list[Tensor], image_shapes) -> Tensor:
        x = self.mask_rois(features, boxes, image_shapes)
        previous = None
        for i in (range(t + 1) if self.mask_info_flow else [t]):
            previous = head_features(self.mask_stages[i], x, previous)
        return self.mask_stages[t].predictor(previous)

    def all_stage_mask_logits(self, features, boxes: list[Tensor], image_shapes) -> list[Tensor]:
        x = self.mask_rois(features, boxes, image_shapes)
        logits, previous = [], None
        for stage in self.mask_stages:
            previous = head_features(stage, x, previous if self.mask_info_flow else None)
            logits.append(stage.predictor(previous))
        return logits


def fusion_stride(logits: Tensor, image_shapes: list[tuple[int, int]]) -> int:
    """The semantic map's stride, a power of two (as torchvision infers RoI pooling scales)."""
    height = max(h for h, _ in image_shapes)
    return 2 ** round(math.log2(height / logits.shape[-2]))
