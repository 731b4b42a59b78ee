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


class Amp(Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class Optimizer(Enum):
    sgd = "sgd"
    adamw = "adamw"


class Decay(Enum):
    step = "step"
    cosine = "cosine"


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


@dataclass
class RoISamplerConf:
    """RoI minibatch (Fast R-CNN §2.3): background is IoU in [0, bg_iou_thresh)."""

    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5


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


@dataclass
class RPNConf:
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    score_thresh: float = 0.0


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
    """Fast R-CNN head specifics (Fast R-CNN §2.3): dropout on fc6/fc7, background IoU in
    [bg_iou_lo, sampler.roi.bg_iou_thresh), smooth-L1 (beta) weighted by lambda."""

    dropout: float = 0.5
    bg_iou_lo: float = 0.1
    smooth_l1_beta: float = 1.0
    box_loss_weight: float = 1.0


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
    eval_period: int = 0
    checkpoint_period: int = 500
    keep_checkpoints: int = 3


@dataclass
class LogConf:
    period: int = 20
    tensorboard: bool = True


@dataclass
class EvalConf:
    batch_size: int = 8
    proposals: bool = False
    proposal_counts: list[int] = field(default_factory=lambda: [100, 300, 1000])


@dataclass
class CompressConf:
    """Truncated SVD of the box head at evaluation (Fast R-CNN §3.1); null = leave the layer."""

    fc6: int | None = None
    fc7: int | None = None
    save: bool = False


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
    for group, node in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)
    cs.store(group="dataset", name="shapes_schema", node=ShapesConf)


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
                 ("faults.max_nonfinite_steps", 1)]


def _check_ranges(cfg) -> None:
    from omegaconf import OmegaConf

    from rcnn_cli.errors import ConfigError

    for key, low in POSITIVE_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, int) and value < low:
            raise ConfigError(f"{key}={value}: must be >= {low}")
    lr = OmegaConf.select(cfg, "schedule.lr", default=None, throw_on_missing=False)
    if isinstance(lr, float) and lr <= 0:
        raise ConfigError(f"schedule.lr={lr}: must be > 0")


DATASET_SCHEMAS: dict[str, type] = {"shapes": ShapesConf}


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
                cfg[key] = OmegaConf.merge(OmegaConf.structured(schema), value)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: stored config does not match the schema: {e}") from None
    return cfg
