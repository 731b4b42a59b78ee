"""A generated COCO ground truth and detections: several classes, crowd regions, empty images."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

SIZE = 160


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def _ellipse(box) -> np.ndarray:
    x, y, w, h = box
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    return ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 <= 1


def _box(rng) -> list[float]:
    w, h = rng.uniform(6, 110, 2)
    x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
    return [float(x), float(y), float(w), float(h)]


def _false_positive(rng, image_id: int, category_ids) -> dict:
    return {"image_id": image_id, "bbox": _box(rng), "category_id": int(rng.choice(category_ids)),
            "score": float(rng.random() * 0.7)}


def generate(num_images: int = 300, category_ids=(1, 3, 7, 8), seed: int = 0,
             masks: bool = False, dets_per_image: int = 0) -> tuple[dict, list[dict]]:
    """``dets_per_image`` > 0: pad each image's detections with false positives (or keep its
    highest-scoring ones) to exactly that many, as a detector's ``detections_per_img`` does."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.png"}
              for i in range(1, num_images + 1)]
    anns, dets = [], []
    for img in images:
        mine = []
        empty = rng.random() < 0.15
        for _ in range(0 if empty else int(rng.integers(1, 6))):
            box, cat = _box(rng), int(rng.choice(category_ids))
            crowd = int(rng.random() < 0.08)
            ann = {"id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "bbox": box,
                   "area": box[2] * box[3], "iscrowd": crowd}
            if masks:
                m = _ellipse(box)
                ann["segmentation"], ann["area"] = _rle(m), float(m.sum())
            anns.append(ann)
            for _ in range(int(rng.integers(0, 3))):  # hits, near misses and duplicates
                jitter = np.array(box) + rng.normal(0, 0.12, 4) * np.array([box[2], box[3]] * 2)
                jitter[2:] = np.maximum(jitter[2:], 1.0)
                same = rng.random() < 0.85
                mine.append({"image_id": img["id"], "bbox": [float(v) for v in jitter],
                             "category_id": cat if same else int(rng.choice(category_ids)),
                             "score": float(rng.random())})
        # false positives, also on empty images
        mine += [_false_positive(rng, img["id"], category_ids)
                 for _ in range(int(rng.integers(0, 4)))]
        if dets_per_image:
            mine += [_false_positive(rng, img["id"], category_ids)
                     for _ in range(dets_per_image - len(mine))]
            mine = sorted(mine, key=lambda d: -d["score"])[:dets_per_image]
        dets += mine
    if masks:
        for d in dets:
            d["segmentation"] = _rle(_ellipse(d["bbox"]))
    cats = [{"id": c, "name": f"class{c}"} for c in category_ids]
    return {"images": images, "annotations": anns, "categories": cats}, dets
