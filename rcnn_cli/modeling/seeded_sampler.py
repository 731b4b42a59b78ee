"""Per-image seeded fg/bg minibatch sampling (Faster R-CNN §3.1.3, Fast R-CNN §2.3).

torchvision's ``BalancedPositiveNegativeSampler`` draws every image of a batch from one global
RNG stream, so the anchors and RoIs sampled for an image depend on which images came before it
in the same process. Seeding each image's draw from its own seed makes training independent of
how a global batch is split over processes (DDP) or micro-batches (gradient accumulation), and
of the RNG state at resume.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler


class PerImageSeededSampler:
    """Wraps torchvision's sampler; ``seeds`` (one per image of the next call) must be set."""

    def __init__(self, inner: BalancedPositiveNegativeSampler):
        self.inner = inner
        self.seeds: list[int] | None = None

    def __call__(self, matched_idxs: list[torch.Tensor]):
        if self.seeds is None:
            return self.inner(matched_idxs)
        if len(self.seeds) != len(matched_idxs):
            raise RuntimeError(f"{len(self.seeds)} sampling seeds for {len(matched_idxs)} images")
        pos, neg = [], []
        for labels, seed in zip(matched_idxs, self.seeds):
            devices = [labels.device] if labels.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                p, n = self.inner([labels])
            pos += p
            neg += n
        return pos, neg


def _sampling_parts(model: nn.Module) -> list[nn.Module]:
    """The RPN and RoI heads that sample (fixed proposals or a stage without RoI heads do not)."""
    parts = [getattr(model, name, None) for name in ("rpn", "roi_heads")]
    return [p for p in parts if p is not None and hasattr(p, "fg_bg_sampler")]


def install(model: nn.Module) -> None:
    """Replace the RPN and RoI-head samplers of a ``GeneralizedRCNN`` by seeded ones."""
    for part in _sampling_parts(model):
        if not isinstance(part.fg_bg_sampler, PerImageSeededSampler):
            part.fg_bg_sampler = PerImageSeededSampler(part.fg_bg_sampler)


def set_seeds(model: nn.Module, seeds: list[int] | None) -> None:
    """Seeds for the images of the next training forward pass (None: the global RNG)."""
    for part in _sampling_parts(model):
        sampler = part.fg_bg_sampler
        if isinstance(sampler, PerImageSeededSampler):
            sampler.seeds = seeds
