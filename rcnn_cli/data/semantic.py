"""Semantic segmentation maps for HTC's semantic branch (Chen et al. 2019, §3.3).

A target may carry its own map (``target["semantic"]``, an (H, W) integer tensor of class ids,
``IGNORE`` for unlabelled pixels, e.g. read from a COCO-stuff style folder). Datasets without
stuff annotations get the map from the instance masks: each pixel takes the class of the
instance covering it (the later instance where two overlap) and 0, background, elsewhere. Such a
map has the thing classes and background only, no stuff classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rcnn_cli.errors import DataError

IGNORE = 255  # pixels that do not count in the loss (padding, unlabelled)


def semantic_from_instances(masks: Tensor, labels: Tensor) -> Tensor:
    """(N, H, W) instance masks and (N,) labels -> (H, W) int64 class map, 0 = background."""
    out = torch.zeros(masks.shape[-2:], dtype=torch.int64, device=masks.device)
    for mask, label in zip(masks, labels):
        out[mask.bool()] = int(label)
    return out


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
