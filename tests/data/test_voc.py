"""dataset=voc on small hand-made VOC trees: every rule names the XML file, image and object."""

from __future__ import annotations

import pytest

from rcnn_cli.data.annotations import StoredDataset
from rcnn_cli.data.voc import VOC_CLASSES, load_voc_split
from rcnn_cli.errors import ConfigError, DataError
from tests.data.helpers import voc_cfg, voc_object, voc_tree


def load(root, strict=False, split="train", **kw):
    cfg = voc_cfg(root, validation="strict" if strict else "lenient", **kw)
    return load_voc_split(cfg, split)


def fails(root, *needles, strict=False, **kw):
    with pytest.raises(DataError) as e:
        load(root, strict=strict, **kw)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    return str(e.value)


def test_a_clean_tree_loads_with_discovered_classes(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object("wbc"), voc_object("rbc", (20, 5, 30, 25))],
                               "b": [voc_object("rbc", (1, 1, 9, 9))]})
    store = load(root)
    assert store.classes == ["rbc", "wbc"]  # names found in the files, sorted
    assert store.image_ids.tolist() == [1, 2]  # 1-based line numbers of the split file
    assert store.file_name(0) == "a.jpg"
    assert store.boxes.tolist() == [[2, 3, 12, 11], [20, 5, 30, 25], [1, 1, 9, 9]]
    assert store.category_ids.tolist() == [2, 1, 1]
    assert store.report["problems"] == {}


def test_class_list_voc20_discovered_or_configured(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object("dog"), voc_object("cat", (5, 5, 20, 20))]})
    assert load(root).classes == list(VOC_CLASSES)  # null: VOC names only -> the 20 classes
    assert load(root, classes=[]).classes == ["cat", "dog"]  # []: discovered
    assert load(root, classes=["dog", "cat", "bird"]).classes == ["dog", "cat", "bird"]
    fails(root, "a.xml", "image id 1", "object 2", "field 'name'", "unknown class 'cat'",
          classes=["dog"])


@pytest.mark.parametrize("box", [(12, 3, 12, 11), (12, 3, 2, 11), (2, 11, 12, 3)])
def test_degenerate_box_dropped_lenient_error_strict(tmp_path, box):
    root = voc_tree(tmp_path, {"a": [voc_object(), voc_object("cell", box)]})
    store = load(root)
    assert len(store.boxes) == 1
    example = store.report["problems"]["degenerate_box"]["examples"][0]
    for needle in ("a.xml", "image id 1", "object 2", "'bndbox'"):
        assert needle in example
    fails(root, "a.xml", "image id 1 (a.jpg)", "object 2", "degenerate_box", strict=True)


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_nonfinite_coordinates_are_errors(tmp_path, value):
    root = voc_tree(tmp_path, {"a": [voc_object(), voc_object("cell", (1, value, 5, 5))]})
    fails(root, "a.xml", "image id 1", "object 2", "nonfinite_box")


def test_non_numeric_or_missing_coordinate_names_the_field(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object("cell", ("x1", 3, 12, 11))]})
    fails(root, "a.xml", "object 1", "field 'bndbox/xmin'", "not a number")
    root = voc_tree(tmp_path / "2", raw_xml={"a": "<annotation><object><name>cell</name>"
                                             "<bndbox><xmin>1</xmin></bndbox></object>"
                                             "</annotation>"}, splits={"train": ["a"], "val": ["a"]})
    fails(root, "a.xml", "object 1", "field 'bndbox/ymin': missing")


def test_box_outside_dropped_partly_outside_clamped(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object("cell", (30, 20, 50, 40)),
                                     voc_object("cell", (45, 35, 60, 50)), voc_object()]})
    store = load(root)
    assert store.boxes.tolist() == [[30, 20, 40, 30], [2, 3, 12, 11]]
    probs = store.report["problems"]
    assert probs["box_partly_outside_image"]["count"] == 1
    assert "object 1" in probs["box_partly_outside_image"]["examples"][0]
    assert "object 2" in probs["box_outside_image"]["examples"][0]
    fails(root, "a.xml", "object 1", "object 2", strict=True)


