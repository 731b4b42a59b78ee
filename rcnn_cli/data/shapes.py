"""The embedded default dataset: synthetic shapes with exact boxes and masks.

Each image is a pure function of ``(seed, split, index)``: a textured, noisy background and
1-6 objects whose class is their *shape* (rectangle, ellipse, triangle), never their colour.
The aspect ratio is bounded (``max_aspect``): a 5:1 ellipse and a 5:1 rectangle a dozen
pixels long are the same pixels, so unbounded ratios would make labels ambiguous.
Boxes are the tight boxes of each object's visible mask, so they are exact by construction.
Only compact annotation arrays live in memory; pixels are rendered on access.
"""

from __future__ import annotations

import math

import numpy as np

from rcnn_cli.errors import ConfigError

CLASSES = ("rectangle", "ellipse", "triangle")
SPLITS = {"train": 0, "val": 1, "test": 2}
MAX_IOU_BETWEEN_OBJECTS = 0.4
MIN_VISIBLE_FRACTION = 0.6


def _shape_mask(kind: int, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator,
                w: float, h: float) -> np.ndarray:
    """Mask of one shape centred at the origin of (xx, yy)."""
    theta = rng.uniform(0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    u, v = xx * c + yy * s, -xx * s + yy * c
    if kind == 1:  # rectangle
        return (np.abs(u) <= w / 2) & (np.abs(v) <= h / 2)
    if kind == 2:  # ellipse
        return (u / (w / 2)) ** 2 + (v / (h / 2)) ** 2 <= 1.0
    # triangle: three vertices on an ellipse, spread at least 90 degrees apart
    angles = theta + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    px, py = (w / 2) * np.cos(angles), (h / 2) * np.sin(angles)
    inside = np.ones_like(xx, dtype=bool)
    area_sign = np.sign((px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0]))
    for i in range(3):
        j = (i + 1) % 3
        edge = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
        inside &= edge * area_sign >= 0
    return inside


