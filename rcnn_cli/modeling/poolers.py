"""RoI feature pooling: RoIAlign (Mask R-CNN §3) with FPN level assignment (FPN eq. 1)."""

from __future__ import annotations

from torchvision.ops import MultiScaleRoIAlign

from rcnn_cli.errors import ConfigError


def build_pooler(name: str, feature_names: list[str], output_size: int, sampling_ratio: int,
                 canonical_scale: int, canonical_level: int) -> MultiScaleRoIAlign:
    if name != "roi_align":
        raise ConfigError(f"pooler={name} is not supported; available: roi_align")
    return MultiScaleRoIAlign(featmap_names=feature_names, output_size=output_size,
                              sampling_ratio=sampling_ratio, canonical_scale=canonical_scale,
                              canonical_level=canonical_level)
