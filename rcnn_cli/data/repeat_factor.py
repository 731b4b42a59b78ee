"""Repeat-factor sampling for class imbalance (LVIS, Gupta et al. 2019, §4 "Sampling").

A category c seen in a fraction f(c) of the training images gets
``r(c) = max(1, sqrt(t / f(c)))`` for a threshold t; an image repeats ``r(I) = max_c r(c)``
times per epoch (1 for images without annotations). Fractional factors are rounded
stochastically with a seeded generator, so an epoch is a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

import math

import torch


def image_categories(coco_gt: dict) -> list[set[int]]:
    """The non-crowd category ids of each image, in the order of ``coco_gt["images"]``."""
    row = {img["id"]: k for k, img in enumerate(coco_gt["images"])}
    cats: list[set[int]] = [set() for _ in row]
    for ann in coco_gt["annotations"]:
        if not ann.get("iscrowd", 0):
            cats[row[ann["image_id"]]].add(int(ann["category_id"]))
    return cats


def repeat_factors(categories: list[set[int]], threshold: float) -> torch.Tensor:
    """r(I) per image (float64); ``threshold`` is t, the image frequency below which a
    category is repeated."""
    counts: dict[int, int] = {}
    for cats in categories:
        for c in cats:
            counts[c] = counts.get(c, 0) + 1
    n = max(len(categories), 1)
    per_cat = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    return torch.tensor([max((per_cat[c] for c in cats), default=1.0) for cats in categories],
                        dtype=torch.float64)


def stochastic_counts(factors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Integer repeats per image: ``floor(r) + Bernoulli(r - floor(r))``."""
    whole = factors.floor()
    extra = torch.rand(len(factors), generator=generator, dtype=torch.float64) < factors - whole
    return (whole + extra).long()
