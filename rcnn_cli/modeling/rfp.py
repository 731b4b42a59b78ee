"""Recursive Feature Pyramid (DetectoRS, Qiao et al. 2021, §3 and Fig. 3).

The FPN outputs of one pass are fed back into the bottom-up stages of the next: ASPP (§3,
"Atrous Spatial Pyramid Pooling": 1x1, 3x3 at dilation 3 and 6, and image pooling, each
``channels / 4`` wide) turns P3-P5 into feedback that a 1x1 conv adds to the first block of
res3-res5 (before its last ReLU). Each later pass has its own ResNet (same architecture, same
pre-trained weights); the FPN is shared. The passes are fused by a learned per-pixel weight
(§3, "Fusion Module"): ``sigma(conv(f_t)) * f_t + (1 - sigma(conv(f_t))) * f_{t-1}``.

The feedback convs and the fusion conv start at zero, so with a later pass's ResNet equal to the
first one the recursive pyramid computes exactly the plain FPN.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STAGES = ("layer1", "layer2", "layer3", "layer4")


class ASPP(nn.Module):
    def __init__(self, in_channels: int, channels: int, dilations=(1, 3, 6)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, channels, 1 if d == 1 else 3, padding=0 if d == 1 else d,
                      dilation=d) for d in dilations)
        self.image_pool = nn.Conv2d(in_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = [F.relu(b(x)) for b in self.branches]
        pooled = F.relu(self.image_pool(F.adaptive_avg_pool2d(x, 1)))
        return torch.cat([*out, pooled.expand_as(out[0])], dim=1)


def block_forward(block: nn.Module, x: Tensor, feedback: Tensor | None) -> Tensor:
    """A torchvision ResNet block (basic or bottleneck), ``rfp_conv(feedback)`` added to its
    output before the last ReLU."""
    if feedback is None:
        return block(x)
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    if hasattr(block, "conv3"):
        out = block.bn3(block.conv3(block.relu(out)))
    return block.relu(out + identity + block.rfp_conv(feedback))


def feedback_forward(body: nn.Module, x: Tensor, feedback: list[Tensor]) -> OrderedDict:
    """C2-C5 of ``body`` (conv1 .. layer4) with feedback into res3-res5's first blocks."""
    x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
    out = OrderedDict()
    for i, name in enumerate(STAGES):
        for j, block in enumerate(getattr(body, name)):
            x = block_forward(block, x, feedback[i - 1] if i > 0 and j == 0 else None)
        out[str(i)] = x
    return out


def add_feedback_convs(body: nn.Module, channels: int) -> None:
    """A zero-initialised ``rfp_conv`` on the first block of res3-res5."""
    for name in STAGES[1:]:
        block = getattr(body, name)[0]
        width = (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels
        block.rfp_conv = nn.Conv2d(channels, width, 1)
        nn.init.zeros_(block.rfp_conv.weight)
        nn.init.zeros_(block.rfp_conv.bias)


class RecursiveFeaturePyramid(nn.Module):
    """``body`` (C2-C5 dict) -> ``fpn``, then one more pass per module of ``rfp_bodies``."""

    def __init__(self, body: nn.Module, fpn: nn.Module, rfp_bodies: list[nn.Module],
                 out_channels: int):
        super().__init__()
        self.body, self.fpn = body, fpn
        self.rfp_bodies = nn.ModuleList(rfp_bodies)
        self.rfp_aspp = ASPP(out_channels, out_channels // 4)
        for b in rfp_bodies:
            add_feedback_convs(b, out_channels // 4 * 4)
        self.rfp_weight = nn.Conv2d(out_channels, 1, 1)
        nn.init.zeros_(self.rfp_weight.weight)
        nn.init.zeros_(self.rfp_weight.bias)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict:
        p = self.fpn(self.body(x))
        names = list(p)
        for body in self.rfp_bodies:
            feedback = [self.rfp_aspp(p[k]) for k in names[1:4]]
            q = self.fpn(feedback_forward(body, x, feedback))
            p = OrderedDict((k, self.fuse(q[k], p[k])) for k in names)
        return p

    def fuse(self, new: Tensor, old: Tensor) -> Tensor:
        w = torch.sigmoid(self.rfp_weight(new))
        return w * new + (1 - w) * old
