"""Dataset validation before training: every rule, one policy (``dataset.validation``).

Parsers (:mod:`~rcnn_cli.data.coco`, :mod:`~rcnn_cli.data.voc`) turn their files into a
:class:`RawIndex`; :func:`validate_index` checks it and packs an
:class:`~rcnn_cli.data.annotations.AnnotationStore`. Each problem names the file, the image
id, the annotation and the field. Rules are of three kinds:

- *error*: always fatal (NaN/inf coordinates, unknown category, duplicate ids, annotation for
  a missing image, missing image files, images over the pixel limit);
- *fix*: fatal under ``strict``; under ``lenient`` (default) fixed, counted and logged
  (degenerate box dropped, box outside the image dropped, box partly outside clamped,
  unreadable image or size mismatch: image skipped, VOC missing size: read from the image);
- *fill*: defaults filled and reported under both policies (missing ``iscrowd`` / ``area``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcnn_cli.data.annotations import AnnotationStore, pack_segmentations
from rcnn_cli.data.images import image_size
from rcnn_cli.errors import DataError

log = logging.getLogger("rcnn_cli")

# rule -> (kind, what lenient does)
RULES: dict[str, tuple[str, str]] = {
    "nonfinite_box": ("error", ""),
    "unknown_category": ("error", ""),
    "duplicate_category_id": ("error", ""),
    "duplicate_image_id": ("error", ""),
    "duplicate_annotation_id": ("error", ""),
    "annotation_for_missing_image": ("error", ""),
    "missing_image_file": ("error", ""),
    "image_too_large": ("error", ""),
    "missing_image_size": ("error", ""),
    "degenerate_box": ("fix", "dropped"),
    "box_outside_image": ("fix", "dropped"),
    "box_partly_outside_image": ("fix", "clamped"),
    "unreadable_image": ("fix", "image skipped"),
    "image_size_mismatch": ("fix", "image skipped"),
    "size_from_image_file": ("fix", "size read from the image"),
    "missing_iscrowd": ("fill", "set to 0"),
    "missing_area": ("fill", "set to the box area"),
}
OUTSIDE_TOLERANCE = 1.0  # pixels a box may overhang the image before it counts as outside
SHOWN = 5


@dataclass
class RawImage:
    id: int
    file_name: str
    width: int | None
    height: int | None
    source: str  # the annotation file that describes this image


@dataclass
class RawAnnotation:
    id: int
    image_id: int
    category_id: int
    box: list[float]  # XYXY as read (COCO xywh already converted)
    source: str
    where: str  # "annotation id 7" / "object 3"
    box_field: str = "bbox"
    iscrowd: int = 0
    area: float | None = None  # None: the box area (after clamping)
    segmentation: object = None
    missing: tuple[str, ...] = ()  # optional fields absent from the file ("iscrowd", "area")


@dataclass
class RawIndex:
    images: list[RawImage]
    annotations: list[RawAnnotation]
    categories: list[tuple[int, str]]
    images_dir: str
    category_source: str = ""


@dataclass
class Problems:
    strict: bool
    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, rule: str, message: str) -> None:
        self.found.setdefault(rule, []).append(message)

    def raise_fatal(self) -> None:
        fatal = [r for r in self.found if RULES[r][0] == "error" or
                 (self.strict and RULES[r][0] == "fix")]
        if not fatal:
            return
        lines = []
        for rule in fatal:
            msgs = self.found[rule]
            more = f" (and {len(msgs) - SHOWN} more)" if len(msgs) > SHOWN else ""
            lines.append(f"{rule}: {len(msgs)} problem(s){more}:\n  " + "\n  ".join(msgs[:SHOWN]))
        hint = " (dataset.validation=strict: fixable problems are errors)" if self.strict else ""
        raise DataError(f"dataset validation failed{hint}:\n" + "\n".join(lines))

    def summary(self) -> dict:
        return {rule: {"count": len(msgs), "kind": RULES[rule][0], "action": RULES[rule][1],
                       "examples": msgs[:10]} for rule, msgs in self.found.items()}


def _where(img: RawImage, ann: RawAnnotation | None = None, fld: str | None = None) -> str:
    text = f"{ann.source if ann else img.source}: image id {img.id} ({img.file_name})"
    if ann is not None:
        text += f", {ann.where}"
    if fld:
        text += f", field '{fld}'"
    return text


def _duplicates(values: list[int]) -> list[int]:
    arr = np.asarray(values, np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    return uniq[counts > 1].tolist()


def check_structure(raw: RawIndex, problems: Problems) -> None:
    """Ids: duplicates, annotations for missing images, unknown categories."""
    for cid in _duplicates([c for c, _ in raw.categories]):
        problems.add("duplicate_category_id",
                     f"{raw.category_source}: category id {cid} is defined more than once")
    for iid in _duplicates([im.id for im in raw.images]):
        files = [im.source for im in raw.images if im.id == iid][:2]
        problems.add("duplicate_image_id", f"{files[0]}: image id {iid} appears more than once "
                     f"(also in {files[-1]})" if files[0] != files[-1]
                     else f"{files[0]}: image id {iid} appears more than once")
    for aid in _duplicates([a.id for a in raw.annotations]):
        src = next(a.source for a in raw.annotations if a.id == aid)
        problems.add("duplicate_annotation_id", f"{src}: annotation id {aid} appears more "
                     "than once")
    image_ids = {im.id for im in raw.images}
    known = {c for c, _ in raw.categories}
    for a in raw.annotations:
        if a.image_id not in image_ids:
            problems.add("annotation_for_missing_image", f"{a.source}: {a.where}, field "
                         f"'image_id': image id {a.image_id} is not in the images list")
        if a.category_id not in known:
            problems.add("unknown_category", f"{a.source}: image id {a.image_id}, {a.where}, "
                         f"field 'category_id': unknown category {a.category_id!r} "
                         f"(known: {sorted(known)})")
    problems.raise_fatal()


def check_files(raw: RawIndex, problems: Problems, max_pixels: int,
                read_files: bool) -> np.ndarray:
    """Image files and sizes; returns a per-image keep mask (lenient skips)."""
    keep = np.ones(len(raw.images), bool)
    missing = []
    for i, img in enumerate(raw.images):
        if not read_files:
            if img.width is None or img.height is None:
                problems.add("missing_image_size", _where(img, fld="size") +
                             ": no width/height and dataset.check_files=false")
            continue
        size = image_size(Path(raw.images_dir) / img.file_name)
        if size == "missing file":
            missing.append(str(Path(raw.images_dir) / img.file_name))
            continue
        if isinstance(size, str):
            problems.add("unreadable_image", _where(img, fld="file_name") +
                         f": {Path(raw.images_dir) / img.file_name}: {size}")
            keep[i] = False
            continue
        w, h = size
        if max_pixels and w * h > max_pixels:
            problems.add("image_too_large", _where(img, fld="file_name") + f": {w}x{h} pixels "
                         f"exceeds dataset.max_pixels={max_pixels}")
        if img.width is None or img.height is None:
            problems.add("size_from_image_file", _where(img, fld="size") +
                         f": missing, the image file is {w}x{h}")
            img.width, img.height = w, h
        elif (img.width, img.height) != (w, h):
            problems.add("image_size_mismatch", _where(img, fld="width/height") +
                         f": annotation says {img.width}x{img.height}, the file is {w}x{h}")
            keep[i] = False
    if missing:
        problems.add("missing_image_file", f"{len(missing)} of {len(raw.images)} image files "
                     f"are missing under {raw.images_dir}, e.g. {', '.join(missing[:SHOWN])}")
    problems.raise_fatal()
    return keep


def check_boxes(raw: RawIndex, problems: Problems, boxes: np.ndarray, img_of: np.ndarray,
                keep_image: np.ndarray) -> np.ndarray:
    """NaN/inf (error), degenerate / outside (drop), partly outside (clamp, in place)."""
    images = raw.images
    sizes = np.array([[im.width or 0, im.height or 0] for im in images], np.float64)
    wh = sizes[img_of] if len(img_of) else np.zeros((0, 2))
    finite = np.isfinite(boxes).all(1)
    for k in np.flatnonzero(~finite):
        a = raw.annotations[k]
        problems.add("nonfinite_box", _where(images[img_of[k]], a, a.box_field) +
                     f": non-finite coordinates {a.box}")
    problems.raise_fatal()
    keep = keep_image[img_of].copy()
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    outside = ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= wh[:, 0]) |
               (boxes[:, 1] >= wh[:, 1])) & ~degenerate
    t = OUTSIDE_TOLERANCE
    partly = ((boxes[:, 0] < -t) | (boxes[:, 1] < -t) | (boxes[:, 2] > wh[:, 0] + t) |
              (boxes[:, 3] > wh[:, 1] + t)) & ~degenerate & ~outside
    for rule, mask, what in [("degenerate_box", degenerate, "zero or negative width/height"),
                             ("box_outside_image", outside, "entirely outside"),
                             ("box_partly_outside_image", partly, "partly outside")]:
        for k in np.flatnonzero(mask & keep):
            a, img = raw.annotations[k], images[img_of[k]]
            problems.add(rule, _where(img, a, a.box_field) + f": {what} {_fmt(a.box)} "
                         f"(image {img.width}x{img.height})")
    problems.raise_fatal()
    keep &= ~degenerate & ~outside
    np.clip(boxes[:, 0::2], 0, wh[:, :1], out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, wh[:, 1:], out=boxes[:, 1::2])
    return keep


def _fmt(box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def validate_index(raw: RawIndex, strict: bool, max_pixels: int = 0,
                   read_files: bool = True) -> AnnotationStore:
    """Check ``raw`` under the policy and pack the surviving annotations into a store."""
    problems = Problems(strict)
    check_structure(raw, problems)
    keep_image = check_files(raw, problems, max_pixels, read_files)
    pos = {im.id: i for i, im in enumerate(raw.images)}
    anns = raw.annotations
    img_of = np.array([pos[a.image_id] for a in anns], np.int64)
    boxes = np.array([a.box for a in anns], np.float64).reshape(-1, 4)
    keep = check_boxes(raw, problems, boxes, img_of, keep_image)
    for k, a in enumerate(anns):
        for fld in a.missing:
            problems.add(f"missing_{fld}", _where(raw.images[img_of[k]], a, fld) +
                         f": missing, {RULES['missing_' + fld][1]}")
    problems.raise_fatal()
    store = _pack(raw, keep_image, keep, img_of, boxes)
    store.report = report_of(store, problems, strict)
    annotated: dict[int, int] = {}
    for a in anns:
        annotated[a.category_id] = annotated.get(a.category_id, 0) + 1
    store.report["annotated_per_category"] = {str(c): n for c, n in sorted(annotated.items())}
    store.report["images_listed"] = len(raw.images)
    if len(store) == 0:
        raise DataError(f"{raw.category_source or raw.images_dir}: the dataset has no usable "
                        "images" + (f" ({len(raw.images)} listed, all skipped)"
                                    if raw.images else ""))
    return store


def _pack(raw: RawIndex, keep_image, keep, img_of, boxes) -> AnnotationStore:
    order = np.flatnonzero(keep)
    order = order[np.argsort(img_of[order], kind="stable")]
    new_pos = np.cumsum(keep_image) - 1
    counts = np.bincount(new_pos[img_of[order]], minlength=int(keep_image.sum()))
    images = [im for im, k in zip(raw.images, keep_image) if k]
    anns = [raw.annotations[k] for k in order]
    b = boxes[order].astype(np.float32)
    box_area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    areas = np.array([a.area if a.area is not None else float(box_area[j])
                      for j, a in enumerate(anns)], np.float32)
    segm_bytes, segm_offsets = pack_segmentations([a.segmentation for a in anns])
    return AnnotationStore(
        image_ids=np.array([im.id for im in images], np.int64),
        widths=np.array([im.width for im in images], np.int32),
        heights=np.array([im.height for im in images], np.int32),
        file_names=np.array([im.file_name.encode("utf-8") for im in images], dtype=bytes),
        ann_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=b.reshape(-1, 4), category_ids=np.array([a.category_id for a in anns], np.int64),
        ann_ids=np.array([a.id for a in anns], np.int64), areas=areas,
        crowd=np.array([bool(a.iscrowd) for a in anns], bool),
        segm_bytes=segm_bytes, segm_offsets=segm_offsets,
        categories=sorted(raw.categories) if raw.categories else [], images_dir=raw.images_dir,
        report={})


def report_of(store: AnnotationStore, problems: Problems, strict: bool) -> dict:
    """Counts for the log and ``rcnn-data check`` (stored in the index cache)."""
    n_ann = np.diff(store.ann_offsets)
    n_target = store.targets_per_image()
    ids = [c for c, _ in store.categories]
    notes = []
    if ids and ids != list(range(1, len(ids) + 1)):
        notes.append(f"category ids {ids} are not 1..{len(ids)}: mapped to contiguous labels "
                     f"1..{len(ids)} and back in results")
    unused = sorted(set(ids) - set(store.category_ids.tolist()))
    if unused:
        notes.append(f"categories {unused} have no annotation in this split")
    return {"policy": "strict" if strict else "lenient", "problems": problems.summary(),
            "images": int(len(store)), "annotations": int(len(store.boxes)),
            "crowd": int(store.crowd.sum()), "empty_images": int((n_ann == 0).sum()),
            "crowd_only_images": int(((n_ann > 0) & (n_target == 0)).sum()), "notes": notes}


def log_report(report: dict, name: str) -> None:
    for rule, p in report["problems"].items():
        log.warning("%s: %d %s (%s), e.g. %s", name, p["count"], rule.replace("_", " "),
                    p["action"], p["examples"][0])
    for note in report["notes"]:
        log.info("%s: %s", name, note)
