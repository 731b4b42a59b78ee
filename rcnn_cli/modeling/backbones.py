"""Backbones built with explicit arguments from torchvision trunks.

- ``vgg16``: conv5_3, stride 16, one map (Faster R-CNN §4, the paper's VGG-16 setting).
- ``alexnet``: conv5 + ReLU, stride 16, 256 channels (Krizhevsky et al. 2012; the trunk SPPNet
  pools from). R-CNN uses the whole classifier instead (``rcnn_cli.modeling.region.cnn``).
- ``r50_c4`` / ``r101_c4``: ResNet res2-res4 trunk (stride 16, one map); res5 becomes the RoI
  head (He et al. 2016, appendix A "Object Detection Baselines"; Detectron's C4 design).
- ``r18_fpn`` / ``r50_fpn`` / ``r101_fpn``: ResNet C2-C5 -> FPN P2-P5 + P6 (Lin et al. 2017).
  ``r50_fpn`` reproduces torchvision's ``fasterrcnn_resnet50_fpn`` names and shapes.
- ``mobilenet_v3_fpn``: torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` layout.

DetectoRS switches (ResNet-FPN only): ``sac`` (``rcnn_cli.modeling.sac``) and ``rfp_steps``
(``rcnn_cli.modeling.rfp``), each starting from the loaded ResNet weights.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import Tensor, nn
from torchvision.models import alexnet, get_weight, mobilenet_v3_large, resnet, vgg16, vgg16_bn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _mobilenet_extractor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.download import fetch_weights

RESNET_FPN = {"r18_fpn": "resnet18", "r50_fpn": "resnet50", "r101_fpn": "resnet101"}
RESNET_C4 = {"r50_c4": "resnet50", "r101_c4": "resnet101"}
RESNET_STAGES = ["conv1", "layer1", "layer2", "layer3", "layer4"]


@dataclass
class BackboneSpec:
    """A built backbone and what the heads need to know about it."""

    module: nn.Module
    out_channels: int
    feature_names: list[str]  # every map the backbone returns, finest first
    pooled_names: list[str]  # the maps RoI pooling reads
    res5: nn.Module | None = None  # C4 designs: the stage that runs per RoI in the box head
    res5_channels: int = 0
    # fc6/fc7 of the pre-trained classifier, for heads initialised from it (Fast R-CNN §2.2)
    classifier_fc: dict | None = None


class SingleMap(nn.Module):
    """A trunk returning one map as ``{"0": x}``, the dict GeneralizedRCNN expects."""

    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict([("0", self.body(x))])


def norm_layer(norm: str):
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, 32)
    raise ConfigError(f"backbone.norm={norm} is not supported here; use frozen_bn, bn or gn")


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


def fetched_weights(weights: str | None):
    """``resolve_weights``, with a torchvision weights file downloaded into torch's cache
    first (or one clear error offline), so that the torchvision builder finds it there."""
    enum, file = resolve_weights(weights)
    if enum is not None:
        fetch_weights(enum, "backbone.weights")
    return enum, file


def load_trunk_file(trunk: nn.Module, path: Path, head_prefix: str = "fc.",
                    keep_prefix: str | None = None) -> None:
    """Load an ImageNet-style state dict, ignoring its classifier (``head_prefix``) except
    for layers under ``keep_prefix`` whose shapes match the trunk's."""
    from rcnn_cli.io import load_state_file

    state = load_state_file(path)
    own = trunk.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix) or (
        keep_prefix and k.startswith(keep_prefix) and k in own and own[k].shape == v.shape)}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    missing = [k for k in missing
               if not k.startswith(head_prefix) and "num_batches_tracked" not in k]
    if missing or unexpected:
        raise ConfigError(f"backbone.weights={path}: missing keys {missing[:5]}, "
                          f"unexpected keys {unexpected[:5]}")


