"""Exponential moving average of the weights (Polyak & Juditsky 1992; "model EMA").

After every optimizer step ``ema = d * ema + (1 - d) * weights`` over the floating-point
parameters and buffers. The decay ramps up as ``d_t = decay * (1 - exp(-t / warmup))``
(the warm-up of YOLOv5's ``ModelEMA``, ultralytics/yolov5 ``utils/torch_utils.py``), so early
averages are not dominated by the random initialisation. When on, the average is what is
evaluated, kept as ``best`` and exported; checkpoints carry it (``"ema"``) for exact resume.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from rcnn_cli.errors import CheckpointError


class WeightEMA:
    """An averaged copy of ``model`` (``self.module``, in eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float, warmup: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = source[name].detach()
            if avg.is_floating_point():
                avg.mul_(d).add_(new.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(new)

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


def build_ema(model: nn.Module, cfg) -> WeightEMA | None:
    """``schedule.ema`` (decay 0 = off)."""
    ema = cfg.get("ema") if cfg is not None else None
    if ema is None or not ema.decay:
        return None
    return WeightEMA(model, float(ema.decay), float(ema.warmup))


def restore_ema(ema: WeightEMA | None, ckpt: dict, path) -> None:
    """Load the average from a checkpoint; refuse one written without it."""
    if ema is None:
        return
    if "ema" not in ckpt:
        raise CheckpointError(f"{path}: has no weight average; resume it with "
                              "schedule.ema.decay=0 or start a new run")
    ema.load_state_dict(ckpt["ema"])


def inference_weights(ckpt: dict) -> dict:
    """The weights to evaluate or export: the average when the run kept one."""
    return ckpt["ema"]["weights"] if "ema" in ckpt else ckpt["model"]
