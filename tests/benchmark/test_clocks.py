"""Per-part clocks cover a detector's forward and leave the model as it was."""

from __future__ import annotations

import time

import torch
from torch import nn

from rcnn_cli.benchmark.clocks import PARTS, ExclusiveClock, PartClock, phase
from rcnn_cli.modeling.build import build_detector
from tests.conftest import compose_cfg


def test_parts_add_up_to_the_forward_and_the_clock_comes_off():
    model = build_detector(compose_cfg("train", ["model.box_head.score_thresh=0.0"]), 3).eval()
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    clock = PartClock(model)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(images)
        total = time.perf_counter() - t0
    parts = clock.take()
    assert set(parts) == set(PARTS)
    assert all(v > 0 for v in parts.values()), parts
    assert 0.7 * total < sum(parts.values()) <= total
    assert clock.take() == dict.fromkeys(PARTS, 0.0)
    clock.close()
    assert "postprocess" not in vars(model.transform)
    assert "postprocess_detections" not in vars(model.roi_heads)
    assert not model.backbone._forward_hooks and not model.rpn._forward_pre_hooks


def test_phase_accumulates():
    times: dict = {}
    for _ in range(2):
        with phase(times, "x"):
            time.sleep(0.01)
    assert times["x"] >= 0.02


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Spend(nn.Module):
    """Advances the fake clock by ``before``, runs ``inner``, then advances by ``after``."""

    def __init__(self, clock: FakeClock, before: float, inner: nn.Module | None = None,
                 after: float = 0.0):
        super().__init__()
        self.clock, self.before, self.inner, self.after = clock, before, inner, after

    def forward(self, x):
        self.clock.now += self.before
        if self.inner is not None:
            x = self.inner(x)
        self.clock.now += self.after
        return x


def test_the_exclusive_clock_charges_nested_modules_exclusively():
    clock = FakeClock()
    backbone = Spend(clock, 2.0)
    roi_heads = Spend(clock, 1.0, inner=backbone, after=0.5)  # one inside the other
    timer = ExclusiveClock({"backbone": backbone, "roi_heads": roi_heads}, clock)
    roi_heads(torch.zeros(1))
    backbone(torch.zeros(1))
    assert timer.totals == {"backbone": 4.0, "roi_heads": 1.5}
    timer.reset()
    assert timer.totals == {"backbone": 0.0, "roi_heads": 0.0}
    timer.remove()
    roi_heads(torch.zeros(1))
    assert timer.totals == {"backbone": 0.0, "roi_heads": 0.0}

