"""Switchable Atrous Convolution (DetectoRS, Qiao et al. 2021, §4) and weight standardisation.

- ``StandardisedConv2d``: the conv's weight is standardised per output channel, then scaled and
  shifted by ``weight_gamma``/``weight_beta`` (§4.2, "we use weight standardization"; the affine
  buffers are what lets a pre-trained conv be loaded: gamma = the weight's std, beta = its mean,
  so the layer computes what the plain conv computed).
- ``SwitchableAtrousConv2d`` (§4.1, eq. 2 and Fig. 4): ``S(x) * Conv(x, w, 1) + (1 - S(x)) *
  Conv(x, w + dw, 3)``, one weight shared by the dilation-1 and dilation-3 convs (``dw`` starts at
  0), the switch ``S`` a 5x5 average pool + 1x1 conv (starting at S = 1: the dilation-1 conv),
  a global-context 1x1 conv before and after (starting at 0: no context). ``deformable``: both
  convs sample at learned offsets (``rcnn_cli.ops.deform_conv``: torchvision's
  ``deform_conv2d``, vectorised on CPU; offsets start at 0).
- ``convert_trunk``: every conv of a torchvision ResNet standardised, every 3x3 conv of res3-res5
  switchable, starting from the loaded weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn_cli.ops.deform_conv import OffsetConv2d, deform_conv2d

EPS = 1e-5
SAC_STAGES = ("layer2", "layer3", "layer4")  # res3-res5 (DetectoRS §5: stage_with_sac)


def standardise(weight: Tensor) -> Tensor:
    flat = weight.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = torch.sqrt(flat.var(dim=1) + EPS).view(-1, 1, 1, 1)
    return (weight - mean) / std


class StandardisedConv2d(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_gamma", torch.ones(self.out_channels, 1, 1, 1))
        self.register_buffer("weight_beta", torch.zeros(self.out_channels, 1, 1, 1))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **extra) -> StandardisedConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, **extra)
        new.to(conv.weight.device)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new.weight.requires_grad_(conv.weight.requires_grad)
        new.match_weight()
        return new

    @torch.no_grad()
    def match_weight(self) -> None:
        """gamma, beta such that the standardised weight is the raw weight again."""
        flat = self.weight.flatten(1)
        self.weight_beta.copy_(flat.mean(dim=1).view(-1, 1, 1, 1))
        self.weight_gamma.copy_(torch.sqrt(flat.var(dim=1) + EPS).view(-1, 1, 1, 1))

    def standardised_weight(self, weight: Tensor) -> Tensor:
        """``gamma * standardise(weight) + beta``, folded into one per-channel scale and shift
        of the weight (one pass over it instead of five; the same values to float rounding)."""
        var, mean = torch.var_mean(weight.flatten(1), dim=1)
        scale = self.weight_gamma / torch.sqrt(var + EPS).view(-1, 1, 1, 1)
        return torch.addcmul(self.weight_beta - mean.view(-1, 1, 1, 1) * scale, weight, scale)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.standardised_weight(self.weight), self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain conv's weights (an ImageNet ResNet) carry no gamma/beta: derive them.
        plain = prefix + "weight_gamma" not in state_dict and prefix + "weight" in state_dict
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if plain:
            self.match_weight()
            ours = (prefix + "weight_gamma", prefix + "weight_beta")
            missing_keys[before:] = [k for k in missing_keys[before:] if k not in ours]


class SwitchableAtrousConv2d(StandardisedConv2d):
    def __init__(self, *args, deformable: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.kernel_size != (3, 3):
            raise ValueError("switchable atrous convolution replaces 3x3 convs without groups")
        c_in, c_out = self.in_channels, self.out_channels
        self.switch = nn.Conv2d(c_in, 1, 1, stride=self.stride)
        self.weight_diff = nn.Parameter(torch.zeros_like(self.weight))
        self.pre_context = nn.Conv2d(c_in, c_in, 1)
        self.post_context = nn.Conv2d(c_out, c_out, 1)
        self.deformable = deformable
        self.offset_s = self.offset_l = None
        if deformable:
            self.offset_s = OffsetConv2d(c_in, 9, stride=self.stride)
            self.offset_l = OffsetConv2d(c_in, 9, stride=self.stride)
        for m in (self.pre_context, self.post_context):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.switch.weight)
        nn.init.ones_(self.switch.bias)

    def atrous(self, x: Tensor, weight: Tensor, rate: int, offsets: nn.Module | None,
               pooled: Tensor) -> Tensor:
        padding = tuple(rate * p for p in self.padding)
        dilation = tuple(rate * d for d in self.dilation)
        if offsets is None:
            return F.conv2d(x, weight, self.bias, self.stride, padding, dilation)
        return deform_conv2d(x, offsets(pooled), weight, self.bias, self.stride, padding,
                             dilation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pre_context(F.adaptive_avg_pool2d(x, 1))
        # reflect-padding needs maps larger than the pad (tiny test images: replicate)
        mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
        pooled = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode=mode), kernel_size=5, stride=1)
        s = self.switch(pooled)
        weight = self.standardised_weight(self.weight)
        small = self.atrous(x, weight, 1, self.offset_s, pooled)
        large = self.atrous(x, weight + self.weight_diff, 3, self.offset_l, pooled)
        out = s * small + (1 - s) * large
        return out + self.post_context(F.adaptive_avg_pool2d(out, 1))


def convert_trunk(trunk: nn.Module, deformable: bool) -> nn.Module:
    """In place: every conv standardised; the 3x3 convs of res3-res5 switchable."""
    for name, module in list(trunk.named_modules()):
        if type(module) is not nn.Conv2d:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = trunk.get_submodule(parent_name) if parent_name else trunk
        if name.startswith(SAC_STAGES) and module.kernel_size == (3, 3):
            new = SwitchableAtrousConv2d.from_conv(module, deformable=deformable)
        else:
            new = StandardisedConv2d.from_conv(module)
        setattr(parent, attr, new)
    return trunk
