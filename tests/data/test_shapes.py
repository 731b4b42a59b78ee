"""The embedded shapes dataset: deterministic, exact boxes, a real detection task."""

from __future__ import annotations

import numpy as np
import pytest

from rcnn_cli.data.shapes import CLASSES, ShapesDataset
from rcnn_cli.errors import ConfigError


@pytest.fixture(scope="module")
def ds():
    return ShapesDataset("train", 40, 96, seed=3, with_masks=True)


def test_deterministic_from_seed(ds):
    again = ShapesDataset("train", 40, 96, seed=3, with_masks=True)
    for i in (0, 7, 39):
        a, ta = ds.raw(i)
        b, tb = again.raw(i)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ta["boxes"], tb["boxes"])


def test_seed_and_split_change_the_images(ds):
    other_seed = ShapesDataset("train", 2, 96, seed=4)
    val = ShapesDataset("val", 2, 96, seed=3)
    assert not np.array_equal(ds.raw(0)[0], other_seed.raw(0)[0])
    assert not np.array_equal(ds.raw(0)[0], val.raw(0)[0])


def test_boxes_are_the_tight_boxes_of_the_masks(ds):
    for i in range(len(ds)):
        _, t = ds.raw(i)
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_counts_sizes_and_classes(ds):
    counts = np.diff(ds._offsets)
    assert counts.min() >= 1 and counts.max() <= 6
    side = np.maximum(ds._boxes[:, 2] - ds._boxes[:, 0], ds._boxes[:, 3] - ds._boxes[:, 1])
    assert side.min() >= 0.05 * 96 and side.max() <= 0.9 * 96
    assert set(np.unique(ds._labels)) == {1, 2, 3}
    assert len(CLASSES) >= 3


def test_colour_does_not_identify_the_class(ds):
    colours = {1: [], 2: [], 3: []}
    for i in range(len(ds)):
        img, t = ds.raw(i)
        for lab, mask in zip(t["labels"], t["masks"]):
            if mask.sum() > 30:
                colours[int(lab)].append(img[mask].mean(0))
    means = [np.mean(c, 0) for c in colours.values()]
    spread = [np.std(c, 0).mean() for c in colours.values()]
    assert min(spread) > 40  # random colours within every class
    assert max(np.abs(means[0] - m).max() for m in means) < 60


def test_configurable_object_counts_and_image_size():
    ds = ShapesDataset("val", 10, 64, min_objects=2, max_objects=2)
    assert (np.diff(ds._offsets) <= 2).all()
    img, _ = ds.raw(0)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8


def test_coco_gt_matches_annotations(ds):
    gt = ds.coco_gt()
    assert len(gt["images"]) == 40
    assert len(gt["annotations"]) == len(ds._labels)
    assert {c["name"] for c in gt["categories"]} == set(CLASSES)
    ann = gt["annotations"][0]
    x0, y0, x1, y1 = ds._boxes[0]
    assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigError, match="split"):
        ShapesDataset("bogus", 1, 64)
    with pytest.raises(ConfigError, match="min_objects"):
        ShapesDataset("train", 1, 64, min_objects=3, max_objects=2)
