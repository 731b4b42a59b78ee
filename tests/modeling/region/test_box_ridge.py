"""R-CNN's class-specific box regression: ridge on features reduces the box error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from rcnn_cli.errors import DataError
from rcnn_cli.modeling.region import box_ridge
from rcnn_cli.modeling.region.box_ridge import _ridge, box_targets, fit_box_ridge, paired_iou


def toy(n: int, mixing: dict[int, torch.Tensor], seed: int):
    """Proposals = jittered ground truth; features = a class-specific linear image of the
    true offsets (scaled like R-CNN features) + noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(1, len(mixing) + 1, (n,), generator=g)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = 30 + torch.rand(n, 2, generator=g) * 70
    gt = torch.cat([xy, xy + wh], 1)
    jitter = (torch.rand(n, 4, generator=g) - 0.5) * 0.3 * wh.repeat(1, 2)
    proposals = gt + jitter
    t = box_targets(proposals, gt)
    features = torch.stack([t[i] @ mixing[int(c)] for i, c in enumerate(labels)])
    features = 50 * features + 0.05 * torch.randn(n, features.shape[1], generator=g)
    return features, proposals, gt, labels


def l1(a, b):
    return (a - b).abs().sum(1).mean().item()


def test_ridge_regression_reduces_box_error_per_class():
    g = torch.Generator().manual_seed(0)
    mixing = {1: torch.randn(4, 24, generator=g), 2: torch.randn(4, 24, generator=g)}
    model = fit_box_ridge(*toy(400, mixing, 1), num_classes=2)
    features, proposals, gt, labels = toy(200, mixing, 2)  # held out
    refined = model.apply(features, proposals, labels)
    assert model.weights.shape == (2, 25, 4)
    assert l1(refined, gt) < 0.2 * l1(proposals, gt)
    # The regressors are class-specific: applying the other class's is no help.
    swapped = model.apply(features, proposals, 3 - labels)
    assert l1(swapped, gt) > 2 * l1(refined, gt)
    # Background keeps its proposal; no boxes is fine.
    assert torch.equal(model.apply(features[:3], proposals[:3], torch.zeros(3, dtype=torch.long)),
                       proposals[:3])
    assert model.apply(torch.zeros(0, 24), torch.zeros(0, 4), torch.zeros(0)).shape == (0, 4)


def test_dual_chunked_and_direct_solutions_agree_and_the_bias_is_not_shrunk(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(10, 30, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g,
                                                                               dtype=torch.float64)
    every = torch.arange(10)
    dual = _ridge(x, every, t, 5.0)  # n < d
    xc, tc = x - x.mean(0), t - t.mean(0)
    primal = torch.linalg.solve(xc.T @ xc + 5.0 * torch.eye(30, dtype=x.dtype), xc.T @ tc)
    assert torch.allclose(dual[:-1], primal, atol=1e-10)
    # Huge lambda: weights vanish, the bias is the mean target.
    assert torch.allclose(_ridge(x, every, t, 1e12)[-1], t.mean(0), atol=1e-6)
    # n >= d: the D x D system summed over chunks of rows (3 here), from an array's rows.
    x, t = torch.randn(50, 6, generator=g, dtype=torch.float64) + 3, torch.randn(50, 4, generator=g)
    xc, tc = x - x.mean(0), (t - t.mean(0)).double()
    direct = torch.linalg.solve(xc.T @ xc + 2.0 * torch.eye(6, dtype=x.dtype), xc.T @ tc)
    monkeypatch.setattr(box_ridge, "CHUNK_ROWS", 20)
    rows = torch.arange(50)
    chunked = _ridge(x.float().numpy(), rows, t.double(), 2.0)
    assert torch.allclose(chunked[:-1], direct, atol=1e-5)
    assert torch.allclose(chunked[-1], t.double().mean(0) - x.mean(0) @ chunked[:-1], atol=1e-6)


def test_a_class_without_samples_keeps_its_boxes_and_bad_labels_fail():
    g = torch.Generator().manual_seed(0)
    features, proposals, gt, _ = toy(50, {1: torch.randn(4, 8, generator=g)}, 0)
    model = fit_box_ridge(features, proposals, gt, torch.ones(50, dtype=torch.long), 2)
    assert torch.allclose(model.apply(features, proposals, torch.full((50,), 2)), proposals,
                          atol=1e-4)
    with pytest.raises(DataError, match="1..2"):
        fit_box_ridge(features, proposals, gt, torch.full((50,), 3), 2)
    # numpy features (a memmap in R-CNN) are accepted
    np_model = fit_box_ridge(np.asarray(features), proposals, gt, torch.ones(50), 1)
    assert torch.allclose(np_model.weights, model.weights[:1], atol=1e-5)


def test_paired_iou_is_box_ious_diagonal():
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(40, 2, generator=g) * 50
    a = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 30 + 1], 1)
    b = a + torch.randn(40, 4, generator=g) * 5
    b[:, 2:] = torch.max(b[:, 2:], b[:, :2] + 1)
    b[0] = torch.tensor([200.0, 200, 210, 210])  # no overlap
    torch.testing.assert_close(paired_iou(a, b), box_iou(a, b).diagonal())
    assert paired_iou(a, b)[0] == 0
