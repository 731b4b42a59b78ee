"""Achieved throughput: FLOPs of a step (``torch.utils.flop_counter``: convolutions and matrix
products, forward and backward) against the machine's measured matmul and convolution peak."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from rcnn_cli.benchmark.clocks import phase


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the convolutions and matrix products that ``fn()`` runs (forward and, if it
    calls ``backward``, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _best_rate(fn: Callable[[], object], flops: float, device: torch.device, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        times: dict = {}
        with phase(times, "run", device):
            fn()
        best = min(best, times["run"])
    return flops / best / 1e9


def measured_peak(device: torch.device, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of a large fp32 matrix product and of a 3x3 convolution of FPN size (256 -> 256
    channels on 8 x 64 x 64), the best of ``reps`` runs each."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    mm = _best_rate(lambda: a @ b, 2.0 * n ** 3, device, reps)
    x = torch.randn(8, 256, 64, 64, device=device)
    w = torch.randn(256, 256, 3, 3, device=device)
    conv_flops = 2.0 * 8 * 64 * 64 * 256 * 256 * 9
    conv = _best_rate(lambda: F.conv2d(x, w, padding=1), conv_flops, device, reps)
    return {"matmul_gflops": mm, "conv_gflops": conv}
