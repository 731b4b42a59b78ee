"""``rcnn-data check|browse|convert``: the dataset doctor on small hand-made datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from rcnn_cli.data import doctor
from rcnn_cli.data_cli import run as data_run
from rcnn_cli.errors import ConfigError
from tests.conftest import compose_cfg, run_cli
from tests.data.helpers import voc_object, voc_tree

SHAPES = ["dataset.train_size=8", "dataset.val_size=4", "dataset.image_size=64"]


def voc_args(root) -> list[str]:
    return ["dataset=voc", f"dataset.root={root}", "dataset.train_split=train",
            "dataset.val_split=val"]


@pytest.fixture
def root(tmp_path):
    """train: a (2 boxes), b (1 box + 1 degenerate); val: c (1 difficult, 1 plain)."""
    return voc_tree(tmp_path, {
        "a": [voc_object("rbc"), voc_object("wbc", (10, 5, 39, 29))],
        "b": [voc_object("rbc", (1, 1, 6, 6)), voc_object("rbc", (7, 7, 7, 9))],
        "c": [voc_object("rbc", difficult=1), voc_object("wbc", (20, 2, 30, 12))]},
        splits={"train": ["a", "b"], "val": ["c"]})


def test_check_counts_classes_sizes_and_names_each_problem(root):
    console = Console(record=True, width=200)
    cfg = compose_cfg("data", ["command=check", *voc_args(root)])
    result = doctor.check(cfg, console)
    train, val, total = result["train"], result["val"], result["total"]
    assert train["per_class"] == {"rbc": {"boxes": 2, "ignored": 0, "annotated": 3},
                                  "wbc": {"boxes": 1, "ignored": 0, "annotated": 1}}
    assert val["per_class"]["rbc"] == {"boxes": 0, "ignored": 1, "annotated": 1}
    assert total["per_class"]["rbc"]["annotated"] == 4 and total["images"] == 3
    assert sum(train["size_histogram"].values()) == 3
    assert train["size_histogram"]["0-16"] == 2  # sqrt(10*8) and 5x5
    deg = total["problems"]["degenerate_box"]
    assert deg["count"] == 1 and "b.xml" in deg["examples"][0]
    assert "image id 2" in deg["examples"][0] and "object 2" in deg["examples"][0]
    text = console.export_text()
    for needle in ("boxes per class", "rbc", "degenerate_box", "b.xml", "(+1 ignored)"):
        assert needle in text


def test_check_works_on_the_default_shapes_dataset():
    result = data_run(compose_cfg("data", ["command=check", *SHAPES]))
    assert result["train"]["images"] == 8 and result["val"]["images"] == 4
    assert set(result["total"]["per_class"]) == {"rectangle", "ellipse", "triangle"}
    assert result["total"]["problems"] == {}


def test_browse_writes_a_png_grid_with_boxes(root, tmp_path):
    out = tmp_path / "grid.png"
    cfg = compose_cfg("data", ["command=browse", *voc_args(root), "n=2", f"out={out}"])
    data_run(cfg)
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (320 + 8, 2 * 324 + 4, 3)  # two 320 px tiles, make_grid padding
    yellow = (grid[..., 0] > 200) & (grid[..., 1] > 200) & (grid[..., 2] < 80)
    assert yellow.sum() > 100  # the boxes are drawn


def test_browse_draws_masks_of_a_dataset_with_masks(tmp_path):
    out = tmp_path / "masks.png"
    cfg = compose_cfg("data", ["command=browse", *SHAPES, "dataset.with_masks=true", "n=4",
                               f"out={out}"])
    data_run(cfg)
    assert Image.open(out).size == (2 * 324 + 4, 2 * 324 + 4)


def test_convert_writes_coco_json_per_split(root, tmp_path):
    cfg = compose_cfg("data", ["command=convert", *voc_args(root), f"out={tmp_path / 'c'}"])
    data_run(cfg)
    train = json.loads((tmp_path / "c" / "train.json").read_text())
    val = json.loads((tmp_path / "c" / "val.json").read_text())
    assert [c["name"] for c in train["categories"]] == ["rbc", "wbc"]
    assert len(train["annotations"]) == 3  # the degenerate box is dropped (lenient)
    assert train["annotations"][0]["bbox"] == [2, 3, 10, 8]
    assert [a["iscrowd"] for a in val["annotations"]] == [1, 0]  # difficult -> ignore region
    assert train["info"]["images_dir"].endswith("JPEGImages")


def test_convert_needs_a_file_dataset_and_an_output(tmp_path):
    with pytest.raises(ConfigError, match="dataset=voc or dataset=coco"):
        data_run(compose_cfg("data", ["command=convert", *SHAPES, f"out={tmp_path}"]))
    with pytest.raises(ConfigError, match="needs out=DIRECTORY"):
        data_run(compose_cfg("data", ["command=convert", *SHAPES]))
    with pytest.raises(ConfigError, match="command=nope"):
        data_run(compose_cfg("data", ["command=nope", *SHAPES]))


@pytest.mark.slow  # two interpreter start-ups: ~20 s on the shared CI machine
def test_console_script_report_and_one_line_error(root, tmp_path):
    r = run_cli("rcnn-data", "check", *voc_args(root), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "boxes per class" in r.stdout and "degenerate_box" in r.stdout
    r = run_cli("rcnn-data", "check", "dataset=voc", f"dataset.root={tmp_path / 'none'}",
                cwd=tmp_path)
    out = "".join((r.stdout + r.stderr).split())  # the rich log handler wraps anywhere
    assert r.returncode == 1, out
    assert "DataError" in out and "ImageSets/Main/trainval.txt:splitfilenotfound" in out
    assert "Traceback" not in out


def test_browse_augment_draws_the_augmented_training_images(tmp_path):
    base = ["command=browse", *SHAPES, "dataset.with_masks=true", "n=4"]
    args = [*base, "augment=true", "dataset.scale_jitter=[0.3,0.6]",
            "dataset.photometric_distort=1.0"]
    plain, aug = tmp_path / "plain.png", tmp_path / "aug.png"
    data_run(compose_cfg("data", [*base, f"out={plain}"]))
    data_run(compose_cfg("data", [*args, f"out={aug}"]))
    a = np.asarray(Image.open(aug).convert("RGB"))
    assert a.shape == np.asarray(Image.open(plain).convert("RGB")).shape
    yellow = (a[..., 0] > 200) & (a[..., 1] > 200) & (a[..., 2] < 80)
    assert yellow.sum() > 100  # boxes drawn on the augmented images
    assert not np.array_equal(a, np.asarray(Image.open(plain).convert("RGB")))
    data_run(compose_cfg("data", [*args, f"out={tmp_path / 'again.png'}"]))
    assert (tmp_path / "again.png").read_bytes() == aug.read_bytes()  # seeded


def test_check_reports_anchor_coverage():
    fixed = data_run(compose_cfg("data", ["command=check", *SHAPES]))["anchors"]
    auto = data_run(compose_cfg("data", ["command=check", *SHAPES, "anchors=auto"]))["anchors"]
    assert fixed["name"] == "fpn_small" and 0.0 <= fixed["uncovered"] <= 1.0
    assert auto["boxes"] == fixed["boxes"] > 0 and len(auto["sizes"]) == 5
    assert auto["uncovered"] <= fixed["uncovered"]
