"""Typed configuration schemas, registered in Hydra's ConfigStore.

Every YAML file of a config group starts from one of these dataclasses
(``defaults: [<group>_schema, _self_]``), so a misspelt key or a wrong type in a
file *or* on the command line fails at start-up naming the full key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Norm(Enum):
    frozen_bn = "frozen_bn"
    bn = "bn"
    gn = "gn"
    none = "none"  # no normalisation layers (the original VGG16)


class Amp(Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class RoIAlignKernel(Enum):
    auto = "auto"
    torchvision = "torchvision"
    vectorised = "vectorised"


class FcInit(Enum):
    """Where Fast R-CNN's fc6/fc7 start: random, or the pre-trained classifier's fc6/fc7."""

    random = "random"
    backbone = "backbone"


class Optimizer(Enum):
    sgd = "sgd"
    adamw = "adamw"


class Decay(Enum):
    step = "step"
    cosine = "cosine"


class EvalMetric(Enum):
    """COCO's 12 stats, or Pascal VOC AP at IoU 0.5 (VOC07 11-point or VOC2010+ area)."""

    coco = "coco"
    voc07 = "voc07"
    voc = "voc"


class Validation(Enum):
    strict = "strict"
    lenient = "lenient"


class DistBackend(Enum):
    auto = "auto"
    nccl = "nccl"
    gloo = "gloo"


class MetricMode(Enum):
    max = "max"
    min = "min"


# --- model parts ----------------------------------------------------------------------


@dataclass
class BackboneConf:
    """Feature extractor; ``weights`` is null, a torchvision weights name or a local file."""

    name: str = MISSING
    weights: str | None = None
    trainable_layers: int = 5
    norm: Norm = Norm.bn
    fpn_channels: int = 256


@dataclass
class AnchorsConf:
    """Anchor boxes (Faster R-CNN §3.1.1): one list of sizes per feature map."""

    name: str = MISSING
    sizes: list[list[int]] = MISSING
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])


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


@dataclass
class ModelConf:
    """Two-stage detector; ``weights`` loads a whole detector (torchvision name or file)."""

    name: str = MISSING
    weights: str | None = None
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    rpn: RPNConf = field(default_factory=RPNConf)
    box_head: BoxHeadConf = field(default_factory=BoxHeadConf)
    fast_rcnn: FastRCNNConf = field(default_factory=FastRCNNConf)
    mask_head: MaskHeadConf = field(default_factory=MaskHeadConf)
    cascade: CascadeConf = field(default_factory=CascadeConf)


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


# --- data -----------------------------------------------------------------------------


@dataclass
class DatasetConf:
    """Fields every dataset has: input scale (shorter side, capped longer side) and loading."""

    name: str = MISSING
    min_size: int = 800
    max_size: int = 1333
    flip_prob: float = 0.5
    num_workers: int = 0
    # multi-scale training: shorter sides drawn per image (empty: min_size only)
    train_min_sizes: list[int] = field(default_factory=list)
    color_jitter: float = 0.0
    aspect_grouping: bool = True


@dataclass
class FileDatasetConf(DatasetConf):
    """Datasets read from files: validation policy (rcnn_cli.data.validate) and index cache."""

    validation: Validation = Validation.lenient
    filter_empty: bool = True
    check_files: bool = True
    max_pixels: int = 100_000_000
    cache: bool = True
    cache_dir: str | None = None


@dataclass
class CocoConf(FileDatasetConf):
    """A COCO-format JSON file and an image folder per split (``rcnn_cli.data.coco``)."""

    name: str = "coco"
    train_json: str = MISSING
    train_images: str = MISSING
    val_json: str = MISSING
    val_images: str = MISSING
    test_json: str | None = None
    test_images: str | None = None
    with_masks: bool = False


@dataclass
class VocConf(FileDatasetConf):
    """The Pascal VOC layout under ``root`` (``rcnn_cli.data.voc``)."""

    name: str = "voc"
    root: str = MISSING
    train_split: str = "trainval"
    val_split: str = "test"
    test_split: str | None = None
    classes: list[str] | None = None
    use_difficult: bool = False


