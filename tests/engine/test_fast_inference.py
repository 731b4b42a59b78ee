"""Inference speed work: folded norms and channels-last give the unmodified model's detections."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.ops.misc import FrozenBatchNorm2d

from rcnn_cli.engine import fast_inference
from rcnn_cli.engine.fast_inference import fold_batch_norms, fold_norm_into_conv
from rcnn_cli.modeling.build import build_detector
from tests.conftest import compose_cfg


def _random_stats(norm: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    c = norm.running_mean.numel()
    norm.running_mean.copy_(torch.randn(c, generator=g))
    norm.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    norm.weight.data.copy_(torch.randn(c, generator=g))
    norm.bias.data.copy_(torch.randn(c, generator=g))
    return norm


@pytest.mark.parametrize("norm_cls", [nn.BatchNorm2d, FrozenBatchNorm2d])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_folded_conv_equals_conv_then_norm(norm_cls, conv_bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=conv_bias)
    norm = _random_stats(norm_cls(6)).eval()
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(fold_norm_into_conv(conv, norm)(x), norm(conv(x)),
                               rtol=1e-5, atol=1e-5)


def test_a_training_mode_batch_norm_is_refused():
    with pytest.raises(ValueError, match="training mode"):
        fold_norm_into_conv(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2).train())


def test_every_resnet_norm_is_folded_and_the_output_kept():
    torch.manual_seed(0)
    net = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    for m in net.modules():
        if isinstance(m, FrozenBatchNorm2d):
            _random_stats(m)
    x = torch.randn(1, 3, 64, 64)
    ref = net(x)
    assert fold_batch_norms(net) == 20  # stem + 8 blocks x 2 + 3 downsamples
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fold_bn,channels_last", [(True, True), (False, True), (True, False)])
def test_fast_detector_gives_the_same_detections(fold_bn, channels_last):
    cfg = compose_cfg("train", ["model.box_head.score_thresh=0.0"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3).eval()
    for m in model.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            _random_stats(m)
    fast = fast_inference.prepare(copy.deepcopy(model), fold_bn, channels_last, compile=False)
    images = [torch.rand(3, 128, 160) for _ in range(3)]  # one size: batching pads none
    with torch.inference_mode():
        ref = [model([im])[0] for im in images]
    got = fast_inference.detect(fast, images, batch_size=2)
    assert len(got) == 3
    for a, b in zip(ref, got):
        assert len(a["boxes"]) > 0
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=0, atol=1e-4)
