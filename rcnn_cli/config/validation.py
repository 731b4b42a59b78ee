"""Start-up checks of a composed config, and re-typing a config stored in a checkpoint."""

from __future__ import annotations

from rcnn_cli.config.data import CocoConf, DatasetConf, ShapesConf, VocConf
from rcnn_cli.config.model import ModelConf, RegionModelConf
from rcnn_cli.config.run import (
    GROUP_SCHEMAS,
    TTA_MERGES,
    TTA_MODES,
    AlternatingScheduleConf,
    ScheduleConf,
    TrainConf,
)


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
                 ("dist.timeout_s", 1), ("dataset.image_size", 1), ("dataset.min_size", 1),
                 ("dataset.max_size", 1), ("dataset.train_size", 1),
                 ("schedule.early_stop.patience", 0)]

# (key, low, high, low inclusive): float keys checked when present and set.
INTERVAL_KEYS = [("dataset.flip_prob", 0.0, 1.0, True), ("dataset.vflip_prob", 0.0, 1.0, True),
                 ("dataset.color_jitter", 0.0, None, True),
                 ("schedule.momentum", 0.0, 1.0, True), ("schedule.weight_decay", 0.0, None, True),
                 ("schedule.gamma", 0.0, None, False), ("schedule.clip_grad_norm", 0.0, None, False),
                 ("schedule.warmup_factor", 0.0, 1.0, True),
                 ("schedule.offset_lr_mult", 0.0, None, True),
                 ("dataset.repeat_factor_threshold", 0.0, 1.0, True),
                 ("schedule.ema.decay", 0.0, 1.0, True), ("schedule.ema.warmup", 0.0, None, False),
                 ("schedule.early_stop.min_delta", 0.0, None, True),
                 ("dataset.photometric_distort", 0.0, 1.0, True)]

# (key, allowed values): checked when the key is present.
CHOICE_KEYS = [("eval.backend", ("faster-coco-eval", "pycocotools")),
               ("eval.tta", TTA_MODES), ("eval.tta_merge", TTA_MERGES),
               ("tta", TTA_MODES), ("tta_merge", TTA_MERGES)]


def _check_ranges(cfg) -> None:
    from omegaconf import OmegaConf

    from rcnn_cli.errors import ConfigError

    for key, low in POSITIVE_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, int) and value < low:
            raise ConfigError(f"{key}={value}: must be >= {low}")
    for key, low, high, closed in INTERVAL_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, (int, float)) and not (
                (value >= low if closed else value > low) and (high is None or value <= high)):
            bound = f"{'[' if closed else '('}{low}, {high if high is not None else 'inf'}"
            raise ConfigError(f"{key}={value}: must be in {bound}{']' if high else ')'}")
    sizes = OmegaConf.select(cfg, "dataset.train_min_sizes", default=None, throw_on_missing=False)
    if sizes and min(sizes) < 1:
        raise ConfigError(f"dataset.train_min_sizes={list(sizes)}: every size must be >= 1")
    _check_stage_graph_keys(cfg)
    source = OmegaConf.select(cfg, "proposals.name", default=None, throw_on_missing=False)
    if OmegaConf.select(cfg, "dataset.iou_crop", default=False) and source not in (None, "rpn"):
        raise ConfigError(f"dataset.iou_crop=true cannot keep external proposals "
                          f"(proposals={source}) consistent; use scale jitter instead")
    for key, allowed in CHOICE_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}={value}: must be one of {', '.join(allowed)}")
    lr = OmegaConf.select(cfg, "schedule.lr", default=None, throw_on_missing=False)
    if isinstance(lr, float) and lr <= 0:
        raise ConfigError(f"schedule.lr={lr}: must be > 0")


def _check_stage_graph_keys(cfg) -> None:
    """EMA and early stopping act on the joint loop's evaluations; a stage graph has none."""
    from omegaconf import OmegaConf

    from rcnn_cli.errors import ConfigError

    graph = (OmegaConf.select(cfg, "schedule.name", default=None, throw_on_missing=False)
             in ("alternating", "four_step")
             or OmegaConf.select(cfg, "model.name", default=None, throw_on_missing=False)
             in ("rcnn", "sppnet"))
    for key in ("schedule.ema.decay", "schedule.early_stop.patience"):
        if graph and OmegaConf.select(cfg, key, default=0, throw_on_missing=False):
            raise ConfigError(f"{key} works with the joint loop (schedule=joint, a torchvision-"
                              "style model); this run is a stage graph: set it to 0")


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
