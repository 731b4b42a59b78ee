"""rcnn_cli.evaluation.norm_statistics: batch statistics at test time, precise BN, the gap
between a batch's statistics and the running ones."""

import pytest
import torch
from torch import nn

from rcnn_cli.evaluation.norm_statistics import (
    reestimate,
    statistics_gap,
    use_batch_statistics,
)


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                         nn.BatchNorm2d(2))


def test_batch_statistics_compute_what_training_computes_and_leave_the_running_ones():
    net, x = small_net(), torch.randn(6, 3, 8, 8) * 3 + 1
    before = [m.running_mean.clone() for m in (net[1], net[4])]
    with torch.no_grad():
        trained = net.train()(x)  # updates the running statistics once
        ran = [m.running_mean.clone() for m in (net[1], net[4])]
        on_running = net.eval()(x)
        assert not torch.allclose(on_running, trained, atol=1e-3)
        assert use_batch_statistics(net) == 2
        on_batch = net.eval()(x)
    torch.testing.assert_close(on_batch, trained)
    assert all(torch.equal(a, b) for a, b in zip(ran, [net[1].running_mean, net[4].running_mean]))
    assert not torch.equal(before[0], ran[0])


def test_precise_bn_is_the_mean_of_each_batchs_statistics_and_restores_the_modes():
    net = small_net().eval()
    net[1].momentum = 0.3
    batches = [torch.randn(4, 3, 8, 8) + i for i in range(3)]
    with torch.no_grad():
        means = [net[0](b).mean((0, 2, 3)) for b in batches]
        variances = [net[0](b).var((0, 2, 3), unbiased=True) for b in batches]
    assert reestimate(net, iter(batches)) == 3
    torch.testing.assert_close(net[1].running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(net[1].running_var, torch.stack(variances).mean(0))
    assert not net.training and not net[1].training and net[1].momentum == 0.3
    with pytest.raises(ValueError, match="no batch"):
        reestimate(net, iter([]))


def test_the_gap_names_the_layer_and_channel_furthest_from_its_running_mean():
    net, x = small_net(), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        net.train()(x)
        net[4].running_mean[1] += 50 * (net[4].running_var[1] + net[4].eps).sqrt()
    net.train()
    rows = statistics_gap(net, x)
    assert [r["layer"] for r in rows] == ["4", "1"] and rows[0]["channel"] == 1
    assert rows[0]["mean_shift"] == pytest.approx(50, rel=0.05)
    assert net.training and all(not m._forward_pre_hooks for m in net.modules())
