"""RoI feature pooling: a fixed-size feature per RoI, read from the right pyramid level.

- ``roi_pool``: quantised max pooling (Fast R-CNN §2.1; SPPnet's single-level pyramid): the RoI
  is rounded to the feature grid, split into ``output_size`` x ``output_size`` bins (bin edges
  floored/ceiled) and each bin max-pooled.
- ``roi_align``: bilinear sampling without quantisation (Mask R-CNN §3), ``sampling_ratio``
  points per bin side (0: adaptive), ``aligned``: the half-pixel correction.
- FPN level assignment (FPN eq. 1): ``k = floor(k0 + log2(sqrt(wh) / canonical_scale))``,
  clamped to the available levels; a single map needs none.

torchvision's ``MultiScaleRoIAlign`` does the level dispatch for RoIAlign only and always with
``aligned=False``; ``LevelPooler`` is that dispatch (reusing torchvision's ``LevelMapper`` and
scale inference) around either op. With ``roi_align`` and ``aligned=False`` it returns exactly
what ``MultiScaleRoIAlign`` returns.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool
from torchvision.ops.poolers import (
    _convert_to_roi_format,
    _filter_input,
    _onnx_merge_levels,
    _setup_scales,
)

from rcnn_cli.errors import ConfigError
from rcnn_cli.ops.roi_align import roi_align as vectorised_roi_align

POOLERS = ("roi_pool", "roi_align")
KERNELS = ("auto", "torchvision", "vectorised")


def roi_align_kernel(kernel: str, device: torch.device) -> Callable[..., Tensor]:
    """``vectorised`` (``rcnn_cli.ops``, same numerics) or torchvision's own RoIAlign kernel;
    ``auto`` takes the vectorised one on CPU, where torchvision's backward is a scalar loop."""
    if kernel == "vectorised" or (kernel == "auto" and device.type == "cpu"):
        return vectorised_roi_align
    return roi_align


class LevelPooler(nn.Module):
    """Pool each RoI from the level FPN eq. 1 assigns it to, with ``op(feature, rois, scale)``."""

    def __init__(self, op: Callable[[Tensor, Tensor, float], Tensor], feature_names: list[str],
                 output_size: int, canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        self.op = op
        self.featmap_names = list(feature_names)
        self.output_size = (output_size, output_size)
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.scales: list[float] | None = None
        self.map_levels = None

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        # Scales are inferred from each batch (the padded size can change between batches).
        self.scales, self.map_levels = _setup_scales(features, image_shapes,
                                                     self.canonical_scale, self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return self.op(features[0], rois, self.scales[0])
        levels = self.map_levels(boxes)
        if torch.jit.is_tracing():  # an RoI count read by len() would be frozen in the trace
            return _onnx_merge_levels(levels, [self.op(f, rois[torch.where(levels == k)[0]], s)
                                               for k, (f, s) in enumerate(zip(features,
                                                                              self.scales))])
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            result[idx] = self.op(feature, rois[idx], scale).to(result.dtype)
        return result


def pool_op(name: str, output_size: int, sampling_ratio: int, aligned: bool,
            kernel: str = "auto") -> Callable[[Tensor, Tensor, float], Tensor]:
    """The per-level op: torchvision's ``roi_pool`` or ``roi_align`` (``kernel`` picks the
    RoIAlign implementation, see ``roi_align_kernel``)."""
    if kernel not in KERNELS:
        raise ConfigError(f"pooler.kernel={kernel} is not supported; available: "
                          f"{', '.join(KERNELS)}")
    if name == "roi_pool":
        if aligned:
            raise ConfigError("pooler=roi_pool quantises its RoIs; pooler.aligned=true only "
                              "applies to roi_align")

        def op(feature: Tensor, rois: Tensor, scale: float) -> Tensor:
            if feature.dtype != rois.dtype:  # bf16 maps under autocast: torchvision's kernel
                # wants one dtype, and max pooling is exact in the boxes' fp32
                return roi_pool(feature.to(rois.dtype), rois, output_size, scale).to(feature.dtype)
            return roi_pool(feature, rois, output_size, scale)

        return op
    if name == "roi_align":

        def op(feature: Tensor, rois: Tensor, scale: float) -> Tensor:
            align = roi_align_kernel(kernel, feature.device)
            return align(feature, rois, output_size, scale, sampling_ratio, aligned)

        return op
    raise ConfigError(f"pooler={name} is not supported; available: {', '.join(POOLERS)}")


def build_pooler(name: str, feature_names: list[str], output_size: int, sampling_ratio: int,
                 canonical_scale: int, canonical_level: int, aligned: bool = False,
                 kernel: str = "auto") -> LevelPooler:
    if output_size < 1 or sampling_ratio < 0 or canonical_scale < 1:
        raise ConfigError(f"pooler={name}: need output_size >= 1, sampling_ratio >= 0 and "
                          f"canonical_scale >= 1")
    op = pool_op(name, output_size, sampling_ratio, aligned, kernel)
    return LevelPooler(op, feature_names, output_size, canonical_scale, canonical_level)
