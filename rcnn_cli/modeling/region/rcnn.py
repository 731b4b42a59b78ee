"""R-CNN (Girshick et al. 2014): every proposal dilated by ``context`` px, warped to the CNN's
input (§2.1, Appendix A) and run through the whole classifier network; fc7 feeds the SVMs
(or the softmax) and pool5 the box regressor (``rcnn_cli.modeling.region.detector``).

``backbone`` is the CNN applied to the warped crops (conv1-fc7); ``roi_heads`` the region-wise
scoring, box regression and NMS.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rcnn_cli.modeling.region.cnn import RegionClassifierNet
from rcnn_cli.modeling.region.detector import RegionDetector
from rcnn_cli.modeling.region.warp import warp_regions


class WarpedRegionCNN(nn.Module):
    """Warp each image's regions to ``warp_size`` (``context`` px of context on each side) and
    run the classifier network on them, ``region_batch`` crops at a time (all at once in
    training, where the minibatch is the fine-tuning batch)."""

    def __init__(self, net: RegionClassifierNet, warp_size: int, context: int,
                 region_batch: int):
        super().__init__()
        self.net, self.warp_size, self.context = net, warp_size, context
        self.region_batch = region_batch

    def forward(self, images: Tensor, proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        crops = torch.cat([warp_regions(img, boxes, self.warp_size, self.context)
                           for img, boxes in zip(images, proposals)])
        if self.training or len(crops) <= self.region_batch:
            return self.net(crops)
        outs = [self.net(chunk) for chunk in crops.split(self.region_batch)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


class RCNN(RegionDetector):
    name = "rcnn"

    def run(self, images, proposals, image_sizes, labels=None):
        pool5, fc7 = self.backbone(images, proposals)
        return self.roi_heads(pool5, fc7, proposals, image_sizes, labels)

    def features(self, images, proposals):
        return self.backbone(images, proposals)
