"""Batch norm at test time: the running statistics against each batch's own.

Training normalises every activation by its mini-batch's mean and variance; inference by the
population's, estimated during training as running averages (Ioffe & Szegedy 2015, §3.1). A
network that has come to depend on each batch's own statistics computes something else at test
time. Three ways to evaluate a checkpoint tell that apart:

- the running statistics it was trained with (what ``rcnn-eval`` does);
- each evaluation batch normalised by its own statistics (``use_batch_statistics``): what the
  network computed in training; a diagnostic only, since a detection then depends on the other
  images of its batch;
- the running statistics re-estimated over training batches with the final weights
  (``reestimate``: "precise BN", Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", §3):
  fixes statistics that are merely stale.

``statistics_gap`` finds the layers where one batch's statistics are furthest from the running
ones. ``benchmarks/bn_statistics.py`` runs all of it on checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BatchNorm = nn.modules.batchnorm._BatchNorm


def batch_norms(model: nn.Module) -> list[tuple[str, BatchNorm]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BatchNorm)]


def _normalise_by_batch(norm: BatchNorm, x: Tensor) -> Tensor:
    return F.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)


def use_batch_statistics(model: nn.Module) -> int:
    """From now on, in train and eval mode alike, every batch norm of ``model`` normalises by
    the statistics of the batch it is given; its running statistics are neither used nor
    updated. Returns the number of layers changed."""
    norms = batch_norms(model)
    for _, norm in norms:
        norm.forward = _normalise_by_batch.__get__(norm)
    return len(norms)


@torch.no_grad()
def reestimate(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Precise BN: every batch norm's running mean and variance replaced by the plain mean,
    over ``batches`` (inputs of ``model``), of each batch's statistics, computed in train mode
    with the weights as they are. The model's modes and momenta are restored; returns the
    number of batches used."""
    norms = [norm for _, norm in batch_norms(model)]
    if not norms:
        return 0
    saved = [(norm, norm.momentum, norm.training) for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
        norm.train()
    count = 0
    try:
        for x in batches:
            model(x)
            count += 1
    finally:
        for norm, momentum, training in saved:
            norm.momentum = momentum
            norm.train(training)
    if count == 0:
        raise ValueError("reestimate: no batch to estimate the statistics from")
    return count


@torch.no_grad()
def statistics_gap(model: nn.Module, x: Tensor) -> list[dict]:
    """``model(x)`` on running statistics (eval mode); for each batch norm, the channel whose
    batch mean is furthest from its running mean, in running standard deviations, and the
    largest ratio of batch to running variance. Largest gap first."""
    rows: list[dict] = []

    def measure(name: str):
        def hook(norm: BatchNorm, inputs: tuple[Tensor, ...]) -> None:
            dims = [0, *range(2, inputs[0].dim())]
            mean = inputs[0].mean(dims)
            var = inputs[0].var(dims, unbiased=False)
            std = (norm.running_var + norm.eps).sqrt()
            shift = (mean - norm.running_mean).abs() / std
            rows.append({"layer": name, "mean_shift": float(shift.max()),
                         "channel": int(shift.argmax()),
                         "var_ratio": float((var / std ** 2).max())})
        return hook

    training = model.training
    handles = [norm.register_forward_pre_hook(measure(name)) for name, norm in batch_norms(model)]
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return sorted(rows, key=lambda r: -r["mean_shift"])
