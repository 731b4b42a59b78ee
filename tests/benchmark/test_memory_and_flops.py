"""Peak memory sees a block's allocation; FLOP counts match the textbook formulas."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from rcnn_cli.benchmark.flops import count_flops, measured_peak
from rcnn_cli.benchmark.memory import PeakMemory, cpu_peak_supported, track_allocations


@pytest.mark.skipif(not cpu_peak_supported(), reason="no /proc/self/clear_refs here")
def test_cpu_peak_counts_a_temporary_allocation():
    # as the benchmarks' memory pass does: without it, glibc may serve the block from memory an
    # earlier test in this process freed, and the resident set does not grow
    track_allocations()
    with PeakMemory(torch.device("cpu")) as small:
        torch.ones(10)
    with PeakMemory(torch.device("cpu")) as big:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    assert big.peak_mib >= 60
    assert small.peak_mib < 30


def test_flops_of_a_matmul_and_a_conv_with_backward():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    forward = 2 * 3 * 5 * 5 * 2 * 9
    assert count_flops(lambda: F.conv2d(x, w, padding=1)) == forward
    # backward: the weight gradient only (the input needs none)
    assert count_flops(lambda: F.conv2d(x, w, padding=1).sum().backward()) == 2 * forward


def test_measured_peak_is_positive():
    peak = measured_peak(torch.device("cpu"), reps=1)
    assert peak["matmul_gflops"] > 0 and peak["conv_gflops"] > 0
