"""Semantic segmentation maps for HTC's semantic branch (Chen et al. 2019, §3.3).

A target may carry its own map (``target["semantic"]``, an (H, W) integer tensor of class ids,
``IGNORE`` for unlabelled pixels): ``SemanticMaps`` reads them from a COCO-stuff style folder
(``dataset.semantic_dir``: one PNG per image, ``<image file stem>.png``, as COCO-stuff's
``stuffthingmaps/<split>``), and the training transforms resize and flip them with the image. Datasets without
stuff annotations get the map from the instance masks: each pixel takes the class of the
instance covering it (the later instance where two overlap) and 0, background, elsewhere. Such a
map has the thing classes and background only, no stuff classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_png, read_file

from rcnn_cli.errors import DataError

IGNORE = 255  # pixels that do not count in the loss (padding, unlabelled)


def semantic_from_instances(masks: Tensor, labels: Tensor) -> Tensor:
    """(N, H, W) instance masks and (N,) labels -> (H, W) int64 class map, 0 = background."""
    out = torch.zeros(masks.shape[-2:], dtype=torch.int64, device=masks.device)
    for mask, label in zip(masks, labels):
        out[mask.bool()] = int(label)
    return out


class SemanticMaps:
    """``inner`` (an annotation-level dataset of files) with ``target["semantic"]`` read from
    ``folder``."""

    def __init__(self, inner, folder: str | Path):
        self.inner, self.folder = inner, Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DataError(f"dataset.semantic_dir={folder}: not a folder")

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    def __len__(self) -> int:
        return len(self.inner)

    def raw(self, index: int):
        image, target = self.inner.raw(index)
        path = self.folder / (Path(self.inner.store.file_name(index)).stem + ".png")
        target["semantic"] = read_semantic_map(path, tuple(image.shape[-2:]))
        return image, target


def read_semantic_map(path: Path, size: tuple[int, int]) -> Tensor:
    """One single-channel PNG of class ids, the size of its image; errors name the file."""
    try:
        sem = decode_png(read_file(str(path)), ImageReadMode.GRAY)[0]
    except RuntimeError as e:
        raise DataError(f"{path}: cannot read the semantic map ({e})") from None
    if tuple(sem.shape) != tuple(size):
        raise DataError(f"{path}: semantic map is {tuple(sem.shape)}, its image {tuple(size)}")
    return sem


def check_classes(sem: Tensor, num_classes: int) -> None:
    bad = (sem >= num_classes) & (sem != IGNORE)
    if bad.any():
        raise DataError(f"semantic map has class id {int(sem[bad].max())} but the semantic head "
                        f"predicts {num_classes} classes; set model.htc.semantic_classes")


def semantic_targets(targets: list[dict], image_shapes: list[tuple[int, int]],
                     size: tuple[int, int]) -> Tensor:
    """(B, *size) class maps: each image's map in its top-left corner, ``IGNORE`` around it
    (the padding of the batch)."""
    out = torch.full((len(targets), *size), IGNORE, dtype=torch.int64)
    for i, (t, (h, w)) in enumerate(zip(targets, image_shapes)):
        if "semantic" in t:
            sem = t["semantic"].to(torch.int64)
        elif "masks" in t:
            sem = semantic_from_instances(t["masks"], t["labels"])
        else:
            raise DataError("the semantic branch (model.htc.semantic=true) needs targets with "
                            "'semantic' maps or instance 'masks'")
        h, w = min(h, sem.shape[0], size[0]), min(w, sem.shape[1], size[1])
        out[i, :h, :w] = sem[:h, :w].cpu()
    return out
