"""Truncated SVD of the box head's fc layers (Fast R-CNN §3.1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.fast_rcnn import FastRCNNHead
from rcnn_cli.modeling.svd import (
    LowRankLinear,
    box_head_parameters,
    compress_box_head,
    factorize,
    shape_box_head,
    truncation_error,
)


def layer(in_f=96, out_f=64, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f)


def test_full_rank_factorisation_is_exact():
    fc = layer()
    x = torch.randn(32, 96)
    low = factorize(fc, 64)
    torch.testing.assert_close(low(x), fc(x), atol=1e-5, rtol=1e-5)
    assert truncation_error(fc, 64) == 0.0


@pytest.mark.parametrize("rank", [1, 8, 32, 63])
def test_truncated_layer_is_within_the_truncation_error(rank):
    fc = layer()
    x = torch.randn(256, 96)
    low = factorize(fc, rank)
    assert low.rank == rank and sum(p.numel() for p in low.parameters()) == rank * (96 + 64) + 64
    err = (low(x) - fc(x)).norm(dim=1)
    bound = truncation_error(fc, rank) * x.norm(dim=1)
    assert (err <= bound * (1 + 1e-4) + 1e-5).all()
    # Eckart-Young: the weight error is exactly the discarded singular values
    s = torch.linalg.svdvals(fc.weight.detach().double())
    w_low = low.expand.weight @ low.reduce.weight
    assert torch.linalg.matrix_norm(fc.weight - w_low).item() == pytest.approx(
        s[rank:].norm().item(), rel=1e-4)
    # a random rank-t layer does worse than the truncation
    assert err.mean() > 0


def test_rank_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"rank 65: must be in \[1, 64\]"):
        factorize(layer(), 65)


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = FastRCNNHead(128, 64, dropout=0.0)


def test_compressed_head_round_trips_through_a_state_dict():
    torch.manual_seed(0)
    model = Holder()
    full = box_head_parameters(model)
    compress_box_head(model, 16, 8)
    head = model.roi_heads.box_head
    assert isinstance(head.fc6, LowRankLinear) and isinstance(head.fc7, LowRankLinear)
    assert box_head_parameters(model) == 16 * (128 + 64) + 64 + 8 * (64 + 64) + 64 < full
    with pytest.raises(ConfigError, match="already factorised"):
        compress_box_head(model, 8, None)
    fresh = Holder()
    shape_box_head(fresh, 16, 8)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, 128)
    torch.testing.assert_close(fresh.roi_heads.box_head(x), head(x))
    with pytest.raises(ConfigError, match="fc6 and fc7"):
        compress_box_head(nn.Linear(2, 2), 1, 1)
