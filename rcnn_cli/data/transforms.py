"""Per-sample transforms on ``torchvision.transforms.v2`` with ``tv_tensors`` targets."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def to_sample(image: np.ndarray, target: dict) -> tuple[tv_tensors.Image, dict]:
    """Wrap a uint8 HxWx3 array and numpy target arrays as tv_tensors."""
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    h, w = img.shape[-2:]
    out = {
        "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(target["boxes"], dtype=torch.float32),
                                          format="XYXY", canvas_size=(h, w)),
        "labels": torch.as_tensor(target["labels"], dtype=torch.int64),
        "image_id": int(target["image_id"]),
    }
    if "masks" in target:
        out["masks"] = tv_tensors.Mask(torch.as_tensor(target["masks"], dtype=torch.uint8))
    return img, out


def proposal_boxes(boxes: np.ndarray, image: tv_tensors.Image) -> tv_tensors.BoundingBoxes:
    """External proposals as BoundingBoxes, so the v2 transforms move them with the image."""
    return tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32), format="XYXY",
                                    canvas_size=tuple(image.shape[-2:]))


def build_transforms(train: bool, flip_prob: float) -> v2.Transform:
    steps: list[v2.Transform] = []
    if train and flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)
