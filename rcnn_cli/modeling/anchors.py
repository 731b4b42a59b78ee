"""Anchors (Faster R-CNN §3.1.1; FPN §4.1): sizes per feature map x aspect ratios."""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator

from rcnn_cli.errors import ConfigError


def build_anchor_generator(name: str, sizes: list[list[int]], aspect_ratios: list[float],
                           feature_names: list[str], backbone: str) -> AnchorGenerator:
    if len(sizes) != len(feature_names):
        raise ConfigError(
            f"anchors={name} defines {len(sizes)} feature map(s) but backbone={backbone} "
            f"returns {len(feature_names)}; pick anchors that match the backbone")
    if any(len(s) == 0 for s in sizes) or not aspect_ratios:
        raise ConfigError(f"anchors={name}: every level needs at least one size and one ratio")
    if any(r <= 0 for r in aspect_ratios) or any(x <= 0 for s in sizes for x in s):
        raise ConfigError(f"anchors={name}: sizes and aspect ratios must be positive")
    return AnchorGenerator(
        sizes=tuple(tuple(int(x) for x in s) for s in sizes),
        aspect_ratios=tuple(tuple(float(r) for r in aspect_ratios) for _ in sizes),
    )
