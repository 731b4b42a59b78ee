"""Augmentations keep boxes, masks and proposals inside the image, non-degenerate, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn_cli.data.loader import DetectionView
from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.data.transforms import Augment

CASES = {
    "photometric": Augment(photometric=1.0),
    "scale_jitter": Augment(scale_jitter=(0.3, 2.0)),
    "large_scale_jitter": Augment(scale_jitter=(0.1, 2.0), scale_jitter_crop=True),
    "iou_crop": Augment(iou_crop=True),
    "all": Augment(1.0, (0.1, 2.0), True, True),
    "jitter_and_photometric": Augment(1.0, (0.1, 2.0), True, False),
    "vflip": Augment(vflip=0.5),
    "all_and_vflip": Augment(1.0, (0.1, 2.0), True, True, 0.5),
}


def view(augment: Augment) -> DetectionView:
    raw = ShapesDataset("train", 6, 96, with_masks=True)
    v = DetectionView(raw, train=True, flip_prob=0.5, min_sizes=[96], max_size=128,
                      augment=augment)
    if not augment.iou_crop:  # refused with external proposals (config validation)
        v.proposals = {iid: np.array([[0, 0, 50, 50], [40, 40, 95, 95]], dtype=np.float32)
                       for iid in raw.image_ids}
    return v


@pytest.mark.parametrize("name", list(CASES))
def test_targets_stay_valid_and_consistent(name):
    v = view(CASES[name])
    for index in range(len(v)):
        for seed in range(6):
            image, t = v[(index, seed)]
            h, w = image.shape[-2:]
            b = t["boxes"]
            assert len(b) == len(t["labels"]) == len(t["masks"])
            assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 1] >= 0)
            assert torch.all(b[:, 2] <= w) and torch.all(b[:, 3] <= h)
            assert torch.all(b[:, 2] - b[:, 0] >= 1) and torch.all(b[:, 3] - b[:, 1] >= 1)
            assert t["masks"].shape[-2:] == (h, w)
            for box, mask in zip(b, t["masks"]):  # each mask lies inside its box
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if len(xs):
                    assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1
                    assert ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1
            p = t.get("proposals", torch.zeros(0, 4))
            assert torch.all(p[:, :2] >= 0) and torch.all(p[:, 2] <= w) and torch.all(p[:, 3] <= h)
            assert torch.all(p[:, 2] - p[:, 0] >= 1) and torch.all(p[:, 3] - p[:, 1] >= 1)
            assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_seeded():
    v = view(CASES["jitter_and_photometric"])
    a, b = v[(2, 11)], v[(2, 11)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    sizes = {tuple(v[(2, s)][0].shape) for s in range(8)}
    assert sizes == {(3, 96, 128)}  # large-scale jitter crops/pads back to the target


def test_scale_jitter_changes_the_scale():
    v = view(CASES["scale_jitter"])
    assert len({tuple(v[(0, s)][0].shape) for s in range(8)}) > 1
