"""Dataset schemas: shapes (generated), COCO JSON and Pascal VOC."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from omegaconf import II, MISSING

from rcnn_cli.config.enums import Validation


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
    # repeat-factor sampling (LVIS §4): t, the image frequency below which a class's images
    # repeat sqrt(t / f) times per epoch; 0 = off (rcnn_cli.data.repeat_factor)
    repeat_factor_threshold: float = 0.0
    # augmentation (rcnn_cli.data.transforms.Augment): SSD photometric distortion probability,
    # scale jitter [lo, hi] of the min_size x max_size target (+ crop/pad: large-scale
    # jitter), SSD min-IoU random crop
    photometric_distort: float = 0.0
    scale_jitter: list[float] = field(default_factory=list)
    scale_jitter_crop: bool = False
    iou_crop: bool = False
    # vertical flip probability: for images with no up and down (cells, aerial, parts on a belt)
    vflip_prob: float = 0.0


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
    # HTC's semantic branch: a COCO-stuff style folder of class-id PNGs, one per training image
    # (<image file stem>.png, 255 = unlabelled); null = maps made from the instance masks
    semantic_dir: str | None = None


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


def capped_workers(asked: int) -> int:
    """``${workers:N}`` in conf/dataset/*.yaml: N loader workers, but no more than the CPUs this
    process may use (torch warns per loader beyond that). An explicit ``dataset.num_workers=K``
    on the command line is taken as given."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    chosen = max(0, min(int(asked), cpus or 1))
    if chosen != int(asked):
        logging.getLogger("rcnn_cli").info("dataset.num_workers: %d (the dataset's default %d; "
                                           "%d CPUs available)", chosen, int(asked), cpus)
    return chosen
