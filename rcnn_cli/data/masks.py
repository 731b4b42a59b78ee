"""Instance masks from COCO polygons / RLE (pycocotools ``mask`` utilities)."""

from __future__ import annotations

import numpy as np


def decode_masks(segms: list, height: int, width: int, boxes: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` uint8 masks; an annotation without a segmentation gets its box as mask."""
    from pycocotools import mask as mask_utils

    out = np.zeros((len(segms), height, width), np.uint8)
    for k, segm in enumerate(segms):
        if segm is None:
            x0, y0, x1, y1 = np.round(boxes[k]).astype(int)
            out[k, max(y0, 0):y1, max(x0, 0):x1] = 1
            continue
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
        out[k] = mask_utils.decode(rle)
    return out
