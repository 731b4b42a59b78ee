"""``dataset=coco``: a COCO-format JSON file and an image folder per split.

Category ids of any kind (``{3, 7, 42}``) become contiguous labels ``1..K`` in id order and
are mapped back in results; ``iscrowd`` regions are ignore regions (never training targets,
``iscrowd=1`` in evaluation); polygons / RLE are kept for Mask R-CNN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rcnn_cli.data.validate import RawAnnotation, RawImage, RawIndex
from rcnn_cli.errors import DataError


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read annotation file ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: "
                        f"{e.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', "
                        "'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: field '{key}' is missing or not a list")
    return data


def _integer_id(value, what: str, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"{path}: {what}, field 'id': not an integer: {value!r}")
    return value


def _require(obj: dict, keys: tuple[str, ...], what: str, path: Path) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {what}: expected an object, got {type(obj).__name__}")
    for key in keys:
        if key not in obj:
            raise DataError(f"{path}: {what}, field '{key}': missing")


def parse_coco(json_path: str | Path, images_dir: str | Path) -> RawIndex:
    """Read a COCO JSON into a :class:`RawIndex` (structure errors raise ``DataError``)."""
    path = Path(json_path)
    data = load_json(path)
    src = str(path)
    categories = []
    for n, c in enumerate(data["categories"]):
        _require(c, ("id", "name"), f"categories[{n}]", path)
        _integer_id(c["id"], f"categories[{n}]", path)
        categories.append((c["id"], str(c["name"])))
    images = []
    for n, im in enumerate(data["images"]):
        _require(im, ("id", "file_name"), f"images[{n}]", path)
        _integer_id(im["id"], f"images[{n}]", path)
        w, h = im.get("width"), im.get("height")
        if (w is not None and not _number(w)) or (h is not None and not _number(h)):
            raise DataError(f"{path}: image id {im['id']}, field 'width/height': not numbers")
        images.append(RawImage(im["id"], str(im["file_name"]),
                               None if w is None else int(w), None if h is None else int(h), src))
    anns = []
    for n, a in enumerate(data["annotations"]):
        _require(a, ("id",), f"annotations[{n}]", path)
        _integer_id(a["id"], f"annotations[{n}]", path)
        where = f"annotation id {a['id']}"
        _require(a, ("image_id", "category_id", "bbox"), where, path)
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            raise DataError(f"{path}: image id {a['image_id']}, {where}, field 'bbox': expected "
                            f"[x, y, width, height] numbers, got {box!r}")
        x, y, bw, bh = (float(v) for v in box)
        area = a.get("area")
        if area is not None and not (_number(area) and math.isfinite(area)):
            raise DataError(f"{path}: image id {a['image_id']}, {where}, field 'area': {area!r}")
        missing = tuple(k for k in ("iscrowd", "area") if k not in a)
        anns.append(RawAnnotation(
            id=a["id"], image_id=a["image_id"], category_id=a["category_id"],
            box=[x, y, x + bw, y + bh], source=src, where=where, box_field="bbox",
            iscrowd=int(bool(a.get("iscrowd", 0))), area=area,
            segmentation=a.get("segmentation") or None, missing=missing))
    return RawIndex(images, anns, categories, str(images_dir), category_source=src)


def split_paths(cfg, split: str) -> tuple[Path, Path]:
    from rcnn_cli.errors import ConfigError

    json_path, images = cfg.get(f"{split}_json"), cfg.get(f"{split}_images")
    if not json_path or not images:
        raise ConfigError(f"dataset=coco: split '{split}' needs dataset.{split}_json and "
                          f"dataset.{split}_images")
    return Path(json_path).expanduser(), Path(images).expanduser()


def load_coco_split(cfg, split: str):
    """Parse, validate (``cfg.validation``) and cache one split's index."""
    from rcnn_cli.data.cache import cached_store
    from rcnn_cli.data.validate import validate_index

    json_path, images = split_paths(cfg, split)
    strict = str(getattr(cfg.validation, "value", cfg.validation)) == "strict"

    def build():
        return validate_index(parse_coco(json_path, images), strict, cfg.max_pixels,
                              cfg.check_files)

    params = {"images": str(images.resolve()), "strict": strict, "max_pixels": cfg.max_pixels,
              "check_files": cfg.check_files}
    return cached_store("coco", [json_path, images], params, build, cfg.cache, cfg.cache_dir)
