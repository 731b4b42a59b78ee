"""Inference speed work for rcnn-predict / rcnn-eval, each switch kept only where
``benchmarks/vs_torchvision.py infer`` measured a gain (docs/benchmarks.md, issue 11).

* ``fold_bn``: a frozen or eval-mode BatchNorm after a convolution is an affine map per output
  channel, so it is folded into the convolution's weight and bias (one pass over the feature
  map instead of two);
* ``channels_last``: the backbone and RPN head run on NHWC tensors (oneDNN's preferred layout on
  x86 CPUs);
* ``compile``: ``torch.compile`` of the backbone with Inductor's freezing (weights pre-packed
  for oneDNN, norms folded); costs a compilation per new input size, so it is off by default;
* batching: ``detect`` runs ``batch_size`` images per forward (images of different sizes are
  zero-padded to a common size, as torchvision batches them, which shifts border features).

All run under ``torch.inference_mode``. Outputs match the unmodified model up to float rounding
(tests/engine/test_fast_inference.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from rcnn_cli.engine import runtime

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A convolution computing ``norm(conv(x))`` (norm in eval mode)."""
    if isinstance(norm, nn.BatchNorm2d):
        if norm.training or norm.running_var is None:
            raise ValueError("fold_bn: a BatchNorm2d in training mode or without running "
                             "statistics cannot be folded")
        weight = norm.weight if norm.affine else torch.ones_like(norm.running_var)
        bias = norm.bias if norm.affine else torch.zeros_like(norm.running_var)
    else:
        weight, bias = norm.weight, norm.bias
    scale = weight * torch.rsqrt(norm.running_var + norm.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(conv.weight.device, conv.weight.dtype)
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_((conv_bias - norm.running_mean) * scale + bias)
    return fused


def _pairs(module: nn.Module):
    """(owner, conv name, norm name) for torchvision's ResNet layout: ``convK``/``bnK`` siblings
    and ``downsample = Sequential(conv, norm)``. Plain convs only: a conv that transforms its
    weight first (DetectoRS's standardised and switchable convs) stays as it is."""
    for owner in module.modules():
        for name, child in owner.named_children():
            if name.startswith("conv") and type(child) is nn.Conv2d:
                norm = getattr(owner, "bn" + name[4:], None)
                if isinstance(norm, NORMS):
                    yield owner, name, "bn" + name[4:]
        if isinstance(owner, nn.Sequential) and len(owner) == 2 and \
                type(owner[0]) is nn.Conv2d and isinstance(owner[1], NORMS):
            yield owner, "0", "1"


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every conv + norm pair of ``module`` in place; returns how many were folded."""
    pairs = list(_pairs(module))
    for owner, conv_name, norm_name in pairs:
        setattr(owner, conv_name, fold_norm_into_conv(getattr(owner, conv_name),
                                                      getattr(owner, norm_name)))
        setattr(owner, norm_name, nn.Identity())
    return len(pairs)


def prepare(model: nn.Module, fold_bn: bool, channels_last: bool, compile: bool) -> nn.Module:
    """Apply the speed switches (``predict.speed``) to a detector in place; eval mode."""
    model.eval()
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return model  # R-CNN / SPPNet: region models keep their own trunk
    if fold_bn:
        fold_batch_norms(backbone)
    if channels_last:
        runtime.convs_channels_last(model)
    if compile:
        import torch._inductor.config as inductor

        inductor.freezing = True
        model.backbone = torch.compile(backbone)
    return model


@torch.inference_mode()
def detect(model: nn.Module, images: list[torch.Tensor], batch_size: int,
           **extra) -> list[dict]:
    """``model(images)`` in batches of ``batch_size`` (``extra``: per-image lists, e.g.
    external proposals, split alike)."""
    outputs: list[dict] = []
    for lo in range(0, len(images), batch_size):
        part = {k: v[lo:lo + batch_size] for k, v in extra.items()}
        outputs += model(images[lo:lo + batch_size], **part)
    return outputs