@dataclass
class ShapesConf(DatasetConf):
    """The embedded synthetic dataset (``rcnn_cli.data.shapes``)."""

    name: str = "shapes"
    train_size: int = 1000
    val_size: int = 200
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 6
    min_scale: float = 0.1
    max_scale: float = 0.5
    max_aspect: float = 2.0
    seed: int = 0
    with_masks: bool = False
    min_size: int = II(".image_size")
    max_size: int = II(".image_size")


# --- training -------------------------------------------------------------------------


@dataclass
class ScheduleConf:
    """Optimisation: SGD (momentum) or AdamW (``momentum`` is its beta1), warm-up, step/cosine
    decay; ``decay_steps`` are fractions of max_iter."""

    name: str = MISSING
    max_iter: int = 1000
    batch_size: int = 4
    optimizer: Optimizer = Optimizer.sgd
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    decay: Decay = Decay.step
    decay_steps: list[float] = field(default_factory=lambda: [0.67, 0.89])
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    amp: Amp = Amp.none
    fused_optimizer: bool = False  # torch's fused AdamW/SGD step: faster, not bit-identical
    eval_period: int = 0
    checkpoint_period: int = 500
    # Scaling out (rcnn_cli.engine.distributed): batch_size is per process and per micro-batch;
    # one optimizer step sees batch_size * accum_steps * world_size images.
    accum_steps: int = 1
    scale_lr: bool = False  # lr *= accum_steps * world_size (linear scaling rule), logged
    keep_checkpoints: int = 3


class HeadInit(Enum):
    random = "random"  # a freshly initialised layer, as the original code does in stage 2
    carry = "carry"  # the stage-1 layer's trained weights


@dataclass
class StageConf:
    """One training stage of the 4-step schedule; null ``max_iter``/``lr`` take the paper's share
    of ``schedule.max_iter`` (80k:40k:80k:40k) and ``schedule.lr``."""

    max_iter: int | None = None
    lr: float | None = None
    decay_steps: list[float] = field(default_factory=lambda: [0.75])  # 60k of 80k, 30k of 40k


@dataclass
class StageProposalsConf:
    """RPN proposals between stages (Faster R-CNN §3.2): test mode, NMS, top-N after NMS.

    ``min_size`` is in pixels at the paper's 600 px input scale and is scaled with
    ``dataset.min_size``; null ``pre_nms_top_n`` means no cut before NMS."""

    pre_nms_top_n: int | None = None
    post_nms_top_n: int = 2000
    nms_thresh: float = 0.7
    min_size: float = 16.0
    batch_size: int = 8


@dataclass
class StagesConf:
    rpn1: StageConf = field(default_factory=StageConf)
    fast1: StageConf = field(default_factory=StageConf)
    rpn2: StageConf = field(default_factory=StageConf)
    fast2: StageConf = field(default_factory=StageConf)


@dataclass
class AlternatingScheduleConf(ScheduleConf):
    """4-step alternating training (Faster R-CNN §3.2, ``rcnn_cli.engine.alternating``);
    ``max_iter`` is the total over the four training stages."""

    name: str = "alternating"
    stages: StagesConf = field(default_factory=StagesConf)
    proposals: StageProposalsConf = field(default_factory=StageProposalsConf)
    rpn2_head_init: HeadInit = HeadInit.random
    fast2_predictor_init: HeadInit = HeadInit.random


@dataclass
class LogConf:
    """``images_every``: iterations between TensorBoard pictures of ``images_count`` fixed
    validation images (ground truth and predictions above ``images_score_thresh``); 0 = off."""

    period: int = 20
    tensorboard: bool = True
    images_every: int = 250
    images_count: int = 4
    images_score_thresh: float = 0.5


@dataclass
class EvalConf:
    """``backend``: faster-coco-eval (C++) or pycocotools; same numbers, see docs/benchmarks.md."""

    batch_size: int = 8
    metric: EvalMetric = EvalMetric.coco
    backend: str = "faster-coco-eval"
    proposals: bool = False
    proposal_counts: list[int] = field(default_factory=lambda: [100, 300, 1000])


@dataclass
class CompressConf:
    """Truncated SVD of the box head at evaluation (Fast R-CNN §3.1); null = leave the layer."""

    fc6: int | None = None
    fc7: int | None = None
    save: bool = False


