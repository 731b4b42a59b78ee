"""The dataset doctor behind ``rcnn-data``: check (report), browse (PNG grid), convert."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from rcnn_cli.console import table_console
from rcnn_cli.data.annotations import AnnotationStore, coco_ground_truth
from rcnn_cli.data.loader import sample_seed
from rcnn_cli.errors import ConfigError, DataError

# box side sqrt(w*h) buckets: COCO small / medium / large, then very large
SIZE_EDGES = [0, 16, 32, 64, 96, 128, 256, 512, float("inf")]


def split_store(cfg, split: str) -> AnnotationStore:
    """A split as an annotation store; ``shapes`` is packed from its COCO ground truth."""
    from rcnn_cli.data.build import build_raw_dataset, load_store

    if cfg.name in ("coco", "voc"):
        return load_store(cfg, split)
    return store_from_coco(build_raw_dataset(cfg, split).coco_gt(), "")


def store_from_coco(gt: dict, images_dir: str) -> AnnotationStore:
    from rcnn_cli.data.validate import RawAnnotation, RawImage, RawIndex, validate_index

    images = [RawImage(i["id"], i["file_name"], i["width"], i["height"], "<generated>")
              for i in gt["images"]]
    anns = [RawAnnotation(a["id"], a["image_id"], a["category_id"],
                          [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]], "<generated>", f"annotation id {a['id']}",
                          iscrowd=a.get("iscrowd", 0), area=a.get("area"))
            for a in gt["annotations"]]
    cats = [(c["id"], c["name"]) for c in gt["categories"]]
    return validate_index(RawIndex(images, anns, cats, images_dir), strict=True, read_files=False)


def split_stats(store: AnnotationStore) -> dict:
    """Images, boxes per class (used / ignore regions / as annotated), box-size histogram."""
    names = dict(store.categories)
    annotated = store.report.get("annotated_per_category", {})
    per_class = {}
    for cid, name in store.categories:
        sel = store.category_ids == cid
        per_class[name] = {"boxes": int((sel & ~store.crowd).sum()),
                           "ignored": int((sel & store.crowd).sum()),
                           "annotated": int(annotated.get(str(cid), (sel).sum()))}
    b = store.boxes[~store.crowd]
    side = np.sqrt(np.clip((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 0, None))
    hist, _ = np.histogram(side, bins=SIZE_EDGES)
    return {"images": len(store), "images_listed": store.report.get("images_listed", len(store)),
            "boxes": int(len(b)), "per_class": per_class,
            "size_histogram": {f"{lo:g}-{hi:g}": int(n)
                               for lo, hi, n in zip(SIZE_EDGES[:-1], SIZE_EDGES[1:], hist)},
            "empty_images": store.report.get("empty_images", 0),
            "problems": store.report.get("problems", {}), "notes": store.report.get("notes", []),
            "classes": [names[c] for c, _ in store.categories]}


def decode_all(store: AnnotationStore) -> list[str]:
    """Fully decode every image (catches truncated files the header check cannot see)."""
    from rcnn_cli.data.images import read_image

    bad = []
    for i in range(len(store)):
        try:
            read_image(store.path(i))
        except DataError as e:
            bad.append(str(e))
    return bad


def check(cfg, console: Console | None = None) -> dict:
    console = console or table_console()
    result = {}
    for split in cfg.splits:
        stats = split_stats(split_store(cfg.dataset, split))
        if cfg.decode and cfg.dataset.name != "shapes":
            stats["undecodable"] = decode_all(split_store(cfg.dataset, split))
        result[split] = stats
    result["total"] = total(result)
    print_check(result, cfg.dataset.name, console)
    if cfg.get("anchors") is not None and "train" in cfg.splits:
        result["anchors"] = anchor_coverage(cfg, split_store(cfg.dataset, "train"))
        a = result["anchors"]
        console.print(f"anchors={a['name']} (sizes {a['sizes']}, ratios h/w {a['ratios']}): "
                      f"{100 * a['uncovered']:.1f}% of {a['boxes']} training boxes have no "
                      f"anchor with IoU >= {a['iou']:g} (the RPN's positive IoU, rpn_iou)")
    return result


def anchor_coverage(cfg, store: AnnotationStore) -> dict:
    """Share of training boxes (at the model's input scale) that no anchor shape covers with
    IoU >= ``rpn_iou``; ``anchors=auto`` reports the anchors it would fit."""
    from rcnn_cli.modeling.anchors import (
        anchor_shapes,
        fit_anchors,
        input_box_shapes,
        uncovered_share,
    )

    a, d = cfg.anchors, cfg.dataset
    wh = input_box_shapes(coco_ground_truth(store), d.min_size, d.max_size)
    if a.name == "auto":
        sizes, ratios = fit_anchors(wh, int(a.levels), len(a.aspect_ratios), int(cfg.seed))
    else:
        sizes = [list(s) for s in a.sizes]
        ratios = [list(r) for r in (a.get("level_aspect_ratios") or [a.aspect_ratios] * len(sizes))]
    shapes = torch.cat([anchor_shapes(s, r) for s, r in zip(sizes, ratios)])
    return {"name": a.name, "sizes": sizes, "ratios": ratios, "iou": float(cfg.rpn_iou),
            "boxes": len(wh), "uncovered": uncovered_share(wh, shapes, float(cfg.rpn_iou))}


def total(result: dict) -> dict:
    splits = list(result.values())
    out = {"images": sum(s["images"] for s in splits),
           "images_listed": sum(s["images_listed"] for s in splits),
           "boxes": sum(s["boxes"] for s in splits), "per_class": {},
           "problems": {}}
    for s in splits:
        for name, c in s["per_class"].items():
            acc = out["per_class"].setdefault(name, {"boxes": 0, "ignored": 0, "annotated": 0})
            for k in acc:
                acc[k] += c[k]
        for rule, p in s["problems"].items():
            acc = out["problems"].setdefault(rule, {"count": 0, "action": p["action"],
                                                    "examples": []})
            acc["count"] += p["count"]
            acc["examples"] += p["examples"]
    return out


def print_check(result: dict, name: str, console: Console) -> None:
    splits = [k for k in result if k != "total"]
    t = Table(title=f"dataset={name}: boxes per class")
    t.add_column("class")
    for s in splits + ["total"]:
        t.add_column(s, justify="right")
    classes = list(result["total"]["per_class"])
    for c in classes:
        row = []
        for s in splits + ["total"]:
            pc = result[s]["per_class"][c]
            extra = f" (+{pc['ignored']} ignored)" if pc["ignored"] else ""
            row.append(f"{pc['annotated']}{extra}")
        t.add_row(c, *row)
    t.add_row("images", *[f"{result[s]['images']} of {result[s]['images_listed']}"
                          for s in splits + ["total"]])
    console.print(t)
    h = Table(title="box size sqrt(w*h), pixels (training boxes)")
    h.add_column("size")
    for s in splits:
        h.add_column(s, justify="right")
    for bucket in result[splits[0]]["size_histogram"]:
        h.add_row(bucket, *[str(result[s]["size_histogram"][bucket]) for s in splits])
    console.print(h)
    problems = result["total"]["problems"]
    p = Table(title=f"problems found ({sum(v['count'] for v in problems.values())})")
    for col in ("rule", "count", "action", "where"):
        p.add_column(col)
    for rule, v in problems.items():
        p.add_row(rule, str(v["count"]), v["action"], "\n".join(v["examples"]))
    console.print(p)
    for s in splits:
        for note in result[s]["notes"]:
            console.print(f"[dim]{s}: {note}[/dim]")
        for bad in result[s].get("undecodable", []):
            console.print(f"[red]{s}: {bad}[/red]")


def browse(cfg, out: Path, tile: int = 320) -> Path:
    """A PNG grid of ``cfg.n`` images of ``cfg.split`` with ground-truth boxes, masks, names;
    with ``augment=true`` the training images as the training augmentation makes them."""
    from torchvision.io import encode_png
    from torchvision.utils import make_grid

    from rcnn_cli.data.build import build_dataset, build_raw_dataset
    from rcnn_cli.io import atomic_write_bytes

    raw = build_raw_dataset(cfg.dataset, cfg.split)
    has_masks = getattr(getattr(raw, "store", None), "has_masks", False)
    if has_masks:
        raw.with_masks = True
    rng = np.random.default_rng(cfg.seed)
    picks = sorted(rng.choice(len(raw), size=min(cfg.n, len(raw)), replace=False).tolist())
    augmented = None
    if cfg.get("augment", False):
        augmented = build_dataset(cfg.dataset, "train", train=True, with_masks=has_masks)
        picks = sorted(rng.choice(len(augmented), size=min(cfg.n, len(augmented)),
                                  replace=False).tolist())
    tiles = []
    for i in picks:
        if augmented is not None:
            image, target = augmented[(i, sample_seed(cfg.seed, 0, i))]
            image = (image * 255).round().to(torch.uint8)
            classes = augmented.raw.classes
        else:
            image, target = raw.raw(i)
            image = torch.as_tensor(image)
            if image.shape[-1] == 3:
                image = image.permute(2, 0, 1)
            classes = raw.classes
        tiles.append(_tile(image.contiguous(), target, classes, tile))
    grid = make_grid(tiles, nrow=int(np.ceil(np.sqrt(len(tiles)))), padding=4)
    return atomic_write_bytes(out, encode_png(grid).numpy().tobytes())


def _tile(image: torch.Tensor, target: dict, classes: list[str], tile: int) -> torch.Tensor:
    """uint8 image with its masks and named boxes drawn, fitted into a ``tile`` square."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    if "masks" in target and len(target["masks"]):
        image = draw_segmentation_masks(image, torch.as_tensor(target["masks"]).bool(), 0.4)
    names = [classes[int(lab) - 1] for lab in target["labels"]]
    image = draw_bounding_boxes(image, torch.as_tensor(target["boxes"]), names, width=2,
                                colors="yellow")
    h, w = image.shape[-2:]
    scale = tile / max(h, w)
    image = F.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))])
    return F.pad(image, [0, 0, tile - image.shape[-1], tile - image.shape[-2]])


def convert(cfg, out: Path) -> list[Path]:
    """Write each split of a VOC (or COCO) dataset as COCO JSON: ``out/<split>.json``."""
    from rcnn_cli.io import atomic_write_text

    if cfg.dataset.name not in ("voc", "coco"):
        raise ConfigError(f"rcnn-data convert reads dataset=voc or dataset=coco, not "
                          f"dataset={cfg.dataset.name}")
    written = []
    for split in cfg.splits:
        store = split_store(cfg.dataset, split)
        gt = coco_ground_truth(store)
        gt["info"] = {"description": f"converted by rcnn-data from dataset={cfg.dataset.name} "
                                     f"split={split}", "images_dir": store.images_dir}
        written.append(atomic_write_text(out / f"{split}.json", json.dumps(gt) + "\n"))
    return written
