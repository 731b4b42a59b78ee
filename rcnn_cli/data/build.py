"""Dataset factory: one config group option, one dataset module."""

from __future__ import annotations

import logging

from rcnn_cli.data.loader import DetectionView
from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.errors import ConfigError

log = logging.getLogger("rcnn_cli")
DATASETS = ("shapes", "coco", "voc")


def load_store(cfg, split: str):
    """The validated, cached annotation index of one split of a COCO / VOC dataset."""
    from rcnn_cli.data.validate import log_report

    if cfg.name == "coco":
        from rcnn_cli.data.coco import load_coco_split

        store = load_coco_split(cfg, split)
    elif cfg.name == "voc":
        from rcnn_cli.data.voc import load_voc_split

        store = load_voc_split(cfg, split)
    else:
        raise ConfigError(f"dataset={cfg.name} is not supported; available: {', '.join(DATASETS)}")
    log_report(store.report, f"dataset={cfg.name} split={split}")
    return store


def build_raw_dataset(cfg, split: str, with_masks: bool = False):
    """The annotation-level dataset (``classes``, ``image_ids``, ``raw(i)``, ``coco_gt()``)."""
    if cfg.name == "shapes":
        size = {"train": cfg.train_size, "val": cfg.val_size}[split]
        return ShapesDataset(split, size, cfg.image_size, cfg.min_objects, cfg.max_objects,
                             cfg.min_scale, cfg.max_scale, cfg.seed,
                             with_masks=with_masks or cfg.with_masks, max_aspect=cfg.max_aspect)
    from rcnn_cli.data.annotations import StoredDataset

    store = load_store(cfg, split)
    masks = with_masks or bool(cfg.get("with_masks", False))
    if masks and cfg.name == "voc":
        raise ConfigError("dataset=voc has no instance masks; use a COCO dataset with "
                          "segmentations for mask training")
    return StoredDataset(store, with_masks=masks, max_pixels=cfg.max_pixels)


def drop_empty(raw, name: str):
    """Training only: leave out images without a (non-crowd) target, counted and logged."""
    s = raw.store
    keep = s.targets_per_image() > 0
    if keep.all():
        return raw
    if not keep.any():
        from rcnn_cli.errors import DataError

        raise DataError(f"dataset={name}: no training image has a (non-crowd) annotation")
    log.info("dataset=%s: %d of %d training images have no (non-crowd) annotation: left out "
             "(dataset.filter_empty=true)", name, int((~keep).sum()), len(keep))
    return type(raw)(s.subset(keep), raw.with_masks, raw.max_pixels)


def check_same_classes(train, val, name: str) -> None:
    """Training and evaluation must agree on the categories (names and ids, in order)."""
    a = list(zip(train.category_ids, train.classes))
    b = list(zip(val.category_ids, val.classes))
    if a != b:
        from rcnn_cli.errors import DataError

        raise DataError(f"dataset={name}: the val split's categories (id, name) {b} differ "
                        f"from the train split's {a}")


def build_dataset(cfg, split: str, train: bool, with_masks: bool = False) -> DetectionView:
    raw = build_raw_dataset(cfg, split, with_masks)
    if train and cfg.get("filter_empty", False):
        raw = drop_empty(raw, cfg.name)
    if train and cfg.get("semantic_dir"):
        from rcnn_cli.data.semantic import SemanticMaps

        raw = SemanticMaps(raw, cfg.semantic_dir)
    if not train:
        return DetectionView(raw, train=False, flip_prob=0.0)
    sizes = list(cfg.get("train_min_sizes") or []) or [cfg.min_size]
    return DetectionView(raw, train=True, flip_prob=cfg.flip_prob, min_sizes=sizes,
                         max_size=cfg.max_size, color_jitter=cfg.get("color_jitter", 0.0),
                         aspect_grouping=cfg.get("aspect_grouping", False))
