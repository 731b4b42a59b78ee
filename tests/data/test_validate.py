"""Every validation rule on small hand-made COCO files; messages name file, ids and field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rcnn_cli.data.coco import parse_coco
from rcnn_cli.data.images import read_image
from rcnn_cli.data.validate import validate_index
from rcnn_cli.errors import DataError
from tests.data.helpers import coco_file, write_image


def load(tmp_path, strict=False, max_pixels=0, **kw):
    path, img_dir = coco_file(tmp_path, **kw)
    return path, validate_index(parse_coco(path, img_dir), strict, max_pixels)


def fails(tmp_path, *needles, strict=False, **kw):
    with pytest.raises(DataError) as e:
        load(tmp_path, strict=strict, **kw)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    return str(e.value)


def ann(aid=10, image_id=1, cat=1, bbox=(2, 3, 10, 8), **extra):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": list(bbox),
            "area": 80, "iscrowd": 0, **extra}


def test_a_clean_file_loads_into_arrays(tmp_path):
    _, store = load(tmp_path)
    assert store.boxes.tolist() == [[2, 3, 12, 11]]
    assert store.report["problems"] == {}
    for name in ("image_ids", "boxes", "ann_offsets", "file_names", "category_ids"):
        assert getattr(store, name).dtype != object  # no per-image Python objects


@pytest.mark.parametrize("bbox", [(2, 3, 0, 8), (2, 3, 10, -1)])
def test_degenerate_box_dropped_lenient_error_strict(tmp_path, bbox):
    anns = [ann(10), ann(11, bbox=bbox)]
    path, store = load(tmp_path, annotations=anns)
    assert store.ann_ids.tolist() == [10]
    assert store.report["problems"]["degenerate_box"]["count"] == 1
    fails(tmp_path, str(path), "image id 1", "annotation id 11", "'bbox'", "degenerate_box",
          strict=True, annotations=anns)


def test_nan_and_infinity_are_errors_naming_the_annotation(tmp_path):
    text = json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
                       "annotations": [ann(5, bbox=(1, 1, 5, 5)), ann(6, bbox=(1, 1, 5, 5))],
                       "categories": [{"id": 1, "name": "x"}]})
    text = text.replace("[1, 1, 5, 5]", "[NaN, 1, 5, 5]", 1).replace("[1, 1, 5, 5]",
                                                                      "[1, 1, Infinity, 5]")
    msg = fails(tmp_path, "annotation id 5", "annotation id 6", "nonfinite_box",
                raw_text=text)
    assert "ann.json" in msg


def test_box_partly_outside_is_clamped_fully_outside_dropped(tmp_path):
    anns = [ann(1, bbox=(30, 20, 20, 20)), ann(2, bbox=(100, 100, 5, 5)), ann(3)]
    _, store = load(tmp_path, annotations=anns)
    assert store.ann_ids.tolist() == [1, 3]
    assert store.boxes[0].tolist() == [30, 20, 40, 30]
    probs = store.report["problems"]
    assert probs["box_partly_outside_image"]["count"] == 1
    assert probs["box_outside_image"]["count"] == 1
    fails(tmp_path, "annotation id 1", "annotation id 2", "image id 1", strict=True,
          annotations=anns)


def test_unknown_category_is_an_error(tmp_path):
    fails(tmp_path, "annotation id 10", "'category_id'", "unknown category 9",
          annotations=[ann(10, cat=9)])


@pytest.mark.parametrize("kind", ["image", "annotation", "category"])
def test_duplicate_ids_are_errors(tmp_path, kind):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    anns = [ann(10)]
    cats = [{"id": 1, "name": "x"}]
    if kind == "image":
        images.append({"id": 1, "file_name": "b.png", "width": 40, "height": 30})
    elif kind == "annotation":
        anns.append(ann(10, bbox=(5, 5, 5, 5)))
    else:
        cats.append({"id": 1, "name": "y"})
    msg = fails(tmp_path, f"duplicate_{kind}_id", f"{kind.replace('annotation', 'annotation')} id",
                images=images, annotations=anns, categories=cats)
    assert "ann.json" in msg


def test_annotation_for_a_missing_image(tmp_path):
    fails(tmp_path, "annotation id 10", "image id 7 is not in the images list",
          annotations=[ann(10, image_id=7)])


def test_missing_image_files_listed_with_total(tmp_path):
    images = [{"id": i, "file_name": f"m{i}.png", "width": 40, "height": 30} for i in (1, 2, 3)]
    path, img_dir = coco_file(tmp_path, images=images, annotations=[], write_images=False)
    with pytest.raises(DataError) as e:
        validate_index(parse_coco(path, img_dir), strict=False)
    assert "3 of 3 image files are missing" in str(e.value) and "m1.png" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"just some text, not an image"])
def test_unreadable_image_skipped_lenient_error_strict(tmp_path, content):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "bad.jpg", "width": 40, "height": 30}]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.jpg").write_bytes(content)
    anns = [ann(10), ann(11, image_id=2)]
    _, store = load(tmp_path, images=images, annotations=anns)
    assert store.image_ids.tolist() == [1]
    assert store.report["problems"]["unreadable_image"]["count"] == 1
    fails(tmp_path, "bad.jpg", "image id 2", "unreadable_image", strict=True, images=images,
          annotations=anns)


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    write_image(tmp_path / "t.jpg", 64, 48)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")


def test_size_mismatch_reports_both_sizes(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "b.png", "width": 30, "height": 40}]
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "b.png", 40, 30)  # e.g. EXIF-rotated in the annotation
    anns = [ann(10), ann(11, image_id=2)]
    _, store = load(tmp_path, images=images, annotations=anns)
    assert store.image_ids.tolist() == [1]
    fails(tmp_path, "image id 2", "annotation says 30x40, the file is 40x30", strict=True,
          images=images, annotations=anns)


def test_missing_iscrowd_and_area_are_filled_and_reported(tmp_path):
    a = {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8]}
    _, store = load(tmp_path, annotations=[a], strict=True)
    assert store.areas.tolist() == [80.0] and store.crowd.tolist() == [False]
    probs = store.report["problems"]
    assert probs["missing_iscrowd"]["count"] == 1 and probs["missing_area"]["count"] == 1
    assert "annotation id 10" in probs["missing_area"]["examples"][0]


def test_crowd_is_an_ignore_region_not_a_target(tmp_path):
    from rcnn_cli.data.annotations import StoredDataset

    anns = [ann(10), ann(11, bbox=(20, 10, 10, 10), iscrowd=1)]
    _, store = load(tmp_path, annotations=anns)
    ds = StoredDataset(store)
    assert ds.target(0)["boxes"].tolist() == [[2, 3, 12, 11]]
    gt = ds.coco_gt()["annotations"]
    assert [a["iscrowd"] for a in gt] == [0, 1]


def test_empty_and_crowd_only_images_counted_and_filtered_for_training(tmp_path):
    from rcnn_cli.data.annotations import StoredDataset
    from rcnn_cli.data.build import drop_empty

    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30}
              for i in (1, 2, 3, 4, 5)]
    anns = [ann(10), ann(11, image_id=3, iscrowd=1), ann(12, image_id=4),
            ann(13, image_id=4, bbox=(20, 10, 5, 5))]
    _, store = load(tmp_path, images=images, annotations=anns)  # image 5 (the last): empty
    assert store.report["empty_images"] == 2 and store.report["crowd_only_images"] == 1
    ds = StoredDataset(store)
    assert len(ds) == 5 and len(ds.coco_gt()["images"]) == 5  # evaluation keeps them
    train = drop_empty(ds, "coco")
    assert train.image_ids.tolist() == [1, 4]
    assert train.store.ann_ids.tolist() == [10, 12, 13]
    assert train.target(1)["boxes"].tolist() == [[2, 3, 12, 11], [20, 10, 25, 15]]


def test_empty_dataset_is_an_error(tmp_path):
    fails(tmp_path, "no usable images", images=[], annotations=[])


def test_pixel_limit(tmp_path):
    fails(tmp_path, "image id 1", "40x30 pixels exceeds dataset.max_pixels=100",
          max_pixels=100)


def test_non_contiguous_category_ids_map_to_contiguous_labels(tmp_path):
    from rcnn_cli.data.annotations import StoredDataset

    cats = [{"id": 42, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    anns = [ann(1, cat=42), ann(2, cat=3, bbox=(1, 1, 4, 4)), ann(3, cat=7, bbox=(5, 5, 4, 4))]
    _, store = load(tmp_path, annotations=anns, categories=cats)
    ds = StoredDataset(store)
    assert ds.classes == ["a", "b", "c"] and ds.category_ids == [3, 7, 42]
    assert ds.target(0)["labels"].tolist() == [3, 1, 2]
    assert "not 1..3" in store.report["notes"][0]


def test_structure_errors_name_the_field(tmp_path):
    fails(tmp_path, "annotation id 10", "'bbox'", annotations=[ann(10, bbox=("a", 1, 2, 3))])
    fails(tmp_path, "invalid JSON at line 1", raw_text="{not json")
    fails(tmp_path, "annotations[0]", "'id'", annotations=[{"image_id": 1}])


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16"])
def test_image_modes_are_converted_to_rgb_uint8(tmp_path, mode):
    arr = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40)
    img = (Image.fromarray(arr) if mode == "I;16"  # uint16 -> I;16
           else Image.fromarray(np.full((30, 40, 3), 99, np.uint8)).convert(mode))
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = read_image(path)
    assert out.shape == (3, 30, 40) and out.dtype == torch.uint8


def test_index_is_cached_and_invalidated_by_a_changed_file(tmp_path, index_cache):
    from omegaconf import OmegaConf

    from rcnn_cli.config import CocoConf
    from rcnn_cli.data.coco import load_coco_split

    path, img_dir = coco_file(tmp_path)
    cfg = OmegaConf.merge(OmegaConf.structured(CocoConf),
                          {"train_json": str(path), "train_images": str(img_dir),
                           "val_json": str(path), "val_images": str(img_dir)})
    first = load_coco_split(cfg, "train")
    assert len(list(index_cache.glob("coco-*.npz"))) == 1
    again = load_coco_split(cfg, "train")
    assert np.array_equal(first.boxes, again.boxes)
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = [1, 1, 5, 5]
    path.write_text(json.dumps(data))
    changed = load_coco_split(cfg, "train")
    assert changed.boxes.tolist() == [[1, 1, 6, 6]]
    assert len(list(index_cache.glob("coco-*.npz"))) == 2


def test_ids_must_be_integers(tmp_path):
    fails(tmp_path, "ann.json", "images[0], field 'id': not an integer: 'a'",
          images=[{"id": "a", "file_name": "a.png", "width": 40, "height": 30}])
    fails(tmp_path, "annotations[0], field 'id': not an integer: 1.5", annotations=[ann(1.5)])


def test_train_and_val_must_agree_on_categories(tmp_path):
    from rcnn_cli.data.build import build_raw_dataset, check_same_classes
    from tests.conftest import compose_cfg
    from tests.data.helpers import shapes_to_disk

    a = shapes_to_disk(tmp_path / "a", n_train=2, n_val=2)
    b = shapes_to_disk(tmp_path / "b", n_train=2, n_val=2, category_ids=(3, 7, 42))
    cfg = compose_cfg("train", ["dataset=coco", f"dataset.train_json={a['train_json']}",
                                f"dataset.train_images={a['train_images']}",
                                f"dataset.val_json={b['val_json']}",
                                f"dataset.val_images={b['val_images']}"]).dataset
    train, val = build_raw_dataset(cfg, "train"), build_raw_dataset(cfg, "val")
    with pytest.raises(DataError, match="val split's categories .* differ from the train"):
        check_same_classes(train, val, "coco")
    check_same_classes(train, build_raw_dataset(cfg, "train"), "coco")


def test_a_category_without_annotations_is_noted(tmp_path):
    cats = [{"id": 1, "name": "x"}, {"id": 5, "name": "y"}]
    _, store = load(tmp_path, categories=cats)
    assert "categories [5] have no annotation in this split" in store.report["notes"]
