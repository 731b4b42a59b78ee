"""Schemas of the detector's parts: backbone, anchors, sampler, pooler, heads, model,
R-CNN/SPPNet region models and external proposals."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from rcnn_cli.config.enums import FcInit, Norm, RoIAlignKernel, WeightsClasses


@dataclass
class BackboneConf:
    """Feature extractor; ``weights`` is null, a torchvision weights name or a local file."""

    name: str = MISSING
    weights: str | None = None
    trainable_layers: int = 5
    norm: Norm = Norm.bn
    # BatchNorm epsilon; torchvision's legacy COCO_V1 R50-FPN weights were made with 0.0
    norm_eps: float = 1e-5
    fpn_channels: int = 256
    # DetectoRS (Qiao et al. 2021), FPN ResNets only: Switchable Atrous Convolution in res3-res5
    # (with weight standardisation of every trunk conv), its deformable variant, and the
    # Recursive Feature Pyramid's number of backbone passes (1 = plain FPN)
    sac: bool = False
    sac_deformable: bool = False
    rfp_steps: int = 1


@dataclass
class AnchorsConf:
    """Anchor boxes (Faster R-CNN §3.1.1): one list of sizes per feature map."""

    name: str = MISSING
    sizes: list[list[int]] = MISSING
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # anchors=auto (rcnn_cli.modeling.anchors.fit_anchors): feature maps to fit; the fitted
    # sizes and per-level ratios are written into sizes / level_aspect_ratios of the run config
    levels: int = 5
    level_aspect_ratios: list[list[float]] | None = None


@dataclass
class RPNSamplerConf:
    """RPN minibatch (Faster R-CNN §3.1.3)."""

    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    ignore_border: bool = False  # §3.1.3: anchors crossing the image border are ignored


@dataclass
class RoISamplerConf:
    """RoI minibatch (Fast R-CNN §2.3): background is IoU in [0, bg_iou_thresh)."""

    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    bg_iou_lo: float = 0.0  # background is IoU in [bg_iou_lo, bg_iou_thresh)


@dataclass
class SamplerConf:
    name: str = MISSING
    rpn: RPNSamplerConf = field(default_factory=RPNSamplerConf)
    roi: RoISamplerConf = field(default_factory=RoISamplerConf)


@dataclass
class PoolerConf:
    """RoI feature pooling; FPN level k = floor(k0 + log2(sqrt(wh) / canonical_scale))."""

    name: str = MISSING
    output_size: int = 7
    sampling_ratio: int = 2
    canonical_scale: int = 224
    canonical_level: int = 4
    aligned: bool = False  # RoIAlign half-pixel offset (roi_align only)
    kernel: RoIAlignKernel = RoIAlignKernel.auto  # modeling.poolers.roi_align_kernel


@dataclass
class RPNConf:
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    score_thresh: float = 0.0
    box_coder_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])


@dataclass
class BoxHeadConf:
    representation_size: int = 1024
    box_coder_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    # Truncated SVD (Fast R-CNN §3.1): rank of fc6/fc7 after `rcnn-eval compress.*`; null = full.
    fc6_rank: int | None = None
    fc7_rank: int | None = None


@dataclass
class FastRCNNConf:
    """Fast R-CNN head specifics (Fast R-CNN §2.3): dropout on fc6/fc7, smooth-L1 (beta)
    weighted by lambda. The minibatch rule (incl. background IoU band) is ``sampler``."""

    dropout: float = 0.5
    smooth_l1_beta: float = 1.0
    box_loss_weight: float = 1.0
    # §2.2: "the network's last fully connected layer and softmax are replaced" -- fc6/fc7
    # come from the pre-trained classifier (backbone=vgg16 with weights, 4096-d head).
    fc_init: FcInit = FcInit.random


@dataclass
class MaskHeadConf:
    """Mask R-CNN §3: RoIAlign 14x14 -> 4 convs -> deconv -> per-class 28x28 masks."""

    output_size: int = 14
    sampling_ratio: int = 2
    layers: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    dilation: int = 1
    dim_reduced: int = 256


@dataclass
class CascadeConf:
    """Cascade R-CNN §4: one entry per stage."""

    iou_thresholds: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7])
    stage_loss_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    box_coder_weights: list[list[float]] = field(default_factory=lambda: [
        [10.0, 10.0, 5.0, 5.0], [20.0, 20.0, 10.0, 10.0], [30.0, 30.0, 15.0, 15.0]])
    # Cascade Mask R-CNN: one mask head per stage (weighted as the box losses) instead of one
    # branch on the last stage
    stage_masks: bool = False


@dataclass
class HTCConf:
    """Hybrid Task Cascade (Chen et al. 2019, §3): each switch is one of the paper's steps."""

    interleaved: bool = True  # §3.1: mask head t trains on the boxes box head t refined
    mask_info_flow: bool = True  # §3.2: mask head t gets head t-1's features (1x1 conv)
    semantic: bool = True  # §3.3: fused semantic head, its features added to the RoI features
    semantic_loss_weight: float = 0.2  # beta in eq. 6
    semantic_fusion_level: int = 1  # the FPN level (index) the semantic head fuses at (P3)
    semantic_convs: int = 4
    # classes of the semantic maps (COCO-stuff: 183); null = thing classes + background
    semantic_classes: int | None = None


