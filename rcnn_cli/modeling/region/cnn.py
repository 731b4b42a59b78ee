"""The ImageNet-style classifier networks R-CNN and SPPNet start from (``backbone=alexnet|vgg16``).

R-CNN (Girshick et al. 2014, §2.1) runs the whole classifier on each warped region: conv1-5,
pool5, fc6, fc7 (4096-d). SPPNet (He et al. 2014, §2.3) runs conv5 once per image and feeds
fc6/fc7 with spatial-pyramid-pooled windows. Both take ``fc6`` and ``fc7`` from the classifier
(its last, 1000-way layer is replaced by the detector's own); weights come from
``backbone.weights``: a torchvision weights name, a state-dict file in torchvision's layout
(``scripts/pretrain_backbone.py`` writes one) or null (random).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import alexnet, vgg16, vgg16_bn

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.backbones import fetched_weights, freeze_convs

# The CNN input each paper warps to (R-CNN §2.1: 227 for AlexNet; VGG16: 224).
PAPER_INPUT = {"alexnet": 227, "vgg16": 224}
# Smallest input the conv trunk (through its last max-pool) accepts.
MIN_INPUT = {"alexnet": 63, "vgg16": 32}


@dataclass
class ClassifierParts:
    """A classifier split where the detectors need it: conv trunk to pool5, fc6, fc7."""

    features: nn.Sequential  # conv1 .. pool5 (the last max-pool included)
    pool_size: int  # the adaptive average pool the classifier applies after pool5
    channels: int  # conv5 channels
    fc6: nn.Linear
    fc7: nn.Linear


def classifier_parts(name: str, weights: str | None, norm: str, width: int) -> ClassifierParts:
    """torchvision ``alexnet`` / ``vgg16`` (``vgg16_bn`` for norm=bn) with ``weights``; fc6/fc7
    are ``width`` wide (4096 as pretrained; another width only without weights)."""
    if name not in PAPER_INPUT:
        raise ConfigError(f"backbone={name}: R-CNN and SPPNet need a classifier network: "
                          f"backbone={' or backbone='.join(PAPER_INPUT)}")
    if name == "alexnet" and norm != "none":
        raise ConfigError(f"backbone=alexnet has no normalisation layers; use norm=none, "
                          f"not norm={norm}")
    if name == "vgg16" and norm not in ("none", "bn"):
        raise ConfigError(f"backbone=vgg16 supports norm=none or bn, not norm={norm}")
    enum, file = fetched_weights(weights)
    if name == "alexnet":
        net, fc_idx, pool = alexnet(weights=enum), (1, 4), 6
    else:
        net, fc_idx, pool = (vgg16 if norm == "none" else vgg16_bn)(weights=enum), (0, 3), 7
    if file is not None:
        load_classifier_file(net, file)
    fc6, fc7 = net.classifier[fc_idx[0]], net.classifier[fc_idx[1]]
    if width != fc7.out_features:
        if weights is not None:
            raise ConfigError(f"model.box_head.representation_size={width}: the weights "
                              f"{weights} have {fc7.out_features}-d fc6/fc7")
        fc6, fc7 = nn.Linear(fc6.in_features, width), nn.Linear(width, width)
    channels = fc6.in_features // (pool * pool)
    return ClassifierParts(net.features, pool, channels, fc6, fc7)


def load_classifier_file(net: nn.Module, path) -> None:
    """A torchvision-layout state dict; its last classifier layer (the class scores) is left
    out, since the detector has its own."""
    from rcnn_cli.io import load_state_file

    last = [k for k, m in net.classifier.named_children() if isinstance(m, nn.Linear)][-1]
    skip = f"classifier.{last}."
    state = {k: v for k, v in load_state_file(path).items() if not k.startswith(skip)}
    own = net.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise ConfigError(f"backbone.weights={path}: shape mismatch {bad[:3]}")
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(skip) and "num_batches_tracked" not in k]
    if missing or unexpected:
        raise ConfigError(f"backbone.weights={path}: missing keys {missing[:5]}, unexpected "
                          f"keys {unexpected[:5]} (expected torchvision's layout)")


def check_warp_size(name: str, warp_size: int) -> None:
    if warp_size < MIN_INPUT[name]:
        raise ConfigError(f"model.warp_size={warp_size}: backbone={name} needs an input of at "
                          f"least {MIN_INPUT[name]} px")


class RegionClassifierNet(nn.Module):
    """conv1-5 + pool5 -> fc6 -> fc7 on a batch of warped regions: ``(pool5, fc7)`` features,
    pool5 flattened as the classifier does (R-CNN Appendix C regresses boxes from it)."""

    def __init__(self, parts: ClassifierParts, trainable_layers: int, dropout: float):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout={dropout}: must be in [0, 1)")
        self.features, self.fc6, self.fc7 = parts.features, parts.fc6, parts.fc7
        self.pool_size, self.dropout = parts.pool_size, nn.Dropout(dropout)
        self.out_features = parts.fc7.out_features
        freeze_blocks(self.features, trainable_layers, "backbone.trainable_layers")

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        pool5 = F.adaptive_avg_pool2d(self.features(crops), self.pool_size).flatten(1)
        return pool5, fc_features(pool5, self.fc6, self.fc7, self.dropout)


def fc_features(x: Tensor, fc6: nn.Linear, fc7: nn.Linear, dropout: nn.Dropout) -> Tensor:
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU (-> dropout in training): the fc7 feature."""
    return dropout(F.relu(fc7(dropout(F.relu(fc6(x))))))


def freeze_blocks(features: nn.Sequential, trainable_layers: int, key: str) -> None:
    """``trainable_layers`` (config key ``key``) counts blocks from the top: AlexNet's five
    convs, VGG16's five conv blocks (what lies below the first trainable one is frozen)."""
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"{key}={trainable_layers}: must be in [0, 5]")
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    if len(convs) == 13:  # VGG16: five blocks, each closed by a max-pool (pool5 may be cut off)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        starts = [0] + [p + 1 for p in pools[:4]]
        first = len(features) if trainable_layers == 0 else starts[5 - trainable_layers]
        for layer in list(features)[:first]:
            for p in layer.parameters():
                p.requires_grad_(False)
        return
    freeze_convs(features, trainable_layers)


def conv5_trunk(features: nn.Sequential) -> nn.Sequential:
    """conv1 .. conv5 + ReLU without the last max-pool (stride 16): the map SPPNet pools."""
    if not isinstance(features[-1], nn.MaxPool2d):
        raise ConfigError("expected a trunk ending in its pool5 max-pool")
    return features[:-1]


@torch.no_grad()
def spp_fc6_from_classifier(fc6_spp: nn.Linear, fc6: nn.Linear, levels: list[int],
                            pool_size: int) -> bool:
    """Start SPPNet's fc6 from the classifier's: the classifier's pool5 grid is the pyramid
    level with ``pool_size`` x ``pool_size`` bins, whose block comes last in the SPP vector
    (level-major, then channel, then bin); the other levels' weights start at zero. Returns
    False (fc6 left random) when no level matches the classifier's grid."""
    if levels[-1] != pool_size or fc6.out_features != fc6_spp.out_features:
        return False
    block = fc6.in_features
    fc6_spp.weight.zero_()
    fc6_spp.weight[:, -block:] = fc6.weight
    fc6_spp.bias.copy_(fc6.bias)
    return True
