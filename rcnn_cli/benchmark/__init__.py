"""Benchmark building blocks (``scripts/bench.py``): the bare torchvision peer, per-part clocks,
FLOP counts against a measured peak, peak memory."""
