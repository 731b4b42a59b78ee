"""A detection dataset held in a few flat numpy arrays.

DataLoader workers are forked from the main process; touching a Python object in a child
writes its reference count and so copies its memory page ("copy-on-read"). A list of one
dict per image therefore grows every worker's memory to a full copy of the annotations over
an epoch. Here an index is a handful of numpy arrays (no per-image Python objects), image
``i``'s annotations are ``[ann_offsets[i], ann_offsets[i + 1])``, and the arrays are saved
and loaded as one ``.npz`` (the index cache, :mod:`rcnn_cli.data.cache`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcnn_cli.data.images import read_image

ARRAYS = ("image_ids", "widths", "heights", "file_names", "ann_offsets", "boxes", "category_ids",
          "ann_ids", "areas", "crowd", "segm_bytes", "segm_offsets")


@dataclass
class AnnotationStore:
    """Images and their annotations as flat arrays; boxes are XYXY in original pixels.

    ``crowd`` marks ignore regions (COCO ``iscrowd``, VOC ``difficult``): never training
    targets, but ``iscrowd=1`` ground truth in evaluation. ``categories`` is
    ``[(original id, name), ...]`` in label order: label ``k`` is ``categories[k - 1]``.
    Segmentations (COCO polygons / RLE) are JSON bytes, decoded only on access.
    """

    image_ids: np.ndarray      # (N,) int64
    widths: np.ndarray         # (N,) int32
    heights: np.ndarray        # (N,) int32
    file_names: np.ndarray     # (N,) bytes (fixed width), relative to images_dir
    ann_offsets: np.ndarray    # (N + 1,) int64
    boxes: np.ndarray          # (M, 4) float32 XYXY
    category_ids: np.ndarray   # (M,) int64, original ids
    ann_ids: np.ndarray        # (M,) int64
    areas: np.ndarray          # (M,) float32
    crowd: np.ndarray          # (M,) bool
    segm_bytes: np.ndarray     # (S,) uint8, concatenated JSON
    segm_offsets: np.ndarray   # (M + 1,) int64 (all zero: no segmentations)
    categories: list[tuple[int, str]]
    images_dir: str
    report: dict

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def classes(self) -> list[str]:
        return [name for _, name in self.categories]

    @property
    def label_of(self) -> dict[int, int]:
        return {cid: k + 1 for k, (cid, _) in enumerate(self.categories)}

    @property
    def has_masks(self) -> bool:
        return bool(self.segm_offsets[-1] > 0)

    def file_name(self, i: int) -> str:
        return self.file_names[i].decode("utf-8")

    def path(self, i: int) -> Path:
        return Path(self.images_dir) / self.file_name(i)

    def span(self, i: int) -> slice:
        return slice(int(self.ann_offsets[i]), int(self.ann_offsets[i + 1]))

    def targets_per_image(self) -> np.ndarray:
        """``(N,)`` number of non-crowd annotations (training targets) of each image."""
        image_of = np.repeat(np.arange(len(self)), np.diff(self.ann_offsets))
        return np.bincount(image_of[~self.crowd], minlength=len(self))

    def segmentation(self, k: int):
        lo, hi = self.segm_offsets[k], self.segm_offsets[k + 1]
        return json.loads(self.segm_bytes[lo:hi].tobytes()) if hi > lo else None

    def subset(self, keep: np.ndarray) -> AnnotationStore:
        """The images where ``keep`` (bool, per image) is true, with their annotations."""
        idx = np.flatnonzero(keep)
        counts = np.diff(self.ann_offsets)[idx]
        new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ann = (np.repeat(self.ann_offsets[idx], counts) +
               np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1], counts)).astype(np.int64)
        seg_len = np.diff(self.segm_offsets)[ann]
        seg = (np.concatenate([self.segm_bytes[self.segm_offsets[k]:self.segm_offsets[k + 1]]
                               for k in ann]) if seg_len.sum() else np.zeros(0, np.uint8))
        return AnnotationStore(
            self.image_ids[idx], self.widths[idx], self.heights[idx], self.file_names[idx],
            new_offsets, self.boxes[ann],
            self.category_ids[ann], self.ann_ids[ann], self.areas[ann], self.crowd[ann],
            seg.astype(np.uint8), np.concatenate([[0], np.cumsum(seg_len)]).astype(np.int64),
            self.categories, self.images_dir, self.report)

    # --- cache file ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = {"categories": self.categories, "images_dir": self.images_dir,
                "report": self.report}
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 **{k: getattr(self, k) for k in ARRAYS})
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> AnnotationStore:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            arrays = {k: z[k] for k in ARRAYS}
        cats = [(int(c), str(n)) for c, n in meta["categories"]]
        return cls(**arrays, categories=cats, images_dir=meta["images_dir"],
                   report=meta["report"])


def pack_segmentations(segms: list) -> tuple[np.ndarray, np.ndarray]:
    """JSON-encode each segmentation (None: empty) into one byte buffer plus offsets."""
    chunks = [b"" if s is None else json.dumps(s, separators=(",", ":")).encode() for s in segms]
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    return np.frombuffer(b"".join(chunks), np.uint8).copy(), offsets


class StoredDataset:
    """Map-style dataset over an :class:`AnnotationStore` (``raw(i)``, ``coco_gt()``).

    ``raw(i)`` decodes the image and returns training targets: crowd / difficult
    annotations are left out (they are ignore regions, used only by evaluation).
    """

    def __init__(self, store: AnnotationStore, with_masks: bool = False, max_pixels: int = 0):
        self.store, self.with_masks, self.max_pixels = store, with_masks, max_pixels
        self.classes = store.classes
        self.category_ids = [cid for cid, _ in store.categories]
        self._labels = np.zeros(0, np.int64)
        if len(store.category_ids):
            lookup = store.label_of
            self._labels = np.array([lookup[int(c)] for c in store.category_ids], np.int64)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def image_ids(self) -> np.ndarray:
        return self.store.image_ids

    def aspect_ratios(self) -> np.ndarray:
        return self.store.widths / np.maximum(self.store.heights, 1)

    def target(self, index: int) -> dict:
        s = self.store
        span = s.span(index)
        keep = ~s.crowd[span]
        target = {"boxes": s.boxes[span][keep], "labels": self._labels[span][keep],
                  "image_id": int(s.image_ids[index])}
        if self.with_masks:
            from rcnn_cli.data.masks import decode_masks

            ks = np.arange(span.start, span.stop)[keep]
            target["masks"] = decode_masks([s.segmentation(k) for k in ks],
                                           int(s.heights[index]), int(s.widths[index]),
                                           s.boxes[ks])
        return target

    def raw(self, index: int):
        image = read_image(self.store.path(index), self.max_pixels)
        return image, self.target(index)

    def coco_gt(self) -> dict:
        return coco_ground_truth(self.store)


def coco_ground_truth(store: AnnotationStore) -> dict:
    """COCO-format ground truth in original image coordinates and original category ids;
    crowd / difficult annotations become ``iscrowd=1`` ignore regions."""
    images = [{"id": int(store.image_ids[i]), "width": int(store.widths[i]),
               "height": int(store.heights[i]), "file_name": store.file_name(i)}
              for i in range(len(store))]
    anns = []
    for i in range(len(store)):
        span = store.span(i)
        for k in range(span.start, span.stop):
            x0, y0, x1, y1 = (float(v) for v in store.boxes[k])
            ann = {"id": int(store.ann_ids[k]), "image_id": int(store.image_ids[i]),
                   "category_id": int(store.category_ids[k]), "bbox": [x0, y0, x1 - x0, y1 - y0],
                   "area": float(store.areas[k]), "iscrowd": int(store.crowd[k])}
            segm = store.segmentation(k)
            if segm is not None:
                ann["segmentation"] = segm
            anns.append(ann)
    cats = [{"id": int(c), "name": n} for c, n in store.categories]
    return {"images": images, "annotations": anns, "categories": cats}