def freeze_stages(trunk: nn.Module, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` of conv1, res2..res5."""
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"backbone.trainable_layers={trainable_layers}: must be in [0, 5]")
    trainable = RESNET_STAGES[::-1][:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for name, p in trunk.named_parameters():
        if not any(name.startswith(layer) for layer in trainable):
            p.requires_grad_(False)


def resnet_trunk(arch: str, weights: str | None, trainable_layers: int, norm: str,
                 sac: bool = False, sac_deformable: bool = False) -> nn.Module:
    enum, file = fetched_weights(weights)
    trunk = getattr(resnet, arch)(weights=enum, norm_layer=norm_layer(norm))
    if file is not None:
        load_trunk_file(trunk, file)
    if sac:
        from rcnn_cli.modeling.sac import convert_trunk

        convert_trunk(trunk, sac_deformable)
    freeze_stages(trunk, trainable_layers)
    return trunk


def resnet_fpn(name: str, weights: str | None, trainable_layers: int, norm: str,
               fpn_channels: int, sac: bool = False, sac_deformable: bool = False,
               rfp_steps: int = 1) -> BackboneSpec:
    """ResNet C2-C5 -> FPN P2-P5 + P6 (max-pool), as torchvision's detection backbones."""
    if sac_deformable and not sac:
        raise ConfigError("backbone.sac_deformable=true needs backbone.sac=true")
    if rfp_steps < 1 or (rfp_steps > 1 and fpn_channels % 4):
        raise ConfigError(f"backbone.rfp_steps={rfp_steps}: must be >= 1 (1 = plain FPN), and "
                          "the recursive pyramid needs backbone.fpn_channels divisible by 4")
    trunk = resnet_trunk(RESNET_FPN[name], weights, trainable_layers, norm, sac, sac_deformable)
    stage_channels = [trunk.inplanes // 8, trunk.inplanes // 4, trunk.inplanes // 2, trunk.inplanes]
    return_layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    module = BackboneWithFPN(
        trunk,
        return_layers=return_layers,
        in_channels_list=stage_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    if rfp_steps > 1:
        from torchvision.models._utils import IntermediateLayerGetter

        from rcnn_cli.modeling.rfp import RecursiveFeaturePyramid

        bodies = [IntermediateLayerGetter(resnet_trunk(RESNET_FPN[name], weights,
                                                       trainable_layers, norm, sac,
                                                       sac_deformable), return_layers)
                  for _ in range(rfp_steps - 1)]
        module = RecursiveFeaturePyramid(module.body, module.fpn, bodies, fpn_channels)
    names = ["0", "1", "2", "3", "pool"]
    return BackboneSpec(module, fpn_channels, names, names[:4])


def resnet_c4(name: str, weights: str | None, trainable_layers: int, norm: str,
              fpn_channels: int) -> BackboneSpec:
    """conv1..res4 as the shared trunk (stride 16); res5 is handed to the RoI head."""
    trunk = resnet_trunk(RESNET_C4[name], weights, trainable_layers, norm)
    body = nn.Sequential(OrderedDict(
        (k, getattr(trunk, k)) for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                         "layer3")))
    res4_channels = trunk.inplanes // 2
    return BackboneSpec(SingleMap(body, res4_channels), res4_channels, ["0"], ["0"],
                        res5=trunk.layer4, res5_channels=trunk.inplanes)


def vgg16_conv5(name: str, weights: str | None, trainable_layers: int, norm: str,
                fpn_channels: int) -> BackboneSpec:
    """VGG-16 up to conv5_3 + ReLU (the last max-pool dropped): 512 channels, stride 16.

    ``norm=none`` is the paper's VGG-16; ``norm=bn`` is torchvision's ``vgg16_bn``.
    ``trainable_layers`` counts the five conv blocks from the top (the paper trains conv3_1 up:
    ``trainable_layers=3``).
    """
    if norm not in ("none", "bn"):
        raise ConfigError(f"backbone={name} supports norm=none (VGG-16) or bn (VGG-16-BN), "
                          f"not norm={norm}")
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"backbone.trainable_layers={trainable_layers}: must be in [0, 5]")
    enum, file = fetched_weights(weights)
    net = (vgg16 if norm == "none" else vgg16_bn)(weights=enum)
    if file is not None:
        load_trunk_file(net, file, head_prefix="classifier.", keep_prefix="classifier.")
    fc = None
    if enum is not None or file is not None:
        fc = {f"{layer}.{k}": v for layer, i in (("fc6", 0), ("fc7", 3))
              for k, v in net.classifier[i].state_dict().items()}
    pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
    features = net.features[:pools[-1]]
    first_trainable = 0 if trainable_layers == 5 else pools[4 - trainable_layers] + 1
    for layer in list(features)[:first_trainable]:
        for p in layer.parameters():
            p.requires_grad_(False)
    return BackboneSpec(SingleMap(features, 512), 512, ["0"], ["0"], classifier_fc=fc)


def alexnet_conv5(name: str, weights: str | None, trainable_layers: int, norm: str,
                  fpn_channels: int) -> BackboneSpec:
    """AlexNet (torchvision's single-GPU variant) up to conv5 + ReLU, the last max-pool dropped:
    256 channels, stride 16. ``trainable_layers`` counts the five conv layers from the top."""
    if norm != "none":
        raise ConfigError(f"backbone={name} has no normalisation layers; use norm=none, "
                          f"not norm={norm}")
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"backbone.trainable_layers={trainable_layers}: must be in [0, 5]")
    enum, file = fetched_weights(weights)
    net = alexnet(weights=enum)
    if file is not None:
        load_trunk_file(net, file, head_prefix="classifier.")
    features = net.features[:-1]
    freeze_convs(features, trainable_layers)
    return BackboneSpec(SingleMap(features, 256), 256, ["0"], ["0"])


def freeze_convs(features: nn.Sequential, trainable_layers: int) -> None:
    """Freeze every conv layer (and what precedes it) below the top ``trainable_layers``."""
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    first = len(features) if trainable_layers == 0 else convs[len(convs) - trainable_layers]
    for layer in list(features)[:first]:
        for p in layer.parameters():
            p.requires_grad_(False)


def mobilenet_v3_fpn(name: str, weights: str | None, trainable_layers: int, norm: str,
                     fpn_channels: int) -> BackboneSpec:
    """MobileNetV3-Large, FPN on its last two stages (stride 16, 32) + max-pool, 256 channels:
    exactly the backbone of torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``."""
    if norm not in ("bn", "frozen_bn"):
        raise ConfigError(f"backbone={name} supports norm=bn or frozen_bn, not norm={norm}")
    if fpn_channels != 256:
        raise ConfigError(f"backbone={name} has 256 FPN channels (torchvision's layout); "
                          f"got backbone.fpn_channels={fpn_channels}")
    if not 0 <= trainable_layers <= 6:
        raise ConfigError(f"backbone.trainable_layers={trainable_layers}: must be in [0, 6] "
                          f"for {name}")
    enum, file = fetched_weights(weights)
    trunk = mobilenet_v3_large(weights=enum, norm_layer=norm_layer(norm))
    if file is not None:
        load_trunk_file(trunk, file, head_prefix="classifier.")
    module = _mobilenet_extractor(trunk, True, trainable_layers)
    return BackboneSpec(module, 256, ["0", "1", "pool"], ["0", "1"])


BACKBONES = {**{n: resnet_fpn for n in RESNET_FPN}, **{n: resnet_c4 for n in RESNET_C4},
             "vgg16": vgg16_conv5, "mobilenet_v3_fpn": mobilenet_v3_fpn, "alexnet": alexnet_conv5}


def build_backbone(name: str, weights: str | None, trainable_layers: int, norm: str,
                   fpn_channels: int, *, norm_eps: float = 1e-5, sac: bool = False,
                   sac_deformable: bool = False, rfp_steps: int = 1) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"backbone={name} is not supported; available: {', '.join(BACKBONES)}")
    if name in RESNET_FPN:
        spec = resnet_fpn(name, weights, trainable_layers, norm, fpn_channels, sac,
                          sac_deformable, rfp_steps)
    elif sac or sac_deformable or rfp_steps != 1:
        raise ConfigError(f"backbone.sac / backbone.rfp_steps (DetectoRS) need a ResNet-FPN "
                          f"backbone ({', '.join(RESNET_FPN)}), not backbone={name}")
    else:
        spec = BACKBONES[name](name, weights, trainable_layers, norm, fpn_channels)
    for part in (spec.module, spec.res5):
        if part is not None:
            set_norm_eps(part, norm_eps)
    return spec


def set_norm_eps(module: nn.Module, eps: float) -> None:
    """``backbone.norm_eps`` on every normalisation layer, as torchvision's ``overwrite_eps``
    does (eps 0.0) for its legacy COCO_V1 ResNet-50 FPN weights."""
    for m in module.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            m.eps = eps


def eval_frozen_norms(model: nn.Module) -> nn.Module:
    """Put BatchNorm layers without a trainable parameter (frozen stages, ``trainable_layers``
    below all) in eval mode after ``model.train()``: their running statistics stay frozen with
    their weights, as torchvision's FrozenBatchNorm2d keeps them."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()):
            m.eval()
    return model


def count_parameters(module: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable
