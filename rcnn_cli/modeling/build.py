"""Detector factory: config groups -> explicit builder calls -> one ``GeneralizedRCNN``.

A detector is ``transform -> backbone -> proposal source (RPN) -> RoI heads``; torchvision's
``GeneralizedRCNN`` holds exactly these four parts, so its state-dict names are ours.
"""

from __future__ import annotations

import copy

from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from rcnn_cli.config.enums import enum_value
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.anchors import build_anchor_generator
from rcnn_cli.modeling.backbones import BackboneSpec, build_backbone, fetched_weights
from rcnn_cli.modeling.cascade import CascadeRoIHeads, build_cascade_stages
from rcnn_cli.modeling.fast_rcnn import FastRCNN, FastRCNNHead, build_fast_rcnn_roi_heads
from rcnn_cli.modeling.htc import SEMANTIC, FlowMaskStage, HTCRoIHeads
from rcnn_cli.modeling.masks import MaskStage, build_mask_branch
from rcnn_cli.modeling.poolers import build_pooler
from rcnn_cli.modeling.proposals import check_source
from rcnn_cli.modeling.roi_heads import build_box_head, build_box_roi_heads
from rcnn_cli.modeling.rpn import build_rpn
from rcnn_cli.modeling.semantic_head import FusedSemanticHead
from rcnn_cli.modeling.svd import shape_box_head
from rcnn_cli.modeling.weights import (
    check_architecture,
    load_pretrained,
    read_cached,
    without_pretrained,
)

MODELS = ("faster", "mask", "cascade", "cascade_mask", "htc", "detectors", "fast", "rcnn",
          "sppnet")
HTC_MODELS = ("htc", "detectors")  # DetectoRS = HTC heads on an RFP + SAC backbone
EXTERNAL_PROPOSALS = ("fast", "rcnn", "sppnet")  # models that classify given proposals


def uses_masks(model_name: str) -> bool:
    """Whether ``model=<name>`` has a mask branch (its data needs instance masks)."""
    return model_name in ("mask", "cascade_mask", *HTC_MODELS)


def build_detector(cfg, num_classes: int, classes: list[str] | None = None,
                   category_ids: list[int] | None = None) -> GeneralizedRCNN:
    """Build ``cfg.model`` for ``num_classes`` foreground classes (+1 background) and load
    ``model.weights`` (mapping its classes to ``classes`` when given, see
    ``rcnn_cli.modeling.weights``)."""
    model = build_architecture(cfg, num_classes)
    if cfg.model.weights:
        load_pretrained(model, cfg, classes, category_ids)
    return model


def build_architecture(cfg, num_classes: int) -> GeneralizedRCNN:
    """The detector of ``cfg`` with ``backbone.weights`` but without ``model.weights``."""
    m, b, a, s, d = cfg.model, cfg.backbone, cfg.anchors, cfg.sampler, cfg.dataset
    if m.name not in MODELS:
        raise ConfigError(f"model={m.name} is not supported; available: {', '.join(MODELS)}")
    check_proposal_source(m.name, cfg.get("proposals"))
    if m.name in ("rcnn", "sppnet"):
        from rcnn_cli.modeling.region.build import build_region_detector

        return build_region_detector(cfg, num_classes)
    if m.name == "detectors" and not (b.get("sac") and b.get("rfp_steps", 1) > 1):
        raise ConfigError("model=detectors is HTC on a DetectoRS backbone: add backbone=r50_fpn "
                          "backbone.sac=true backbone.sac_deformable=true backbone.rfp_steps=2 "
                          "(or use experiment=detectors_r50_fpn)")
    backbone = build_backbone(b.name, b.weights, b.trainable_layers, enum_value(b.norm),
                              b.fpn_channels, norm_eps=b.norm_eps, sac=b.get("sac", False),
                              sac_deformable=b.get("sac_deformable", False),
                              rfp_steps=b.get("rfp_steps", 1))
    if m.name == "fast":
        model = build_fast_rcnn(cfg, backbone, num_classes)
        shape_box_head(model, m.box_head.fc6_rank, m.box_head.fc7_rank)
        return model
    anchors = build_anchor_generator(a.name, a.sizes, a.aspect_ratios, backbone.feature_names,
                                     b.name, a.get("level_aspect_ratios"))
    rpn = build_rpn(
        anchors, backbone.out_channels,
        fg_iou_thresh=s.rpn.fg_iou_thresh, bg_iou_thresh=s.rpn.bg_iou_thresh,
        batch_size_per_image=s.rpn.batch_size_per_image,
        positive_fraction=s.rpn.positive_fraction, ignore_border=s.rpn.ignore_border,
        pre_nms_top_n_train=m.rpn.pre_nms_top_n_train, pre_nms_top_n_test=m.rpn.pre_nms_top_n_test,
        post_nms_top_n_train=m.rpn.post_nms_top_n_train,
        post_nms_top_n_test=m.rpn.post_nms_top_n_test,
        nms_thresh=m.rpn.nms_thresh, score_thresh=m.rpn.score_thresh,
        box_coder_weights=list(m.rpn.box_coder_weights),
    )
    roi_heads = build_roi_heads(cfg, backbone, num_classes + 1)
    # Training images arrive resized by the input pipeline (rcnn_cli.data.transforms), so the
    # model resizes only at inference (and maps boxes back to original image coordinates).
    transform = GeneralizedRCNNTransform(d.min_size, d.max_size, list(m.image_mean),
                                         list(m.image_std), _skip_resize=True)
    model = GeneralizedRCNN(backbone.module, rpn, roi_heads, transform)
    shape_box_head(model, m.box_head.fc6_rank, m.box_head.fc7_rank)
    return model


def check_weights_config(cfg) -> None:
    """Before any dataset work: fetch ``backbone.weights`` by name (or fail offline), build the
    model without pretrained weights and check ``model.weights`` fits it, so a wrong backbone
    or a missing file fails in seconds."""
    if cfg.backbone.get("weights"):
        fetched_weights(cfg.backbone.weights)
    if not cfg.model.get("weights"):
        return
    source = read_cached(cfg)
    check_architecture(build_architecture(without_pretrained(cfg), 1), source, cfg)


def check_proposal_source(model: str, proposals) -> None:
    """model=fast takes external proposals; the RPN models make their own."""
    name = proposals.name if proposals is not None else "rpn"
    check_source(name)
    if model in EXTERNAL_PROPOSALS and name == "rpn":
        raise ConfigError(f"model={model} needs external proposals: add "
                          "proposals=selective_search or proposals=precomputed "
                          "proposals.file=PATH")
    if model not in EXTERNAL_PROPOSALS and name != "rpn":
        raise ConfigError(f"model={model} makes its proposals with its RPN; proposals={name} "
                          f"is supported with model={', '.join(EXTERNAL_PROPOSALS)}")


def build_fast_rcnn(cfg, backbone: BackboneSpec, num_classes: int) -> FastRCNN:
    """Fast R-CNN (Girshick 2015): backbone + RoI pooling + fc6/fc7 head (with dropout), or
    the res5 head of a C4 backbone; no RPN. ``sampler=fast_rcnn`` is the paper's minibatch."""
    m, s, p, d, f = cfg.model, cfg.sampler, cfg.pooler, cfg.dataset, cfg.model.fast_rcnn
    pooler = build_pooler(p.name, backbone.pooled_names, p.output_size, p.sampling_ratio,
                          p.canonical_scale, p.canonical_level, p.aligned, enum_value(p.kernel))
    if backbone.res5 is not None:
        head, dim = build_box_head(backbone.out_channels, p.output_size,
                                   m.box_head.representation_size, backbone.res5,
                                   backbone.res5_channels)
    else:
        dim = m.box_head.representation_size
        head = FastRCNNHead(backbone.out_channels * p.output_size**2, dim, f.dropout)
        if enum_value(f.fc_init) == "backbone":
            init_fc_from_classifier(head, backbone, cfg.backbone.name)
    roi_heads = build_fast_rcnn_roi_heads(
        pooler, head, dim, num_classes + 1,
        box_coder_weights=list(m.box_head.box_coder_weights),
        score_thresh=m.box_head.score_thresh, nms_thresh=m.box_head.nms_thresh,
        detections_per_img=m.box_head.detections_per_img,
        fg_iou_thresh=s.roi.fg_iou_thresh, bg_iou_thresh=s.roi.bg_iou_thresh,
        bg_iou_lo=s.roi.bg_iou_lo, batch_size_per_image=s.roi.batch_size_per_image,
        positive_fraction=s.roi.positive_fraction, smooth_l1_beta=f.smooth_l1_beta,
        box_loss_weight=f.box_loss_weight)
    # As for the RPN models: training images arrive resized by the input pipeline.
    transform = GeneralizedRCNNTransform(d.min_size, d.max_size, list(m.image_mean),
                                         list(m.image_std), _skip_resize=True)
    return FastRCNN(backbone.module, roi_heads, transform)


def init_fc_from_classifier(head: FastRCNNHead, backbone: BackboneSpec, name: str) -> None:
    """fc6/fc7 from the pre-trained classifier (Fast R-CNN §2.2, VGG16: 7x7x512 -> 4096)."""
    fc = backbone.classifier_fc
    if fc is None:
        raise ConfigError(f"model.fast_rcnn.fc_init=backbone needs a classifier with fc6/fc7 "
                          f"and backbone.weights; backbone={name} has none here")
    own = head.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in fc.items()
           if own[k].shape != v.shape]
    if bad:
        raise ConfigError("model.fast_rcnn.fc_init=backbone: the classifier's fc layers do not "
                          f"fit the head ({'; '.join(bad)}); use model.box_head."
                          "representation_size=4096 and pooler.output_size=7")
    head.load_state_dict(fc)


def build_roi_heads(cfg, backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Box head (standard or cascade) + optional mask branch; ``num_classes`` counts background."""
    m, s, p = cfg.model, cfg.sampler, cfg.pooler
    pooler = build_pooler(p.name, backbone.pooled_names, p.output_size, p.sampling_ratio,
                          p.canonical_scale, p.canonical_level, p.aligned, enum_value(p.kernel))

    built = []

    def make_head():
        res5 = backbone.res5  # C4: the first head owns res5, cascade stages get copies
        if res5 is not None and built:
            res5 = copy.deepcopy(res5)
        built.append(res5)
        return build_box_head(backbone.out_channels, p.output_size,
                              m.box_head.representation_size, res5, backbone.res5_channels)

    mask_parts = None
    if uses_masks(m.name):
        mask_parts = make_mask_branch(cfg, backbone, num_classes)
    bh = m.box_head
    if m.name.startswith("cascade") or m.name in HTC_MODELS:
        c, htc = m.cascade, m.name in HTC_MODELS
        n = len(c.iou_thresholds)
        stages = build_cascade_stages(make_head, num_classes, n)
        mask_stages = None
        if mask_parts is not None and (c.stage_masks or htc):
            flow = htc and m.htc.mask_info_flow
            mask_stages = (mask_parts[0], [
                mask_stage(cfg, backbone, num_classes, mask_parts[1:] if t == 0 else None,
                           flow and t > 0) for t in range(n)])
            mask_parts = None
        kwargs = dict(
            iou_thresholds=list(c.iou_thresholds),
            stage_loss_weights=list(c.stage_loss_weights),
            box_coder_weights=[list(w) for w in c.box_coder_weights], bg_iou_lo=s.roi.bg_iou_lo,
            batch_size_per_image=s.roi.batch_size_per_image,
            positive_fraction=s.roi.positive_fraction, score_thresh=bh.score_thresh,
            nms_thresh=bh.nms_thresh, detections_per_img=bh.detections_per_img,
            mask_parts=mask_parts, mask_stages=mask_stages)
        if not htc:
            return CascadeRoIHeads(pooler, stages, **kwargs)
        return HTCRoIHeads(pooler, stages, **kwargs, interleaved=m.htc.interleaved,
                           mask_info_flow=m.htc.mask_info_flow,
                           **semantic_parts(cfg, backbone, num_classes))
    head, dim = make_head()
    heads = build_box_roi_heads(
        pooler, head, dim, num_classes,
        box_coder_weights=list(bh.box_coder_weights),
        score_thresh=bh.score_thresh, nms_thresh=bh.nms_thresh,
        detections_per_img=bh.detections_per_img,
        fg_iou_thresh=s.roi.fg_iou_thresh, bg_iou_thresh=s.roi.bg_iou_thresh,
        bg_iou_lo=s.roi.bg_iou_lo, batch_size_per_image=s.roi.batch_size_per_image,
        positive_fraction=s.roi.positive_fraction,
    )
    if mask_parts is not None:
        heads.mask_roi_pool, heads.mask_head, heads.mask_predictor = mask_parts
    return heads


def make_mask_branch(cfg, backbone: BackboneSpec, num_classes: int):
    """(pooler, head, predictor) of ``model.mask_head``; ``num_classes`` counts background."""
    mh, p = cfg.model.mask_head, cfg.pooler
    return build_mask_branch(
        backbone.pooled_names, backbone.out_channels, num_classes,
        output_size=mh.output_size, sampling_ratio=mh.sampling_ratio, layers=list(mh.layers),
        dilation=mh.dilation, dim_reduced=mh.dim_reduced,
        canonical_scale=p.canonical_scale, canonical_level=p.canonical_level,
        kernel=enum_value(p.kernel))


def mask_stage(cfg, backbone: BackboneSpec, num_classes: int, parts: tuple | None,
               flow: bool) -> MaskStage:
    """One stage's mask head + predictor (``parts``, or new ones); ``flow``: with HTC's 1x1
    conv from the previous head."""
    head, predictor = parts or make_mask_branch(cfg, backbone, num_classes)[1:]
    if flow:
        return FlowMaskStage(head, predictor, backbone.out_channels,
                             cfg.model.mask_head.layers[-1])
    return MaskStage(head, predictor)


def semantic_parts(cfg, backbone: BackboneSpec, num_classes: int) -> dict:
    """HTC's semantic head and its box/mask RoI poolers, when ``model.htc.semantic``."""
    h, p = cfg.model.htc, cfg.pooler
    if not h.semantic:
        return {}
    if h.semantic_classes is not None and h.semantic_classes < 2:
        raise ConfigError("model.htc.semantic_classes: at least 2 (or null)")
    head = FusedSemanticHead(backbone.feature_names, backbone.out_channels,
                             h.semantic_classes or num_classes,
                             fusion_level=h.semantic_fusion_level, num_convs=h.semantic_convs)
    pools = tuple(build_pooler("roi_align", [SEMANTIC], size, p.sampling_ratio,
                               p.canonical_scale, p.canonical_level, kernel=enum_value(p.kernel))
                  for size in (p.output_size, cfg.model.mask_head.output_size))
    return {"semantic_head": head, "semantic_pools": pools,
            "semantic_loss_weight": h.semantic_loss_weight}

