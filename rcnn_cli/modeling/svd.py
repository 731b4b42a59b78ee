"""Truncated SVD of fully connected layers (Fast R-CNN §3.1).

A layer ``y = W x + b`` with ``W`` (u x v) is replaced by two: ``W ~= U_t Σ_t V_tᵀ`` gives
``reduce`` = ``Σ_t V_tᵀ`` (t x v, no bias) and ``expand`` = ``U_t`` (u x t, bias b): t(u + v)
parameters instead of uv. Exact when t = rank(W); otherwise the error of the truncation.
"""

from __future__ import annotations

import torch
from torch import nn

from rcnn_cli.errors import ConfigError


class LowRankLinear(nn.Module):
    """``expand(reduce(x))``; built empty from shapes (a checkpoint fills it) or by ``factorize``."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.reduce = nn.Linear(in_features, rank, bias=False)
        self.expand = nn.Linear(rank, out_features, bias=True)

    @property
    def rank(self) -> int:
        return self.reduce.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))


@torch.no_grad()
def factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    """The best rank-``rank`` approximation of ``linear`` (Eckart-Young) as two layers."""
    out_f, in_f = linear.weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ConfigError(f"truncated SVD rank {rank}: must be in [1, {min(out_f, in_f)}] for a "
                          f"{in_f} -> {out_f} layer")
    u, s, vh = torch.linalg.svd(linear.weight.double(), full_matrices=False)
    low = LowRankLinear(in_f, out_f, rank).to(linear.weight.device)
    low.reduce.weight.copy_((s[:rank, None] * vh[:rank]).to(linear.weight.dtype))
    low.expand.weight.copy_(u[:, :rank].to(linear.weight.dtype))
    low.expand.bias.copy_(linear.bias if linear.bias is not None else 0)
    return low


def truncation_error(linear: nn.Linear, rank: int) -> float:
    """Spectral norm of W - W_t: the largest output change per unit input, ``σ_{t+1}``."""
    s = torch.linalg.svdvals(linear.weight.detach().double())
    return float(s[rank]) if rank < len(s) else 0.0


def box_head_of(model: nn.Module) -> nn.Module:
    head = getattr(getattr(model, "roi_heads", None), "box_head", None)
    if head is None or not hasattr(head, "fc6") or not hasattr(head, "fc7"):
        raise ConfigError("truncated SVD needs a box head with fc6 and fc7 layers "
                          "(model=faster or model=fast)")
    return head


def compress_box_head(model: nn.Module, fc6: int | None, fc7: int | None) -> None:
    """Replace fc6 / fc7 of the box head in place by their truncated SVD (None: unchanged)."""
    head = box_head_of(model)
    for name, rank in (("fc6", fc6), ("fc7", fc7)):
        layer = getattr(head, name)
        if rank is None:
            continue
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"box_head.{name} is already factorised (rank {layer.rank})")
        setattr(head, name, factorize(layer, rank))


def shape_box_head(model: nn.Module, fc6: int | None, fc7: int | None) -> None:
    """Give a freshly built model the factorised layout recorded in its config (for loading)."""
    if fc6 is None and fc7 is None:
        return
    head = box_head_of(model)
    for name, rank in (("fc6", fc6), ("fc7", fc7)):
        if rank is not None:
            layer = getattr(head, name)
            setattr(head, name, LowRankLinear(layer.in_features, layer.out_features, rank))


def box_head_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in box_head_of(model).parameters())
