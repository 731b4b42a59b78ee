"""Benchmark building blocks (``benchmarks/vs_torchvision.py``): the bare torchvision peer, per-part clocks,
FLOP counts against a measured peak, peak memory."""