@dataclass
class ModelConf:
    """Two-stage detector. ``weights`` loads a whole detector (``rcnn_cli.modeling.weights``):
    a torchvision weights name, ``DEFAULT``, a state-dict file, an rcnn-cli checkpoint, run
    directory or export. ``weights_class_names`` (coco | voc | [names]) names a plain state
    dict's classes; ``class_map`` pairs {my class: its class}; ``weights_partial`` lists
    state-dict key prefixes allowed to differ (kept freshly initialised)."""

    name: str = MISSING
    weights: str | None = None
    weights_classes: WeightsClasses = WeightsClasses.map
    weights_class_names: Any = None
    class_map: dict[str, str] = field(default_factory=dict)
    weights_partial: list[str] = field(default_factory=list)
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    rpn: RPNConf = field(default_factory=RPNConf)
    box_head: BoxHeadConf = field(default_factory=BoxHeadConf)
    fast_rcnn: FastRCNNConf = field(default_factory=FastRCNNConf)
    mask_head: MaskHeadConf = field(default_factory=MaskHeadConf)
    cascade: CascadeConf = field(default_factory=CascadeConf)
    htc: HTCConf = field(default_factory=HTCConf)


class RegionClassifier(Enum):
    """R-CNN §2.3 / Appendix B: per-class linear SVMs on fc7, or the fine-tuned softmax."""

    svm = "svm"
    softmax = "softmax"


@dataclass
class SVMConf:
    """Per-class linear SVMs with hard-negative mining (R-CNN §2.3, Appendix B; defaults from
    the authors' code): positives = ground-truth boxes, negatives = IoU < ``neg_iou``.
    Features are scaled to a mean L2 norm of ``feature_norm`` first (R-CNN's code: 20)."""

    C: float = 0.001
    rounds: int = 3
    initial_negatives: int = 1000
    hard_threshold: float = -1.0
    easy_threshold: float = -1.2
    pos_weight: float = 2.0
    bias_scale: float = 10.0
    max_cache: int = 20000
    neg_iou: float = 0.3
    feature_norm: float = 20.0
    seed: int = 0


@dataclass
class BoxRidgeConf:
    """Class-specific ridge box regression on pool5 (R-CNN Appendix C): proposals with IoU >=
    ``min_iou``, regularisation ``lam`` (1000 in the paper), features at mean norm
    ``feature_norm``."""

    lam: float = 1000.0
    min_iou: float = 0.6
    feature_norm: float = 20.0


@dataclass
class RegionModelConf(ModelConf):
    """R-CNN (Girshick et al. 2014) and SPPNet (He et al. 2014): region-wise classification of
    external proposals. ``warp_size`` null = the paper's CNN input for the backbone (AlexNet
    227, VGG16 224); ``context`` px of the warped crop are context (R-CNN Appendix A, p = 16).
    ``region_batch``: regions per CNN forward pass (memory, not results). ``finetune_conv``
    (SPPNet only): conv layers, counted from the top, fine-tuned with fc6/fc7 (SPPNet §4: 0;
    Fast R-CNN §4.5 measures the gain of fine-tuning conv3 and up); R-CNN fine-tunes
    ``backbone.trainable_layers``."""

    classifier: RegionClassifier = RegionClassifier.svm
    warp_size: int | None = None
    context: int = 16
    spp_levels: list[int] = field(default_factory=lambda: [1, 2, 3, 6])
    finetune_conv: int = 0
    region_batch: int = 128
    dropout: float = 0.5
    svm: SVMConf = field(default_factory=SVMConf)
    box_reg: BoxRidgeConf = field(default_factory=BoxRidgeConf)


class SSMode(Enum):
    fast = "fast"
    quality = "quality"


@dataclass
class ProposalsConf:
    """Where a two-stage detector's proposals come from: ``rpn`` (learned, in the model),
    ``selective_search`` (OpenCV, Uijlings et al. 2013) or ``precomputed`` (``file``).
    Non-learned proposals are cached under ``cache_dir`` (see rcnn_cli.data.proposal_cache)."""

    name: str = MISSING
    mode: SSMode = SSMode.fast
    scale: float = 1.0
    max_proposals: int = 2000
    min_box_size: float = 2.0
    file: str | None = None
    cache_dir: str = "~/.cache/rcnn-cli/proposals"
    workers: int = 2


