"""Stored proposals travel with the image through the training transforms."""

from __future__ import annotations

import torch

from rcnn_cli.data.loader import DetectionView
from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.data.with_proposals import WithProposals


def test_proposals_are_flipped_with_the_image_and_its_boxes():
    raw = ShapesDataset("train", 3, 64, seed=0)
    props = {i: torch.tensor([[1.0, 2.0, 11.0, 22.0], [30.0, 5.0, 60.0, 40.0]])
             for i in raw.image_ids}
    plain = DetectionView(raw, train=True, flip_prob=1.0)
    view = WithProposals(plain, props)
    for item in [(0, 7), (2, 9)]:
        image, target = view[item]
        ref_image, ref_target = plain[item]
        assert torch.equal(image, ref_image) and torch.equal(target["boxes"], ref_target["boxes"])
        assert torch.equal(target["proposals"], torch.tensor([[53.0, 2.0, 63.0, 22.0],
                                                              [4.0, 5.0, 34.0, 40.0]]))
        assert target["proposals_size"].tolist() == [64, 64]


def test_missing_image_ids_are_named():
    import pytest

    from rcnn_cli.errors import DataError

    raw = ShapesDataset("train", 3, 64, seed=0)
    with pytest.raises(DataError, match=r"no boxes for 1 image id\(s\), e.g. \[3\]"):
        WithProposals(DetectionView(raw, train=True, flip_prob=0.0),
                      {1: torch.zeros(0, 4), 2: torch.zeros(0, 4)})
