"""Schemas of whole runs: schedule (joint and 4-step), logging, evaluation, faults, scale-out,
and the top-level configs of rcnn-train / rcnn-eval / rcnn-predict / rcnn-data."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from rcnn_cli.config.data import DatasetConf
from rcnn_cli.config.enums import Amp, Decay, Device, DistBackend, EvalMetric, MetricMode, Optimizer
from rcnn_cli.config.model import (
    AnchorsConf,
    BackboneConf,
    ModelConf,
    PoolerConf,
    ProposalsConf,
    SamplerConf,
)


@dataclass
class EmaConf:
    """Weight EMA (``rcnn_cli.engine.ema``): ``decay`` 0 = off; the decay ramps up over about
    ``warmup`` optimizer steps."""

    decay: float = 0.0
    warmup: float = 2000.0


@dataclass
class EarlyStopConf:
    """Early stopping on ``optimized_metric`` (``rcnn_cli.engine.early_stop``): stop after
    ``patience`` evaluations without an improvement larger than ``min_delta``; 0 = off."""

    patience: int = 0
    min_delta: float = 0.0


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
    # lr of the deformable convs' offset layers relative to lr (Dai et al. 2017 §2.3's beta):
    # under AdamW every zero-initialised offset weight moves by ~lr a step, and at 1.0
    # DetectoRS' deformable SAC stalled on shapes (docs/htc_detectors.md)
    offset_lr_mult: float = 0.1
    amp: Amp = Amp.none
    fused_optimizer: bool = False  # torch's fused AdamW/SGD step: faster, not bit-identical
    # backbone and RPN head train on NHWC maps (runtime.convs_channels_last): faster, not
    # bit-identical
    channels_last: bool = False
    eval_period: int = 0
    checkpoint_period: int = 500
    # Scaling out (rcnn_cli.engine.distributed): batch_size is per process and per micro-batch;
    # one optimizer step sees batch_size * accum_steps * world_size images.
    accum_steps: int = 1
    scale_lr: bool = False  # lr *= accum_steps * world_size (linear scaling rule), logged
    keep_checkpoints: int = 3
    ema: EmaConf = field(default_factory=EmaConf)
    early_stop: EarlyStopConf = field(default_factory=EarlyStopConf)


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
    """4-step alternating training (Faster R-CNN §3.2, ``rcnn_cli.engine.stages.alternating``);
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


# The choices of eval.tta / eval.tta_merge (rcnn_cli.evaluation.tta), here so that checking a
# config does not import torch.
TTA_MODES = ("none", "flip", "flips", "scales")
TTA_MERGES = ("nms", "wbf")


@dataclass
class EvalConf:
    """``backend``: faster-coco-eval (C++) or pycocotools; same numbers, see docs/benchmarks.md."""

    batch_size: int = 8
    metric: EvalMetric = EvalMetric.coco
    backend: str = "faster-coco-eval"
    proposals: bool = False
    proposal_counts: list[int] = field(default_factory=lambda: [100, 300, 1000])
    # rcnn-train: the training losses on the validation set at every evaluation (val/*)
    val_loss: bool = True
    confusion_score: float = 0.5  # detections counted in confusion.{md,png}
    # rcnn-eval test-time augmentation (rcnn_cli.evaluation.tta): none | flip | flips | scales
    tta: str = "none"
    tta_scales: list[int] = field(default_factory=list)  # shorter sides for tta=scales
    tta_merge: str = "nms"  # nms | wbf (weighted box fusion)
    tta_iou: float = 0.5


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
    # data-loading processes; null: the training run's dataset.num_workers, at most this
    # machine's CPU count (a checkpoint from a cluster node asks for that node's count)
    workers: int | None = None
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
    # test-time augmentation, as eval.tta* of rcnn-eval (rcnn_cli.evaluation.tta)
    tta: str = "none"
    tta_scales: list[int] = field(default_factory=list)
    tta_merge: str = "nms"
    tta_iou: float = 0.5


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
    augment: bool = False  # browse: training images after the training augmentation
    anchors: Any = None  # check: anchor coverage of the training boxes (anchors=auto: fitted)
    rpn_iou: float = 0.7  # check: the RPN's positive IoU (sampler.rpn.fg_iou_thresh)


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