def test_an_id_listed_twice_in_the_split_file(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object()], "b": [voc_object()]},
                    splits={"train": ["a", "b", "a"], "val": ["a"]})
    fails(root, "train.txt", "image id 'a' is listed twice (lines 1 and 3)")


def test_missing_split_and_annotation_files(tmp_path):
    root = voc_tree(tmp_path, splits={"train": ["img1", "ghost"], "val": ["img1"]})
    fails(root, "ghost.xml", "annotation file not found")
    fails(root, "nope.txt", "split file not found", "available: ['train', 'val']",
          train_split="nope")


def test_missing_image_file_is_an_error(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object()], "b": [voc_object()]})
    (root / "JPEGImages" / "b.jpg").unlink()
    fails(root, "missing_image_file", "1 of 2 image files are missing", "b.jpg")


def test_size_mismatch_skipped_lenient_error_strict(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object()], "b": [voc_object()]},
                    file_size={"b": (50, 30)})
    store = load(root)
    assert store.image_ids.tolist() == [1]
    assert store.report["problems"]["image_size_mismatch"]["count"] == 1
    fails(root, "b.xml", "image id 2", "annotation says 40x30, the file is 50x30", strict=True)


def test_missing_size_is_read_from_the_image(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object()]}, file_size={"a": (44, 33)}, no_size=["a"])
    store = load(root)
    assert (store.widths.tolist(), store.heights.tolist()) == ([44], [33])
    assert "a.xml" in store.report["problems"]["size_from_image_file"]["examples"][0]


def test_difficult_is_ignored_unless_use_difficult(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object(), voc_object("cell", (20, 5, 30, 25), 1)]})
    ds = StoredDataset(load(root))
    assert ds.target(0)["boxes"].tolist() == [[2, 3, 12, 11]]
    assert [a["iscrowd"] for a in ds.coco_gt()["annotations"]] == [0, 1]
    ds = StoredDataset(load(root, use_difficult=True))
    assert len(ds.target(0)["boxes"]) == 2
    assert [a["iscrowd"] for a in ds.coco_gt()["annotations"]] == [0, 0]


def test_empty_images_are_kept_for_evaluation_and_left_out_of_training(tmp_path):
    from rcnn_cli.data.build import build_dataset

    root = voc_tree(tmp_path, {"a": [voc_object()], "b": []})
    assert load(root).report["empty_images"] == 1
    cfg = voc_cfg(root)
    assert len(build_dataset(cfg, "val", train=False)) == 2
    assert len(build_dataset(cfg, "train", train=True)) == 1


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<annotation><object><name>&lol3;</name></object></annotation>"""

EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<annotation><object><name>&secret;</name></object></annotation>"""


@pytest.mark.parametrize("text", [BOMB, EXTERNAL], ids=["entity-bomb", "external-entity"])
def test_entity_tricks_are_refused(tmp_path, text):
    root = voc_tree(tmp_path, {"a": [voc_object()]}, raw_xml={"evil": text},
                    splits={"train": ["a", "evil"], "val": ["a"]})
    fails(root, "evil.xml", "refused", "entity")


def test_malformed_xml_and_missing_name(tmp_path):
    root = voc_tree(tmp_path, {"a": [voc_object()]}, raw_xml={"a": "<annotation><object>"})
    fails(root, "a.xml", "malformed XML")
    root = voc_tree(tmp_path / "2", raw_xml={"a": "<annotation><object><bndbox/></object>"
                                                   "</annotation>"}, splits={"train": ["a"], "val": ["a"]})
    fails(root, "a.xml", "object 1", "field 'name': missing")


def test_voc_has_no_masks(tmp_path):
    from rcnn_cli.data.build import build_raw_dataset

    root = voc_tree(tmp_path)
    with pytest.raises(ConfigError, match="dataset=voc has no instance masks"):
        build_raw_dataset(voc_cfg(root), "train", with_masks=True)