@dataclass
class DistConf:
    """DistributedDataParallel settings; used only when started by torchrun or SLURM."""

    backend: DistBackend = DistBackend.auto  # auto: nccl on CUDA, gloo on CPU
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only; backbone.norm=bn)
    find_unused_parameters: bool = False
    timeout_s: int = 1800


@dataclass
class FaultsConf:
    """Training fault policy (``rcnn_cli.engine.faults``, docs/reliability.md)."""

    max_nonfinite_steps: int = 10  # consecutive skipped steps (non-finite grads) before an error
    dataloader_timeout: float = 600.0  # seconds to wait for a worker batch (num_workers > 0)


@dataclass
class TrainConf:
    model: Any = MISSING
    backbone: Any = MISSING
    anchors: Any = MISSING
    sampler: Any = MISSING
    pooler: Any = MISSING
    schedule: Any = MISSING
    dataset: Any = MISSING
    proposals: Any = None
    log: LogConf = field(default_factory=LogConf)
    eval: EvalConf = field(default_factory=EvalConf)
    faults: FaultsConf = field(default_factory=FaultsConf)
    seed: int = 0
    device: Device = Device.auto
    threads: int = 0
    resume: str | None = None
    dist: DistConf = field(default_factory=DistConf)
    # what sweeps sort by and the task function returns; null: the headline AP (bbox/AP for
    # eval.metric=coco, voc/mAP or voc07/mAP for VOC)
    optimized_metric: str | None = None
    optimized_mode: MetricMode = MetricMode.max
    ckpt_trust: bool = False  # load pickles that need arbitrary globals (runs their code)


@dataclass
class EvalMainConf:
    ckpt: str = MISSING
    dataset: Any = None
    eval: EvalConf = field(default_factory=EvalConf)
    compress: CompressConf = field(default_factory=CompressConf)
    device: Device = Device.auto
    threads: int = 0
    ckpt_trust: bool = False  # load pickles that need arbitrary globals (runs their code)


@dataclass
class InferenceSpeedConf:
    """rcnn-predict's speed switches (``rcnn_cli.engine.fast_inference``; docs/benchmarks.md)."""

    fold_bn: bool = True
    channels_last: bool = True
    compile: bool = False  # torch.compile of the backbone: one compilation per input size


@dataclass
class PredictMainConf:
    """``input``: an image, a folder, a glob, or ``dataset`` (the ``split`` of ``dataset``, by
    default the checkpoint's dataset config). ``ann_file``: a COCO annotation file whose image
    ids the results use (matched by file name). ``limit``: first N images (0 = all)."""

    ckpt: str = MISSING
    input: str = MISSING
    output: str | None = None
    score_thresh: float = 0.5
    batch_size: int = 4
    split: str = "val"
    limit: int = 0
    ann_file: str | None = None
    dataset: Any = None
    device: Device = Device.auto
    threads: int = 0
    ckpt_trust: bool = False  # load pickles that need arbitrary globals (runs their code)
    speed: InferenceSpeedConf = field(default_factory=InferenceSpeedConf)


@dataclass
class DataMainConf:
    """``rcnn-data check|browse|convert``: dataset doctor (rcnn_cli.data_cli)."""

    command: str = MISSING
    dataset: Any = MISSING
    split: str = "train"
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    n: int = 16
    seed: int = 0
    out: str | None = None
    decode: bool = False


GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConf,
    "backbone": BackboneConf,
    "anchors": AnchorsConf,
    "sampler": SamplerConf,
    "pooler": PoolerConf,
    "schedule": ScheduleConf,
    "dataset": DatasetConf,
    "proposals": ProposalsConf,
}


