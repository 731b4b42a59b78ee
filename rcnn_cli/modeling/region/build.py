"""``model=rcnn`` / ``model=sppnet``: config -> explicit builder calls -> a ``RegionDetector``."""

from __future__ import annotations

import logging

from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from rcnn_cli.config.enums import enum_value
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.region.cnn import (
    PAPER_INPUT,
    RegionClassifierNet,
    check_warp_size,
    classifier_parts,
    conv5_trunk,
    freeze_blocks,
    spp_fc6_from_classifier,
)
from rcnn_cli.modeling.region.detector import RegionDetector
from rcnn_cli.modeling.region.rcnn import RCNN, WarpedRegionCNN
from rcnn_cli.modeling.region.spp import SpatialPyramidPool, spp_bins
from rcnn_cli.modeling.region.sppnet import SPPHeads, SPPNet

log = logging.getLogger("rcnn_cli")

REGION_MODELS = ("rcnn", "sppnet")
CONV5_STRIDE = 16  # AlexNet conv5 and VGG16 conv5_3


def check_region_config(cfg) -> None:
    """The combinations R-CNN and SPPNet support, each refusal naming the offending choice."""
    m, b = cfg.model, cfg.backbone
    source = cfg.proposals.name if cfg.get("proposals") is not None else "rpn"
    if source == "rpn":
        raise ConfigError(f"model={m.name} classifies external proposals (R-CNN §2.1: selective "
                          f"search); proposals=rpn is not supported: add "
                          f"proposals=selective_search or proposals=precomputed")
    if b.name not in PAPER_INPUT:
        kind = "an FPN backbone" if "fpn" in b.name else "not a classifier network"
        raise ConfigError(f"model={m.name} with backbone={b.name} ({kind}) is not supported: "
                          f"use backbone=alexnet or backbone=vgg16")
    if enum_value(cfg.schedule.name) == "alternating":
        raise ConfigError(f"model={m.name} trains in its own stages; schedule=alternating is "
                          "for model=faster")
    if m.name == "rcnn" and m.finetune_conv != 0:
        raise ConfigError(f"model.finetune_conv={m.finetune_conv} is SPPNet's switch; model=rcnn "
                          "fine-tunes backbone.trainable_layers conv layers")
    if m.name == "rcnn" and enum_value(m.classifier) != "svm":
        log.info("model=rcnn with model.classifier=%s (R-CNN Appendix B's fine-tuned softmax)",
                 enum_value(m.classifier))


def warp_size(cfg) -> int:
    size = cfg.model.warp_size if cfg.model.warp_size is not None else PAPER_INPUT[
        cfg.backbone.name]
    check_warp_size(cfg.backbone.name, size)
    return int(size)


def scorer_args(cfg, num_classes: int) -> dict:
    m, s = cfg.model, cfg.sampler.roi
    return dict(num_classes=num_classes + 1, classifier=enum_value(m.classifier),
                fg_iou_thresh=s.fg_iou_thresh, bg_iou_thresh=s.bg_iou_thresh,
                bg_iou_lo=s.bg_iou_lo, batch_size_per_image=s.batch_size_per_image,
                positive_fraction=s.positive_fraction, score_thresh=m.box_head.score_thresh,
                nms_thresh=m.box_head.nms_thresh,
                detections_per_img=m.box_head.detections_per_img)


def build_region_detector(cfg, num_classes: int) -> RegionDetector:
    """R-CNN or SPPNet for ``num_classes`` foreground classes (+1 background)."""
    from rcnn_cli.modeling.region.detector import RegionScorer

    check_region_config(cfg)
    m, b, d = cfg.model, cfg.backbone, cfg.dataset
    parts = classifier_parts(b.name, b.weights, enum_value(b.norm), m.box_head.representation_size)
    # Training images arrive resized by the input pipeline (as for the other models).
    transform = GeneralizedRCNNTransform(d.min_size, d.max_size, list(m.image_mean),
                                         list(m.image_std), _skip_resize=True)
    if m.region_batch < 1:
        raise ConfigError(f"model.region_batch={m.region_batch}: must be >= 1")
    if m.name == "rcnn":
        net = RegionClassifierNet(parts, b.trainable_layers, m.dropout)
        backbone = WarpedRegionCNN(net, warp_size(cfg), m.context, m.region_batch)
        pool5_dim = parts.fc6.in_features
        heads = RegionScorer(net.out_features, pool5_dim, **scorer_args(cfg, num_classes))
        return RCNN(backbone, heads, transform)
    levels = [int(v) for v in m.spp_levels]
    if not levels or min(levels) < 1:
        raise ConfigError(f"model.spp_levels={levels}: need positive bin counts")
    trunk = conv5_trunk(parts.features)
    freeze_blocks(trunk, m.finetune_conv, "model.finetune_conv")  # SPPNet §4: 0, fc layers only
    if b.weights is None and m.finetune_conv == 0:
        log.warning("model=sppnet with backbone.weights=null: its conv layers are frozen, so "
                    "they stay random (the paper starts from ImageNet weights; "
                    "scripts/pretrain_backbone.py makes a stand-in)")
    fc6 = nn.Linear(parts.channels * spp_bins(levels), parts.fc6.out_features)
    if not spp_fc6_from_classifier(fc6, parts.fc6, levels, parts.pool_size):
        log.info("model=sppnet: fc6 starts random (no pyramid level matches the classifier's "
                 "%dx%d pool5 grid)", parts.pool_size, parts.pool_size)
    spp = SpatialPyramidPool(tuple(levels), spatial_scale=1.0 / CONV5_STRIDE)
    heads = SPPHeads(spp, fc6, parts.fc7, m.dropout, **scorer_args(cfg, num_classes))
    return SPPNet(trunk, heads, transform)
