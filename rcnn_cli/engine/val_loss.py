"""Validation loss: the training losses on the validation set (detectron2 #810, #4368).

The model computes its losses as in training (train-mode RPN/RoI sampling, the same loss
terms), but with no gradient and frozen statistics: every normalisation layer and dropout is
in eval mode, so nothing in the model changes. fg/bg sampling is seeded per image.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from torch import nn

from rcnn_cli.data.loader import sample_seed
from rcnn_cli.modeling import seeded_sampler

FROZEN = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.modules.dropout._DropoutNd)


@contextlib.contextmanager
def loss_mode(model: nn.Module):
    """Train mode for the loss computation; norms and dropout stay in eval mode."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, FROZEN):
            m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


@torch.no_grad()
def batch_losses(model: nn.Module, images, targets, seed: int) -> dict[str, torch.Tensor]:
    seeded_sampler.set_seeds(model, [sample_seed(seed, 0, int(t["image_id"])) for t in targets])
    with loss_mode(model):
        return model(images, targets)


def validation_loss(model: nn.Module, loader, device, seed: int) -> dict[str, float]:
    """Image-weighted mean of each loss term and their total over ``loader``, as ``val/*``."""
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for images, targets in loader:
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        losses = batch_losses(model, images, targets, seed)
        losses["total_loss"] = sum(losses.values())
        for name, value in losses.items():
            sums[name] += float(value) * len(images)
        count += len(images)
    return {f"val/{k}": v / max(count, 1) for k, v in sums.items()}