def register_configs() -> None:
    """Store the schemas; group YAMLs refer to them as ``<group>_schema``."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConf)
    cs.store(name="eval_schema", node=EvalMainConf)
    cs.store(name="predict_schema", node=PredictMainConf)
    for group, node in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)
    cs.store(group="dataset", name="shapes_schema", node=ShapesConf)
    cs.store(group="dataset", name="coco_schema", node=CocoConf)
    cs.store(group="dataset", name="voc_schema", node=VocConf)
    cs.store(name="data_schema", node=DataMainConf)
    cs.store(group="schedule", name="alternating_schema", node=AlternatingScheduleConf)
    cs.store(group="model", name="region_schema", node=RegionModelConf)


register_configs()


# --- validation -----------------------------------------------------------------------


def validate(cfg) -> None:
    """Fail before any work: unknown keys under typed nodes, then every missing ``???``."""
    from dataclasses import fields, is_dataclass

    from omegaconf import DictConfig, OmegaConf

    from rcnn_cli.errors import ConfigError

    def unknown(node, prefix: str) -> list[str]:
        bad = []
        if not isinstance(node, DictConfig):
            return bad
        schema = OmegaConf.get_type(node)
        if schema is not None and is_dataclass(schema):
            allowed = {f.name for f in fields(schema)}
            bad += [f"{prefix}{k}" for k in node.keys() if k not in allowed]
        for key in node.keys():
            if key == "hydra":
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                bad += unknown(child, f"{prefix}{key}.")
        return bad

    bad = unknown(cfg, "")
    if bad:
        raise ConfigError(f"unknown config key(s): {', '.join(sorted(bad))}")
    _check_ranges(cfg)
    masked = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    missing = sorted(OmegaConf.missing_keys(masked))
    if missing:
        raise ConfigError(
            f"missing value(s) for: {', '.join(missing)} (set them on the command line, e.g. "
            f"{missing[0]}=...)"
        )


# (key, lowest allowed value): checked when the key is present and set.
POSITIVE_KEYS = [("schedule.max_iter", 1), ("schedule.batch_size", 1),
                 ("schedule.checkpoint_period", 1), ("schedule.eval_period", 0),
                 ("schedule.warmup_iters", 0), ("log.period", 1), ("eval.batch_size", 1),
                 ("dataset.num_workers", 0), ("schedule.keep_checkpoints", 1),
                 ("faults.max_nonfinite_steps", 1), ("log.images_every", 0),
                 ("log.images_count", 1), ("limit", 0), ("batch_size", 1),
                 ("dataset.max_pixels", 0), ("n", 1), ("schedule.accum_steps", 1),
                 ("dist.timeout_s", 1)]

# (key, allowed values): checked when the key is present.
CHOICE_KEYS = [("eval.backend", ("faster-coco-eval", "pycocotools"))]


def _check_ranges(cfg) -> None:
    from omegaconf import OmegaConf

    from rcnn_cli.errors import ConfigError

    for key, low in POSITIVE_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, int) and value < low:
            raise ConfigError(f"{key}={value}: must be >= {low}")
    for key, allowed in CHOICE_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}={value}: must be one of {', '.join(allowed)}")
    lr = OmegaConf.select(cfg, "schedule.lr", default=None, throw_on_missing=False)
    if isinstance(lr, float) and lr <= 0:
        raise ConfigError(f"schedule.lr={lr}: must be > 0")


DATASET_SCHEMAS: dict[str, type] = {"shapes": ShapesConf, "coco": CocoConf, "voc": VocConf}
SCHEDULE_SCHEMAS: dict[str, type] = {"alternating": AlternatingScheduleConf}
MODEL_SCHEMAS: dict[str, type] = {"rcnn": RegionModelConf, "sppnet": RegionModelConf}


def typed_train_config(stored: dict, source: str = "checkpoint"):
    """Re-apply the schemas to a config stored in a checkpoint (enums, types, unknown keys)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rcnn_cli.errors import ConfigError

    try:
        plain = {k: v for k, v in stored.items() if k not in GROUP_SCHEMAS}
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConf), plain)
        for key, value in stored.items():
            if key in GROUP_SCHEMAS:
                schema = GROUP_SCHEMAS[key]
                if key == "dataset":
                    schema = DATASET_SCHEMAS.get(value.get("name"), DatasetConf)
                if key == "schedule":
                    schema = SCHEDULE_SCHEMAS.get(value.get("name"), ScheduleConf)
                if key == "model":
                    schema = MODEL_SCHEMAS.get(value.get("name"), ModelConf)
                cfg[key] = OmegaConf.merge(OmegaConf.structured(schema), value)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: stored config does not match the schema: {e}") from None
    return cfg
