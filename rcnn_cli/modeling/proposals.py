"""Proposal sources of a two-stage detector (``proposals`` config group).

- ``rpn``: the learned Region Proposal Network inside the model (Faster R-CNN §3.1);
- ``selective_search``: OpenCV's selective search (Uijlings et al. 2013), the external source of
  R-CNN (§2.1) and Fast R-CNN (§4): "fast" mode, ~2000 boxes per image;
- ``precomputed``: boxes read from a proposal file (``rcnn_cli.data.proposal_cache``).

Boxes are float32 ``[K, 4]`` XYXY in original image pixels, best first.
"""

from __future__ import annotations

import numpy as np

from rcnn_cli.errors import ConfigError

SOURCES = ("rpn", "selective_search", "precomputed")


def check_source(name: str) -> None:
    if name not in SOURCES:
        raise ConfigError(f"proposals={name} is not supported; available: {', '.join(SOURCES)}")


def selective_search(image, mode: str = "fast", scale: float = 1.0,
                     max_proposals: int = 2000, min_box_size: float = 2.0) -> np.ndarray:
    """Selective search on a uint8 RGB image, run at ``scale`` x its size. The image is an
    HxWx3 array (shapes' ``raw``) or a 3xHxW tensor (a stored dataset's ``raw``: VOC, COCO).

    Returns up to ``max_proposals`` unique boxes in OpenCV's ranking order (its hierarchical
    grouping order, which R-CNN used as is), mapped back to original pixels.
    """
    import cv2

    if mode not in ("fast", "quality"):
        raise ConfigError(f"proposals.mode={mode}: use fast or quality")
    if scale <= 0:
        raise ConfigError(f"proposals.scale={scale}: must be > 0")
    if not isinstance(image, np.ndarray):
        image = image.permute(1, 2, 0).numpy()
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if scale != 1.0:
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    seed_c_rand(0)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = search.process().astype(np.float32).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / scale
    h, w = image.shape[:2]
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    return filter_boxes(boxes, min_box_size, max_proposals)


def seed_c_rand(seed: int) -> None:
    """OpenCV ranks selective-search regions by ``level x std::rand()`` (the paper's
    pseudo-random ranking); seeding the C library's generator per image makes the ranking,
    hence the top-K, the same in every process whatever ran before."""
    import ctypes

    try:
        ctypes.CDLL(None).srand(seed)
    except (OSError, AttributeError, TypeError):  # no process-wide C library (Windows)
        pass


def filter_boxes(boxes: np.ndarray, min_box_size: float, max_proposals: int) -> np.ndarray:
    """Drop boxes narrower/shorter than ``min_box_size`` and duplicates; keep the first K."""
    wh = boxes[:, 2:] - boxes[:, :2]
    boxes = boxes[(wh >= min_box_size).all(axis=1) & (wh > 0).all(axis=1)]
    _, first = np.unique(boxes.round(1), axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return np.ascontiguousarray(boxes[:max_proposals], dtype=np.float32)


def configure_for_proposals(model, nms_thresh: float, min_size: float) -> None:
    """Test-mode RPN settings when its proposals feed another stage (Faster R-CNN §3.2, the
    proposal steps of 4-step training): NMS IoU threshold and minimum box side (pixels of the
    resized image)."""
    model.rpn.nms_thresh = nms_thresh
    model.rpn.min_size = min_size


def rpn_proposals(model, images: list, top_n: int, pre_nms_top_n: int | None = None) -> list:
    """Test-mode RPN proposals of a trained detector, best first, in original image pixels:
    ``top_n`` after NMS, from the ``pre_nms_top_n`` best per level before it (default: at least
    ``top_n``, else the model's own setting).

    torch is imported here: selective-search worker processes import this module without it.
    """
    import torch
    from torchvision.models.detection.transform import resize_boxes

    if getattr(model, "rpn", None) is None:
        raise ConfigError("this model has no RPN; its proposals come from the proposals group")
    model.eval()
    sizes = [tuple(im.shape[-2:]) for im in images]
    rpn = model.rpn
    saved = dict(rpn._post_nms_top_n), dict(rpn._pre_nms_top_n)
    rpn._post_nms_top_n["testing"] = top_n
    rpn._pre_nms_top_n["testing"] = (pre_nms_top_n if pre_nms_top_n is not None
                                     else max(top_n, saved[1]["testing"]))
    try:
        with torch.inference_mode():
            batch, _ = model.transform(images)
            features = model.backbone(batch.tensors)
            if isinstance(features, torch.Tensor):
                features = {"0": features}
            props, _ = rpn(batch, features)
    finally:
        rpn._post_nms_top_n, rpn._pre_nms_top_n = saved
    return [resize_boxes(p, new, old) for p, new, old in zip(props, batch.image_sizes, sizes)]
