"""Switchable Atrous Convolution (DetectoRS §4) and weight standardisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from rcnn_cli.modeling.sac import (
    StandardisedConv2d,
    SwitchableAtrousConv2d,
    convert_trunk,
    standardise,
)
from rcnn_cli.ops.deform_conv import OffsetConv2d


def sac(deformable: bool = False, stride: int = 1) -> SwitchableAtrousConv2d:
    torch.manual_seed(0)
    conv = SwitchableAtrousConv2d(8, 6, 3, stride=stride, padding=1, bias=False,
                                  deformable=deformable)
    nn.init.normal_(conv.weight_diff, std=0.1)
    return conv


def standardised_conv(conv, dilation: int, diff: bool = False):
    """The conv with the standardised weight (+ the dilation-3 difference ``dw``)."""
    weight = conv.weight_gamma * standardise(conv.weight) + conv.weight_beta
    if diff:
        weight = weight + conv.weight_diff
    return F.conv2d(X, weight, None, conv.stride, dilation, dilation)


X = torch.randn(2, 8, 12, 12, generator=torch.Generator().manual_seed(1))


def test_switch_at_one_is_the_standardised_conv_at_dilation_1():
    conv = sac()  # starts at S = 1, no context
    torch.testing.assert_close(conv(X), standardised_conv(conv, 1))


def test_switch_at_zero_is_the_standardised_conv_at_dilation_3_with_the_weight_difference():
    conv = sac(stride=2)
    nn.init.zeros_(conv.switch.bias)
    with torch.no_grad():
        conv.weight_gamma.uniform_(0.5, 2.0)
    out = conv(X)
    assert out.shape[-1] == 6
    torch.testing.assert_close(out, standardised_conv(conv, 3, diff=True))
    assert not torch.allclose(out, standardised_conv(conv, 3))


def test_switch_mixes_and_context_is_added():
    conv = sac()
    nn.init.normal_(conv.switch.weight, std=0.5)
    nn.init.normal_(conv.post_context.weight, std=0.5)
    out = conv(X)
    small = standardised_conv(conv, 1)
    large = standardised_conv(conv, 3, diff=True)
    pooled = F.avg_pool2d(F.pad(X, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    switch = conv.switch(pooled)
    mixed = switch * small + (1 - switch) * large
    want = mixed + conv.post_context(F.adaptive_avg_pool2d(mixed, 1))
    torch.testing.assert_close(out, want)


def test_deformable_variant_starts_as_the_plain_one():
    plain, deform = sac(), sac(deformable=True)
    nn.init.constant_(plain.switch.bias, 0.3)
    deform.load_state_dict(plain.state_dict(), strict=False)  # all but the zero offset convs
    torch.testing.assert_close(deform(X), plain(X), atol=1e-5, rtol=1e-5)
    assert isinstance(deform.offset_s, OffsetConv2d)  # its own lr: schedule.offset_lr_mult
    nn.init.normal_(deform.offset_s.weight, std=0.1)
    assert not torch.allclose(deform(X), plain(X), atol=1e-3)


def test_a_converted_conv_computes_what_the_plain_conv_computed():
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    for cls in (StandardisedConv2d, SwitchableAtrousConv2d):
        torch.testing.assert_close(cls.from_conv(conv)(X), conv(X), atol=1e-5, rtol=1e-5)


def test_plain_resnet_weights_load_into_a_converted_trunk():
    torch.manual_seed(3)
    plain = resnet18().eval()
    converted = convert_trunk(resnet18(), deformable=True).eval()
    missing, unexpected = converted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert not any(k.endswith(("weight_gamma", "weight_beta")) for k in missing)
    assert all(k.startswith(("layer2", "layer3", "layer4")) for k in missing)
    assert isinstance(converted.conv1, StandardisedConv2d)
    assert isinstance(converted.layer3[1].conv2, SwitchableAtrousConv2d)
    assert not isinstance(converted.layer1[0].conv2, SwitchableAtrousConv2d)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), plain(x), atol=1e-4, rtol=1e-4)
    # Our own checkpoints keep their gamma/beta.
    state = converted.state_dict()
    state["conv1.weight_gamma"] = torch.full_like(state["conv1.weight_gamma"], 2.0)
    converted.load_state_dict(state)
    assert torch.all(converted.conv1.weight_gamma == 2.0)
