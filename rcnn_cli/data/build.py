"""Dataset factory: one config group option, one dataset class."""

from __future__ import annotations

from rcnn_cli.data.loader import DetectionView
from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.errors import ConfigError

DATASETS = ("shapes",)


def build_raw_dataset(cfg, split: str, with_masks: bool = False):
    """The annotation-level dataset (``classes``, ``image_ids``, ``raw(i)``, ``coco_gt()``)."""
    if cfg.name == "shapes":
        size = {"train": cfg.train_size, "val": cfg.val_size}[split]
        return ShapesDataset(split, size, cfg.image_size, cfg.min_objects, cfg.max_objects,
                             cfg.min_scale, cfg.max_scale, cfg.seed,
                             with_masks=with_masks or cfg.with_masks, max_aspect=cfg.max_aspect)
    raise ConfigError(f"dataset={cfg.name} is not supported; available: {', '.join(DATASETS)}")


def build_dataset(cfg, split: str, train: bool, with_masks: bool = False) -> DetectionView:
    raw = build_raw_dataset(cfg, split, with_masks)
    return DetectionView(raw, train=train, flip_prob=cfg.flip_prob if train else 0.0)
