"""Optimizers (SGD with momentum, AdamW); linear warm-up then step or cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from rcnn_cli.errors import ConfigError
from rcnn_cli.ops.deform_conv import OffsetConv2d


def param_groups(model: nn.Module, lr: float, offset_lr_mult: float) -> list[dict]:
    """The trainable parameters at ``lr``; those of deformable offset layers
    (``OffsetConv2d``) in a second group at ``lr * offset_lr_mult``, where there are any and
    the multiplier is not 1 (at 1: one group, as before the multiplier existed)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if offset_lr_mult == 1.0:
        return [{"params": trainable, "lr": lr}]
    offsets = {id(p) for m in model.modules() if isinstance(m, OffsetConv2d)
               for p in m.parameters()}
    groups = [{"params": [p for p in trainable if id(p) not in offsets], "lr": lr},
              {"params": [p for p in trainable if id(p) in offsets], "lr": lr * offset_lr_mult}]
    return [g for g in groups if g["params"]]


def check_groups(saved: dict, optimizer: torch.optim.Optimizer, path) -> None:
    """A checkpoint's optimizer state has as many parameter groups as ``optimizer``; a
    deformable model saved with the offsets in the main group (``schedule.offset_lr_mult=1.0``,
    or before the key existed) is named with the key that resumes it."""
    have, want = len(saved["param_groups"]), len(optimizer.param_groups)
    if have != want:
        raise ConfigError(f"resume={path}: the checkpoint's optimizer has {have} parameter "
                          f"group(s), this config's {want}: set schedule.offset_lr_mult as the "
                          "run had it (1.0: the deformable offsets in the main group)")


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float,
                    weight_decay: float, fused: bool = False,
                    offset_lr_mult: float = 1.0) -> torch.optim.Optimizer:
    """SGD with momentum (the papers' choice) or AdamW (Loshchilov & Hutter 2019).
    ``fused``: torch's one-kernel update (faster; rounds differently from the loop).
    ``offset_lr_mult``: see ``param_groups``."""
    params = param_groups(model, lr, offset_lr_mult)
    name = getattr(name, "value", name)
    fused = fused or None
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999),
                                 weight_decay=weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=fused)


def lr_factor(it: int, max_iter: int, warmup_iters: int, warmup_factor: float, decay: str,
              decay_steps: list[float], gamma: float) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based)."""
    if decay == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(it, max_iter) / max(1, max_iter)))
    else:
        factor = gamma ** sum(it >= int(f * max_iter) for f in decay_steps)
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, schedule) -> torch.optim.lr_scheduler.LambdaLR:
    decay = getattr(schedule.decay, "value", schedule.decay)
    steps = list(schedule.decay_steps)

    def factor(it: int) -> float:
        return lr_factor(it, schedule.max_iter, schedule.warmup_iters, schedule.warmup_factor,
                         decay, steps, schedule.gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
