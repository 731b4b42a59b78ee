"""Per-sample transforms on ``torchvision.transforms.v2`` with ``tv_tensors`` targets.

Who resizes: for training the input pipeline resizes (shorter side to ``min_size`` or one of
``train_min_sizes``, longer side capped at ``max_size``) inside the DataLoader workers, and
the model's transform does not resize again (``rcnn_cli.modeling.build.DetectorTransform``).
For evaluation the pipeline keeps the original size and the model resizes to ``min_size`` /
``max_size`` and maps its boxes back to original image coordinates.
"""

from __future__ import annotations

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


def build_transforms(train: bool, flip_prob: float, min_sizes: list[int] | None = None,
                     max_size: int | None = None, color_jitter: float = 0.0) -> v2.Transform:
    steps: list[v2.Transform] = []
    if train and min_sizes:
        steps.append(v2.RandomShortestSize(list(min_sizes), max_size))
    if train and flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    if train and color_jitter > 0:
        j = color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)
