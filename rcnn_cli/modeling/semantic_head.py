"""HTC's semantic segmentation branch (Chen et al. 2019, §3.3 and Fig. 4).

Every FPN level goes through a 1x1 conv, is resized to the fusion level (P3, stride 8) and
summed; four 3x3 convs follow, then a 1x1 conv to per-pixel class logits and a 1x1 conv to the
semantic feature map that HTC adds to the box and mask RoI features. The loss is the per-pixel
cross-entropy at the fusion level's resolution (pixels labelled ``IGNORE`` do not count).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rcnn_cli.data.semantic import IGNORE, check_classes, semantic_targets
from rcnn_cli.errors import ConfigError


class FusedSemanticHead(nn.Module):
    def __init__(self, feature_names: list[str], in_channels: int, num_classes: int, *,
                 fusion_level: int, num_convs: int):
        super().__init__()
        if not 0 <= fusion_level < len(feature_names):
            raise ConfigError(f"model.htc.semantic_fusion_level={fusion_level}: the backbone "
                              f"has {len(feature_names)} levels")
        if num_convs < 1:
            raise ConfigError("model.htc.semantic_convs must be >= 1")
        self.feature_names = list(feature_names)
        self.fusion_name = feature_names[fusion_level]
        c = in_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in feature_names)
        self.convs = nn.Sequential(*[m for _ in range(num_convs)
                                     for m in (nn.Conv2d(c, c, 3, padding=1), nn.ReLU())])
        self.embedding = nn.Conv2d(c, c, 1)
        self.logits = nn.Conv2d(c, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(class logits, semantic features), both at the fusion level's size."""
        size = features[self.fusion_name].shape[-2:]
        x = 0
        for name, lateral in zip(self.feature_names, self.lateral):
            y = F.relu(lateral(features[name]))
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            x = x + y
        x = self.convs(x)
        return self.logits(x), F.relu(self.embedding(x))


def semantic_loss(logits: Tensor, targets: list[dict], image_shapes: list[tuple[int, int]],
                  stride: int) -> Tensor:
    """Cross-entropy against each image's semantic map (its own, or one made from its instance
    masks), padded as the batch and sampled down to the logits' grid."""
    labels = semantic_targets(targets, image_shapes, (logits.shape[-2] * stride,
                                                      logits.shape[-1] * stride))
    check_classes(labels, logits.shape[1])
    labels = labels[:, None].float()
    labels = F.interpolate(labels, size=logits.shape[-2:], mode="nearest")[:, 0].long()
    return F.cross_entropy(logits, labels.to(logits.device), ignore_index=IGNORE)
