"""Fixed proposals in place of the RPN (Fast R-CNN §2; Faster R-CNN §3.2, 4-step training).

The Fast R-CNN stages of alternating training learn from proposals computed once by a frozen
RPN. ``FixedProposals`` takes the RPN's place in a ``GeneralizedRCNN``: it returns each image's
stored proposals (``target["proposals"]``, transformed with the image by
``rcnn_cli.data.with_proposals``) rescaled to the network input, and no loss. torchvision's
``RoIHeads`` then adds the ground-truth boxes and samples RoIs as usual.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes

from rcnn_cli.errors import ConfigError


class FixedProposals(nn.Module):
    """A proposal source without parameters: the proposals travel in the targets."""

    def forward(self, images: ImageList, features: dict[str, torch.Tensor],
                targets: list[dict] | None = None):
        if targets is None or any("proposals" not in t for t in targets):
            raise ConfigError("FixedProposals needs targets carrying 'proposals' (training on a "
                              "proposal file); use the RPN for inference")
        proposals = []
        for t, size in zip(targets, images.image_sizes):
            boxes = t["proposals"].float()
            proposals.append(resize_boxes(boxes, tuple(t["proposals_size"].tolist()), size))
        return proposals, {}
