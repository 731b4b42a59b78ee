"""Iteration-indexed batches and seeded augmentation make resume exact."""

from __future__ import annotations

import numpy as np
import torch

from rcnn_cli.data.loader import DetectionView, IterationBatchSampler, train_loader
from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.data.transforms import Augment


def test_resumed_sampler_continues_with_the_same_batches():
    full = list(IterationBatchSampler(10, 3, seed=1, start_iter=0, max_iter=9))
    resumed = list(IterationBatchSampler(10, 3, seed=1, start_iter=4, max_iter=9))
    assert full[4:] == resumed


def test_each_epoch_is_a_permutation_without_repeats():
    batches = list(IterationBatchSampler(9, 3, seed=0, start_iter=0, max_iter=6))
    first_epoch = [i for b in batches[:3] for i, _ in b]
    assert sorted(first_epoch) == list(range(9))
    second_epoch = [i for b in batches[3:] for i, _ in b]
    assert first_epoch != second_epoch


def test_augmentation_depends_only_on_the_sample_seed():
    view = DetectionView(ShapesDataset("train", 4, 64), train=True, flip_prob=0.5)
    torch.manual_seed(123)
    a = view[(1, 77)]
    torch.manual_seed(999)
    b = view[(1, 77)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_flip_moves_boxes_with_pixels():
    raw = ShapesDataset("train", 4, 64)
    plain = DetectionView(raw, train=False, flip_prob=0.0)[(0, 0)]
    flipped = DetectionView(raw, train=True, flip_prob=1.0)[(0, 0)]
    assert torch.equal(flipped[0], plain[0].flip(-1))
    b = plain[1]["boxes"]
    expected = torch.stack([64 - b[:, 2], b[:, 1], 64 - b[:, 0], b[:, 3]], 1)
    assert torch.equal(flipped[1]["boxes"], expected)


def test_vertical_flip_moves_boxes_masks_and_proposals_with_pixels():
    raw = ShapesDataset("train", 4, 64, with_masks=True)
    plain_view = DetectionView(raw, train=False, flip_prob=0.0)
    flip_view = DetectionView(raw, train=True, flip_prob=0.0, augment=Augment(vflip=1.0))
    for v in (plain_view, flip_view):
        v.proposals = {iid: np.array([[0, 5, 50, 20]], dtype=np.float32) for iid in raw.image_ids}
    plain, flipped = plain_view[(0, 0)], flip_view[(0, 0)]
    assert torch.equal(flipped[0], plain[0].flip(-2))
    b = plain[1]["boxes"]
    expected = torch.stack([b[:, 0], 64 - b[:, 3], b[:, 2], 64 - b[:, 1]], 1)
    assert torch.equal(flipped[1]["boxes"], expected)
    assert torch.equal(flipped[1]["masks"], plain[1]["masks"].flip(-2))
    assert torch.equal(flipped[1]["proposals"], torch.tensor([[0.0, 44, 50, 59]]))


def test_loader_yields_lists_of_images_and_targets():
    view = DetectionView(ShapesDataset("train", 6, 64), train=True, flip_prob=0.5)
    images, targets = next(iter(train_loader(view, 2, 0, 0, 1, 0)))
    assert len(images) == 2 and images[0].dtype == torch.float32
    assert images[0].max() <= 1.0 and {"boxes", "labels", "image_id"} <= set(targets[0])


def test_a_dataset_smaller_than_the_batch_draws_with_replacement():
    batches = list(IterationBatchSampler(3, 8, seed=5, start_iter=0, max_iter=4))
    assert all(len(b) == 8 for b in batches)
    assert {i for b in batches for i, _ in b} == {0, 1, 2}
    seeds = [s for _, s in batches[0]]
    assert len(set(seeds)) == 8  # repeated images are augmented apart
    assert batches == list(IterationBatchSampler(3, 8, seed=5, start_iter=0, max_iter=4))
    assert batches[2:] == list(IterationBatchSampler(3, 8, seed=5, start_iter=2, max_iter=4))
    assert batches != list(IterationBatchSampler(3, 8, seed=6, start_iter=0, max_iter=4))


def test_groups_too_small_for_a_batch_mix_instead_of_failing():
    sampler = IterationBatchSampler(6, 4, seed=0, start_iter=0, max_iter=3,
                                    group_ids=[0, 0, 0, 1, 1, 1])
    assert sampler.groups is None and all(len(b) == 4 for b in sampler)


def test_sampler_without_repeats_keeps_the_original_seeds():
    from rcnn_cli.data.loader import sample_seed

    for i, s in next(iter(IterationBatchSampler(9, 3, seed=2, start_iter=0, max_iter=1))):
        assert s == sample_seed(2, 0, i)
