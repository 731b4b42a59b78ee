"""SPPNet for detection (He et al. 2014, §4): conv5 computed once per image; each proposal is
projected onto the conv5 map and pooled by a spatial pyramid (1x1, 2x2, 3x3, 6x6 = 50 bins)
into a fixed-length vector for fc6/fc7. Only the fc layers are fine-tuned (conv layers frozen);
SVMs (or the softmax) and box regression as R-CNN (``rcnn_cli.modeling.region.detector``).

``backbone`` is the conv5 trunk (once per image); ``roi_heads`` the region-wise part: SPP,
fc6/fc7, scoring, box regression (on the pooled conv5 vector) and NMS.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rcnn_cli.modeling.region.cnn import fc_features
from rcnn_cli.modeling.region.detector import RegionDetector, RegionScorer
from rcnn_cli.modeling.region.spp import SpatialPyramidPool


class SPPHeads(RegionScorer):
    """SPP -> fc6 -> fc7, then the R-CNN scoring of ``RegionScorer``."""

    def __init__(self, spp: SpatialPyramidPool, fc6: nn.Linear, fc7: nn.Linear, dropout: float,
                 **scorer):
        super().__init__(fc7.out_features, fc6.in_features, **scorer)
        self.spp, self.fc6, self.fc7, self.dropout = spp, fc6, fc7, nn.Dropout(dropout)

    def features(self, conv5: Tensor, proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        pooled = self.spp(conv5, proposals)
        return pooled, fc_features(pooled, self.fc6, self.fc7, self.dropout)

    def forward(self, conv5, proposals, image_sizes, labels=None):
        pooled, fc7 = self.features(conv5, proposals)
        return super().forward(pooled, fc7, proposals, image_sizes, labels)


class SPPNet(RegionDetector):
    name = "sppnet"

    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True):
        """A frozen trunk stays in eval mode (BatchNorm statistics of VGG16-BN included)."""
        super().train(mode)
        if self.frozen():
            self.backbone.eval()
        return self

    def conv5(self, images: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen()):
            return self.backbone(images)

    def run(self, images, proposals, image_sizes, labels=None):
        return self.roi_heads(self.conv5(images), proposals, image_sizes, labels)

    def features(self, images, proposals):
        return self.roi_heads.features(self.conv5(images), proposals)
