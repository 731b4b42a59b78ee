"""Tiny hand-made COCO / VOC datasets on disk (images from the shapes generator)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from rcnn_cli.data.shapes import CLASSES, ShapesDataset

REPO = Path(__file__).resolve().parents[2]
# ../shared/data/BCCD relative to the checkout (RCNN_CLI_BCCD overrides); tests skip without it
BCCD = Path(os.environ.get("RCNN_CLI_BCCD") or REPO.parent / "shared" / "data" / "BCCD")


def write_image(path: Path, w: int = 40, h: int = 30, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).convert(mode).save(path)


def coco_file(tmp: Path, images=None, annotations=None, categories=None, name="ann.json",
              write_images=True, raw_text: str | None = None) -> tuple[Path, Path]:
    """A COCO JSON with one 40x30 image (id 1) and one box unless given otherwise."""
    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    annotations = annotations if annotations is not None else [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "area": 80,
         "iscrowd": 0}]
    categories = categories if categories is not None else [{"id": 1, "name": "thing"}]
    img_dir = tmp / "images"
    if write_images:
        for im in images:
            if not (img_dir / im["file_name"]).exists():
                write_image(img_dir / im["file_name"], im.get("width") or 40,
                            im.get("height") or 30)
    path = tmp / name
    path.write_text(raw_text if raw_text is not None else json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return path, img_dir


def shapes_to_disk(tmp: Path, n_train: int = 8, n_val: int = 4, size: int = 64,
                   category_ids=(1, 2, 3)) -> dict:
    """The shapes dataset written as PNG files + COCO JSON and as a VOC tree."""
    out = {}
    voc = tmp / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        ds = ShapesDataset(split, n, size)
        gt = ds.coco_gt()
        names = []
        for i in range(n):
            image, target = ds.raw(i)
            stem = f"{split}_{i:04d}"
            Image.fromarray(image).save(voc / "JPEGImages" / f"{stem}.png")
            names.append(stem)
            gt["images"][i]["file_name"] = f"{stem}.png"
            objs = "".join(
                f"<object><name>{CLASSES[lab - 1]}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax>"
                f"<ymax>{b[3]:g}</ymax></bndbox></object>"
                for b, lab in zip(target["boxes"], target["labels"]))
            (voc / "Annotations" / f"{stem}.xml").write_text(
                f"<annotation><filename>{stem}.png</filename><size><width>{size}</width>"
                f"<height>{size}</height><depth>3</depth></size>{objs}</annotation>")
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        remap = dict(zip((1, 2, 3), category_ids))
        for a in gt["annotations"]:
            a["category_id"] = remap[a["category_id"]]
        for c in gt["categories"]:
            c["id"] = remap[c["id"]]
        path = tmp / f"{split}.json"
        path.write_text(json.dumps(gt))
        out[f"{split}_json"] = str(path)
        out[f"{split}_images"] = str(voc / "JPEGImages")
    out["voc_root"] = str(voc)
    return out


def voc_object(name="cell", box=(2, 3, 12, 11), difficult=0) -> str:
    coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult>"
            f"<bndbox>{coords}</bndbox></object>")


def voc_tree(tmp: Path, images: dict[str, list[str]] | None = None, splits=None,
             size=(40, 30), file_size: dict[str, tuple[int, int]] | None = None,
             no_size=(), raw_xml: dict[str, str] | None = None) -> Path:
    """A VOC tree under ``tmp/voc``: ``images`` maps an id to its ``<object>`` snippets;
    ``splits`` maps a split name to ids (default: ``train`` = all, ``val`` = all)."""
    images = images if images is not None else {"img1": [voc_object()]}
    splits = splits if splits is not None else {"train": list(images), "val": list(images)}
    root = tmp / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, objects in images.items():
        w, h = (file_size or {}).get(stem, size)
        write_image(root / "JPEGImages" / f"{stem}.jpg", w, h)
        size_xml = ("" if stem in no_size else
                    f"<size><width>{size[0]}</width><height>{size[1]}</height>"
                    "<depth>3</depth></size>")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename>{size_xml}{''.join(objects)}"
            "</annotation>")
    for stem, text in (raw_xml or {}).items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def voc_cfg(root: Path, **kw):
    from omegaconf import OmegaConf

    from rcnn_cli.config import VocConf

    return OmegaConf.merge(OmegaConf.structured(VocConf),
                           {"root": str(root), "train_split": "train", "val_split": "val", **kw})
