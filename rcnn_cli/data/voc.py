"""``dataset=voc``: the Pascal VOC layout (``Annotations/``, ``JPEGImages/``,
``ImageSets/Main/<split>.txt``), parsed with ``defusedxml`` (entity bombs are refused).

Classes: ``dataset.classes`` null = the 20 VOC classes when every name in the files is one of
them, otherwise the names found in the files (sorted); ``[]`` = the names found; a list = exactly
those (any other name is an error). ``difficult`` objects are excluded from training and are
``iscrowd=1`` ignore regions in evaluation, unless ``dataset.use_difficult=true``.
Boxes are read as given (pixel-corner coordinates, ``xmax > xmin``); image ids are the 1-based
line numbers of the split file, annotation ids count objects in that order.
"""

from __future__ import annotations

from pathlib import Path

from rcnn_cli.data.validate import RawAnnotation, RawImage, RawIndex
from rcnn_cli.errors import DataError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def split_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    try:
        lines = path.read_text().split("\n")
    except FileNotFoundError:
        avail = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        raise DataError(f"{path}: split file not found (available: {avail})") from None
    ids, seen = [], {}
    for n, line in enumerate(lines, 1):
        name = line.strip().split(" ")[0] if line.strip() else ""
        if not name:
            continue
        if name in seen:
            raise DataError(f"{path}: image id '{name}' is listed twice (lines {seen[name]} "
                            f"and {n})")
        seen[name] = n
        ids.append(name)
    return ids


def read_xml(path: Path):
    """The XML root; malformed files and entity / DTD tricks raise ``DataError``."""
    import defusedxml
    from defusedxml import ElementTree

    try:
        return ElementTree.parse(str(path), forbid_dtd=True).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except defusedxml.DefusedXmlException as e:
        raise DataError(f"{path}: refused: the XML declares a DTD or entities (possible "
                        f"entity-expansion bomb): {type(e).__name__}") from None
    except ElementTree.ParseError as e:
        raise DataError(f"{path}: malformed XML: {e}") from None


def _text(node, tag: str) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else None


def _int(node, tag: str, path: Path, where: str) -> int | None:
    text = _text(node, tag)
    if text is None:
        return None
    try:
        return int(float(text))
    except ValueError:
        raise DataError(f"{path}: {where}, field '{tag}': not a number: {text!r}") from None


def object_names(root: Path, splits: list[str]) -> list[str]:
    names = set()
    for split in splits:
        for sid in split_ids(root, split):
            xml = root / "Annotations" / f"{sid}.xml"
            for n, obj in enumerate(read_xml(xml).iter("object"), 1):
                name = _text(obj, "name")
                if name is None:
                    raise DataError(f"{xml}: object {n}, field 'name': missing")
                names.add(name)
    return sorted(names)


def resolve_classes(root: Path, splits: list[str], classes: list[str] | None) -> list[str]:
    if classes:
        if len(set(classes)) != len(classes):
            raise DataError(f"dataset.classes has duplicates: {list(classes)}")
        return list(classes)
    found = object_names(root, splits)
    if classes is None and set(found) <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    if not found:
        raise DataError(f"{root}: no <object> names found in the splits {splits}")
    return found


def _box(obj, xml: Path, where: str) -> list[float]:
    bnd = obj.find("bndbox")
    if bnd is None:
        raise DataError(f"{xml}: {where}, field 'bndbox': missing")
    box = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = _text(bnd, tag)
        if text is None:
            raise DataError(f"{xml}: {where}, field 'bndbox/{tag}': missing")
        try:
            box.append(float(text))
        except ValueError:
            raise DataError(f"{xml}: {where}, field 'bndbox/{tag}': not a number: "
                            f"{text!r}") from None
    return box


def parse_voc(root: str | Path, split: str, classes: list[str],
              use_difficult: bool = False) -> RawIndex:
    root = Path(root)
    cat_of = {name: k + 1 for k, name in enumerate(classes)}
    images, anns = [], []
    for image_id, sid in enumerate(split_ids(root, split), 1):
        xml = root / "Annotations" / f"{sid}.xml"
        node = read_xml(xml)
        size = node.find("size")
        w = _int(size, "width", xml, f"image '{sid}'") if size is not None else None
        h = _int(size, "height", xml, f"image '{sid}'") if size is not None else None
        fname = f"{sid}.jpg"
        if not (root / "JPEGImages" / fname).exists() and _text(node, "filename"):
            fname = _text(node, "filename")
        images.append(RawImage(image_id, fname, w or None, h or None, str(xml)))
        for n, obj in enumerate(node.iter("object"), 1):
            where = f"object {n}"
            name = _text(obj, "name")
            if name is None:
                raise DataError(f"{xml}: image id {image_id} ({sid}), {where}, field 'name': "
                                "missing")
            if name not in cat_of:
                raise DataError(f"{xml}: image id {image_id} ({sid}), {where}, field 'name': "
                                f"unknown class {name!r} (dataset.classes: {list(classes)})")
            difficult = (_int(obj, "difficult", xml, where) or 0) > 0
            anns.append(RawAnnotation(
                id=len(anns) + 1, image_id=image_id, category_id=cat_of[name],
                box=_box(obj, xml, f"image id {image_id} ({sid}), {where}"), source=str(xml),
                where=where, box_field="bndbox", iscrowd=int(difficult and not use_difficult)))
    return RawIndex(images, anns, [(k + 1, c) for k, c in enumerate(classes)],
                    str(root / "JPEGImages"),
                    category_source=str(root / "ImageSets" / "Main" / f"{split}.txt"))


def load_voc_split(cfg, split: str):
    """Parse, validate (``cfg.validation``) and cache one split's index."""
    from rcnn_cli.data.cache import cached_store
    from rcnn_cli.data.validate import validate_index

    root = Path(cfg.root).expanduser()
    split_name = cfg.get(f"{split}_split")
    if not split_name:
        from rcnn_cli.errors import ConfigError

        raise ConfigError(f"dataset=voc: split '{split}' needs dataset.{split}_split")
    strict = str(getattr(cfg.validation, "value", cfg.validation)) == "strict"
    splits = [s for s in (cfg.train_split, cfg.val_split) if s]
    configured = None if cfg.classes is None else list(cfg.classes)

    def build():
        classes = resolve_classes(root, splits, configured)
        raw = parse_voc(root, split_name, classes, cfg.use_difficult)
        return validate_index(raw, strict, cfg.max_pixels, cfg.check_files)

    files = [root / "ImageSets" / "Main" / f"{s}.txt" for s in splits + [split_name]]
    for s in sorted(set(splits + [split_name])):
        if files[0].parent.joinpath(f"{s}.txt").is_file():
            files += [root / "Annotations" / f"{i}.xml" for i in split_ids(root, s)]
    files.append(root / "JPEGImages")
    params = {"split": split_name, "classes": configured, "strict": strict,
              "use_difficult": cfg.use_difficult, "max_pixels": cfg.max_pixels,
              "check_files": cfg.check_files}
    return cached_store("voc", files, params, build, cfg.cache, cfg.cache_dir)