def _box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def layout(rng: np.random.Generator, size: int, min_objects: int, max_objects: int,
           min_scale: float, max_scale: float,
           max_aspect: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Place objects; returns labels (N,) and visible masks (N, size, size), paint order."""
    n_target = int(rng.integers(min_objects, max_objects + 1))
    labels: list[int] = []
    masks: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    for _ in range(n_target * 20):
        if len(labels) == n_target:
            break
        kind = int(rng.integers(1, len(CLASSES) + 1))
        side = rng.uniform(min_scale, max_scale) * size
        aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
        w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        r = math.hypot(w, h) / 2 + 1
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        local = _shape_mask(kind, xx - cx, yy - cy, rng, w, h)
        if local.sum() < 16:
            continue
        mask = np.zeros((size, size), bool)
        mask[y0:y1, x0:x1] = local
        box = _box_of(mask)
        if any(_iou(box, b) > MAX_IOU_BETWEEN_OBJECTS for b in boxes):
            continue
        occluded = [m & ~mask for m in masks]
        if any(o.sum() < MIN_VISIBLE_FRACTION * m.sum() for o, m in zip(occluded, masks)):
            continue
        masks = occluded + [mask]
        boxes = [_box_of(m) for m in occluded] + [box]
        labels.append(kind)
    if not masks:
        return np.zeros((0,), np.int64), np.zeros((0, size, size), bool)
    return np.array(labels, np.int64), np.stack(masks)


def paint(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """Textured, noisy background with each object in a random colour; uint8 HxWx3."""
    size = masks.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    a = rng.uniform(0, 2 * math.pi)
    t = np.clip((xx * math.cos(a) + yy * math.sin(a) + 1) / 2, 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    b = rng.uniform(0, 2 * math.pi)
    freq = rng.uniform(3, 12)
    stripes = np.sin(2 * math.pi * freq * (xx * math.cos(b) + yy * math.sin(b)) + rng.uniform(0, 6))
    img = img + rng.uniform(0.05, 0.2) * stripes[..., None]
    for mask in masks:
        mean_bg = img[mask].mean(axis=0) if mask.any() else np.full(3, 0.5)
        colour = rng.uniform(0, 1, 3)
        for _ in range(10):
            if np.abs(colour - mean_bg).sum() > 0.6:
                break
            colour = rng.uniform(0, 1, 3)
        img[mask] = colour + rng.uniform(-0.05, 0.05, 3)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.02, 0.08)
    img = img.astype(np.float32) + noise
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


class ShapesDataset:
    """Map-style dataset; ``raw(i)`` returns (uint8 HxWx3 image, target dict of numpy arrays)."""

    def __init__(self, split: str, num_images: int, image_size: int, min_objects: int = 1,
                 max_objects: int = 6, min_scale: float = 0.1, max_scale: float = 0.5,
                 seed: int = 0, with_masks: bool = False, max_aspect: float = 2.0):
        if split not in SPLITS:
            raise ConfigError(f"shapes: unknown split {split!r}; expected one of {list(SPLITS)}")
        if not 1 <= min_objects <= max_objects:
            raise ConfigError(f"dataset.min_objects={min_objects}, dataset.max_objects="
                              f"{max_objects}: need 1 <= min_objects <= max_objects")
        if not 0 < min_scale <= max_scale <= 1:
            raise ConfigError(f"dataset.min_scale={min_scale}, dataset.max_scale={max_scale}: "
                              "need 0 < min_scale <= max_scale <= 1")
        if max_aspect < 1:
            raise ConfigError(f"dataset.max_aspect={max_aspect}: must be >= 1")
        self.split, self.size, self.seed = split, image_size, seed
        self.params = (min_objects, max_objects, min_scale, max_scale, max_aspect)
        self.with_masks = with_masks
        self.classes = list(CLASSES)
        self.category_ids = list(range(1, len(CLASSES) + 1))
        boxes, labels, areas, offsets = [], [], [], [0]
        for i in range(num_images):
            lab, masks = self._layout(i)
            boxes += [_box_of(m) for m in masks]
            labels.append(lab)
            areas.append(masks.reshape(len(masks), -1).sum(1))
            offsets.append(offsets[-1] + len(lab))
        self._boxes = np.array(boxes, np.float32).reshape(-1, 4)
        self._labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._areas = np.concatenate(areas).astype(np.float32) if areas else np.zeros(0, np.float32)
        self._offsets = np.array(offsets, np.int64)
        self.image_ids = list(range(1, num_images + 1))

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index, stream])

    def _layout(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return layout(self._rng(index, 0), self.size, *self.params)

    def __len__(self) -> int:
        return len(self.image_ids)

    def raw(self, index: int) -> tuple[np.ndarray, dict]:
        lo, hi = self._offsets[index], self._offsets[index + 1]
        target = {"boxes": self._boxes[lo:hi], "labels": self._labels[lo:hi],
                  "image_id": self.image_ids[index]}
        _, masks = self._layout(index)
        if self.with_masks:
            target["masks"] = masks
        return paint(self._rng(index, 1), masks), target

    def coco_gt(self) -> dict:
        """Ground truth in COCO format, straight from the annotation arrays."""
        images = [{"id": iid, "width": self.size, "height": self.size,
                   "file_name": f"{self.split}_{iid:06d}.png"} for iid in self.image_ids]
        anns = []
        for idx, iid in enumerate(self.image_ids):
            for k in range(self._offsets[idx], self._offsets[idx + 1]):
                x0, y0, x1, y1 = (float(v) for v in self._boxes[k])
                anns.append({"id": int(k) + 1, "image_id": iid, "category_id": int(self._labels[k]),
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(self._areas[k]),
                             "iscrowd": 0})
        if self.with_masks:
            self._add_segmentations(anns)
        cats = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.classes)]
        return {"images": images, "annotations": anns, "categories": cats}

    def _add_segmentations(self, anns: list[dict]) -> None:
        """Visible masks as RLE, in annotation order (for COCO ``segm`` evaluation)."""
        from rcnn_cli.evaluation.coco import encode_binary_masks

        rles = [rle for idx in range(len(self))
                for rle in encode_binary_masks(self._layout(idx)[1])]
        for ann, rle in zip(anns, rles, strict=True):
            ann["segmentation"] = rle
