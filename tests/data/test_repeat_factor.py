"""Repeat-factor sampling (LVIS §4) on a constructed imbalanced set."""

from __future__ import annotations

import math

import torch

from rcnn_cli.data.loader import IterationBatchSampler
from rcnn_cli.data.repeat_factor import image_categories, repeat_factors, stochastic_counts

# 90 images of class 1 only, 10 images with class 1 and 2, 20 images without annotations.
CATS = [{1}] * 90 + [{1, 2}] * 10 + [set()] * 20


def test_factors_follow_sqrt_of_threshold_over_frequency():
    r = repeat_factors(CATS, threshold=0.5)
    # f(1) = 100/120 > t: factor 1; f(2) = 10/120: sqrt(0.5 * 12) = sqrt(6)
    assert torch.all(r[:90] == 1.0) and torch.all(r[100:] == 1.0)
    assert torch.allclose(r[90:100], torch.full((10,), math.sqrt(6.0), dtype=torch.float64))
    assert torch.all(repeat_factors(CATS, threshold=0.0) == 1.0)


def test_categories_come_from_non_crowd_annotations():
    gt = {"images": [{"id": 7}, {"id": 3}],
          "annotations": [{"image_id": 3, "category_id": 2, "iscrowd": 0},
                          {"image_id": 7, "category_id": 5, "iscrowd": 1},
                          {"image_id": 3, "category_id": 4}]}
    assert image_categories(gt) == [set(), {2, 4}]


def test_stochastic_rounding_is_seeded_and_unbiased():
    f = torch.full((20000,), 2.3, dtype=torch.float64)
    a = stochastic_counts(f, torch.Generator().manual_seed(1))
    b = stochastic_counts(f, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and set(a.tolist()) == {2, 3}
    assert abs(a.double().mean().item() - 2.3) < 0.02


def test_sampler_oversamples_the_rare_class_deterministically():
    r = repeat_factors(CATS, threshold=0.5)
    args = dict(num_items=len(CATS), batch_size=4, seed=3, start_iter=0, max_iter=200)
    drawn = [i for b in IterationBatchSampler(**args, repeat_factors=r) for i, _ in b]
    plain = [i for b in IterationBatchSampler(**args) for i, _ in b]
    share = sum(90 <= i < 100 for i in drawn) / len(drawn)
    plain_share = sum(90 <= i < 100 for i in plain) / len(plain)
    expected = 10 * math.sqrt(6) / (110 + 10 * math.sqrt(6))
    assert abs(share - expected) < 0.03 and plain_share < 0.1
    again = [i for b in IterationBatchSampler(**args, repeat_factors=r) for i, _ in b]
    assert drawn == again
    resumed = list(IterationBatchSampler(**{**args, "start_iter": 77}, repeat_factors=r))
    assert resumed == list(IterationBatchSampler(**args, repeat_factors=r))[77:]


def test_ddp_ranks_split_the_same_global_batch():
    from rcnn_cli.engine.distributed import ShardedBatchSampler

    r = repeat_factors(CATS, threshold=0.5)
    base = IterationBatchSampler(len(CATS), 2 * 1 * 2, 0, 0, 10, repeat_factors=r)
    ranks = [list(ShardedBatchSampler(base, 2, 1, rank)) for rank in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == list(base)


def test_grouped_batches_with_repeats_stay_in_one_group():
    r = repeat_factors(CATS, threshold=0.5)
    groups = [i % 2 for i in range(len(CATS))]
    batches = list(IterationBatchSampler(len(CATS), 4, 0, 0, 60, groups, r))
    assert all(len({groups[i] for i, _ in b}) == 1 and len(b) == 4 for b in batches)
