"""Per-sample transforms on ``torchvision.transforms.v2`` with ``tv_tensors`` targets.

Who resizes: for training the input pipeline resizes (shorter side to ``min_size`` or one of
``train_min_sizes``, longer side capped at ``max_size``) inside the DataLoader workers, and
the model's transform does not resize again (``rcnn_cli.modeling.build.DetectorTransform``).
For evaluation the pipeline keeps the original size and the model resizes to ``min_size`` /
``max_size`` and maps its boxes back to original image coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def to_sample(image, target: dict) -> tuple[tv_tensors.Image, dict]:
    """Wrap a uint8 image (HxWx3 array or 3xHxW tensor) and numpy targets as tv_tensors."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    img = tv_tensors.Image(image)
    h, w = img.shape[-2:]
    out = {
        "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(target["boxes"], dtype=torch.float32),
                                          format="XYXY", canvas_size=(h, w)),
        "labels": torch.as_tensor(target["labels"], dtype=torch.int64),
        "image_id": int(target["image_id"]),
    }
    if "masks" in target:
        out["masks"] = tv_tensors.Mask(torch.as_tensor(target["masks"], dtype=torch.uint8))
    if "semantic" in target:  # rcnn_cli.data.semantic: resized and flipped as the masks
        out["semantic"] = tv_tensors.Mask(torch.as_tensor(target["semantic"], dtype=torch.uint8))
    return img, out


def proposal_boxes(boxes: np.ndarray, image: tv_tensors.Image) -> tv_tensors.BoundingBoxes:
    """External proposals as BoundingBoxes, so the v2 transforms move them with the image."""
    return tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32), format="XYXY",
                                    canvas_size=tuple(image.shape[-2:]))


@dataclass(frozen=True)
class Augment:
    """Training augmentation beyond flip / multi-scale / colour jitter (dataset keys).

    ``photometric``: probability of each of SSD's photometric distortions
    (``v2.RandomPhotometricDistort``, Liu et al. 2016 §2.2). ``scale_jitter`` = (lo, hi):
    ``v2.ScaleJitter`` of the ``min_size x max_size`` target by a factor drawn from [lo, hi],
    instead of ``train_min_sizes``; ``scale_jitter_crop``: then crop (and pad) to
    ``min_size x max_size``, the large-scale jitter of Ghiasi et al. 2021 (Copy-Paste, §3).
    ``iou_crop``: SSD's minimum-IoU random crop (``v2.RandomIoUCrop``) before resizing.
    ``vflip``: probability of a vertical flip (``v2.RandomVerticalFlip``), after the horizontal
    one: both together give the four flips of an image with no up or down.
    Boxes, masks and proposals move with the pixels; boxes left degenerate by a crop are
    dropped with their labels and masks (``v2.SanitizeBoundingBoxes``).
    """

    photometric: float = 0.0
    scale_jitter: tuple[float, float] | None = None
    scale_jitter_crop: bool = False
    iou_crop: bool = False
    vflip: float = 0.0

    @property
    def crops(self) -> bool:
        return self.iou_crop or self.scale_jitter is not None


def augment_from_config(cfg) -> Augment:
    from rcnn_cli.errors import ConfigError

    jitter = list(cfg.get("scale_jitter") or [])
    if jitter and not (len(jitter) == 2 and 0 < jitter[0] <= jitter[1]):
        raise ConfigError(f"dataset.scale_jitter={jitter}: need [lo, hi] with 0 < lo <= hi")
    if cfg.get("scale_jitter_crop", False) and not jitter:
        raise ConfigError("dataset.scale_jitter_crop=true needs dataset.scale_jitter=[lo,hi]")
    return Augment(float(cfg.get("photometric_distort", 0.0)),
                   (float(jitter[0]), float(jitter[1])) if jitter else None,
                   bool(cfg.get("scale_jitter_crop", False)), bool(cfg.get("iou_crop", False)),
                   float(cfg.get("vflip_prob", 0.0)))


def build_transforms(train: bool, flip_prob: float, min_sizes: list[int] | None = None,
                     max_size: int | None = None, color_jitter: float = 0.0,
                     augment: Augment | None = None) -> v2.Transform:
    augment = augment or Augment()
    steps: list[v2.Transform] = []
    if train and augment.iou_crop:
        steps.append(v2.RandomIoUCrop())
    if train and augment.scale_jitter is not None and min_sizes:
        target = (min(min_sizes), max_size or max(min_sizes))
        steps.append(v2.ScaleJitter(target, augment.scale_jitter))
        if augment.scale_jitter_crop:
            steps.append(v2.RandomCrop(target, pad_if_needed=True))
    elif train and min_sizes:
        steps.append(v2.RandomShortestSize(list(min_sizes), max_size))
    if train and flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    if train and augment.vflip > 0:
        steps.append(v2.RandomVerticalFlip(augment.vflip))
    if train and augment.photometric > 0:
        steps.append(v2.RandomPhotometricDistort(p=augment.photometric))
    if train and color_jitter > 0:
        j = color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def sanitize(target: dict) -> dict:
    """After a crop: drop degenerate boxes (with their labels and masks); clamp proposals to
    the image and drop the empty ones."""
    proposals = target.pop("proposals", None)
    target = v2.SanitizeBoundingBoxes(min_size=1.0)(target)
    if proposals is not None:
        p = v2.functional.clamp_bounding_boxes(proposals)
        keep = ((p[:, 2] - p[:, 0]) >= 1) & ((p[:, 3] - p[:, 1]) >= 1)
        target["proposals"] = p[keep]
    return target
