"""Spatial pyramid pooling of windows (He et al. 2014, SPPNet §2.3 "Spatial Pyramid Pooling
Layer" and §4 "SPP-net for Object Detection"; Fast R-CNN's RoI pooling is its one-level case).

The conv5 map is computed once per image; each window is projected onto it and max-pooled
into n x n bins for every pyramid level n (1, 2, 3, 6 = 50 bins), giving a fixed-length vector
for any window size.

Projection (SPPNet's Appendix "Mapping a Window to Feature Maps"). SPPNet maps a corner to the
cell whose receptive-field centre is nearest, x' = floor(x / S) + 1 (left/top) and
x' = ceil(x / S) - 1 (right/bottom) in its 1-based, padding-specific coordinates, which moves
each edge inwards; at stride 16 that empties the 1-3 cell windows of small objects. We keep the
cells the window touches instead: cell i covers image pixels [S i, S (i + 1)), so
left = floor(x1 / S), right = max(left, ceil(x2 / S) - 1), inclusive, clipped to the map.
Bins within the window's h cells: bin i of n spans cells [floor(i h / n), ceil((i + 1) h / n)),
never empty (SPPNet's window ceil(h / n), stride floor(h / n), made exact for every h); this is
``torchvision.ops.roi_pool`` on the integer cell box, which does the pooling.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_pool


def spp_bins(levels: tuple[int, ...]) -> int:
    """Number of bins of a pyramid: sum of n * n (50 for SPPNet's (1, 2, 3, 6))."""
    return sum(n * n for n in levels)


def project_boxes(boxes: torch.Tensor, spatial_scale: float, height: int,
                  width: int) -> torch.Tensor:
    """Image-pixel boxes -> inclusive integer cell boxes (x1, y1, x2, y2) on an H x W map."""
    stride = 1.0 / spatial_scale
    lo = torch.floor(boxes[:, :2] / stride)
    hi = torch.maximum(torch.ceil(boxes[:, 2:] / stride) - 1, lo)
    limit = boxes.new_tensor([width - 1, height - 1])
    lo = torch.minimum(lo.clamp(min=0), limit)
    hi = torch.minimum(hi.clamp(min=0), limit)
    return torch.cat([lo, torch.maximum(hi, lo)], dim=1)


class SpatialPyramidPool(nn.Module):
    """``forward(features [B, C, H, W], boxes: list of [Ni, 4] image-pixel boxes)`` ->
    ``[sum Ni, C * spp_bins(levels)]``, laid out level-major, then channel, then bin
    (row-major): SPPNet's fixed-length vector for fc6."""

    def __init__(self, levels: tuple[int, ...] = (1, 2, 3, 6), spatial_scale: float = 1 / 16):
        super().__init__()
        if not levels or min(levels) < 1:
            raise ValueError(f"levels={levels}: need at least one level, each >= 1")
        if spatial_scale <= 0:
            raise ValueError(f"spatial_scale={spatial_scale}: must be > 0")
        self.levels, self.spatial_scale = tuple(levels), spatial_scale

    @property
    def bins(self) -> int:
        return spp_bins(self.levels)

    def forward(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        if len(boxes) != len(features):
            raise ValueError(f"{len(boxes)} box lists for a batch of {len(features)} maps")
        _, _, h, w = features.shape
        rois = [torch.cat([torch.full((len(b), 1), float(i), device=features.device),
                           project_boxes(b.to(features.device, torch.float32), self.spatial_scale,
                                         h, w)], dim=1)
                for i, b in enumerate(boxes)]
        rois = torch.cat(rois).to(features.dtype)
        pooled = [roi_pool(features, rois, (n, n), spatial_scale=1.0).flatten(start_dim=1)
                  for n in self.levels]
        return torch.cat(pooled, dim=1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, spatial_scale={self.spatial_scale}"
