"""Backbones: torchvision ResNet trunks + FPN (Lin et al. 2017), built with explicit arguments.

``r50_fpn`` reproduces the parameter names and shapes of torchvision's
``fasterrcnn_resnet50_fpn`` backbone, so its published weights load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import nn
from torchvision.models import get_weight, resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from rcnn_cli.errors import ConfigError

RESNET_FPN = {"r18_fpn": "resnet18", "r50_fpn": "resnet50", "r101_fpn": "resnet101"}
RESNET_STAGES = ["conv1", "layer1", "layer2", "layer3", "layer4"]


@dataclass
class BackboneSpec:
    """A built backbone and what the heads need to know about it."""

    module: nn.Module
    out_channels: int
    feature_names: list[str]  # every map the backbone returns, finest first
    pooled_names: list[str]  # the maps RoI pooling reads


def norm_layer(norm: str):
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, 32)
    raise ConfigError(f"backbone.norm={norm} is not supported; use frozen_bn, bn or gn")


def resolve_weights(weights: str | None):
    """None, a torchvision weights name (``ResNet50_Weights.IMAGENET1K_V1``) or a local file."""
    if weights is None:
        return None, None
    if Path(weights).expanduser().is_file():
        return None, Path(weights).expanduser()
    try:
        return get_weight(weights), None
    except (ValueError, KeyError, AttributeError) as e:
        raise ConfigError(
            f"backbone.weights={weights!r} is neither an existing file nor a torchvision "
            f"weights name such as 'ResNet50_Weights.IMAGENET1K_V1'") from e


def load_trunk_file(trunk: nn.Module, path: Path) -> None:
    from rcnn_cli.engine.checkpoint import load_state_file

    state = load_state_file(path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.") and "num_batches_tracked" not in k]
    if missing or unexpected:
        raise ConfigError(f"backbone.weights={path}: missing keys {missing[:5]}, "
                          f"unexpected keys {unexpected[:5]}")


def freeze_stages(trunk: nn.Module, trainable_layers: int) -> None:
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"backbone.trainable_layers={trainable_layers}: must be in [0, 5]")
    trainable = RESNET_STAGES[::-1][:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for name, p in trunk.named_parameters():
        if not any(name.startswith(layer) for layer in trainable):
            p.requires_grad_(False)


def resnet_fpn(name: str, weights: str | None, trainable_layers: int, norm: str,
               fpn_channels: int) -> BackboneSpec:
    """ResNet C2-C5 -> FPN P2-P5 + P6 (max-pool), as torchvision's detection backbones."""
    if name not in RESNET_FPN:
        raise ConfigError(f"backbone={name} is not supported; available: "
                          f"{', '.join(BACKBONES)}")
    enum, file = resolve_weights(weights)
    trunk = getattr(resnet, RESNET_FPN[name])(weights=enum, norm_layer=norm_layer(norm))
    if file is not None:
        load_trunk_file(trunk, file)
    freeze_stages(trunk, trainable_layers)
    stage_channels = [trunk.inplanes // 8, trunk.inplanes // 4, trunk.inplanes // 2, trunk.inplanes]
    module = BackboneWithFPN(
        trunk,
        return_layers={f"layer{k}": str(k - 1) for k in range(1, 5)},
        in_channels_list=stage_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    names = ["0", "1", "2", "3", "pool"]
    return BackboneSpec(module, fpn_channels, names, names[:4])


BACKBONES = {name: resnet_fpn for name in RESNET_FPN}


def build_backbone(name: str, weights: str | None, trainable_layers: int, norm: str,
                   fpn_channels: int) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"backbone={name} is not supported; available: {', '.join(BACKBONES)}")
    return BACKBONES[name](name, weights, trainable_layers, norm, fpn_channels)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable

