"""Benchmark building blocks (``benchmarks/vs_torchvision.py``): the bare torchvision peer, per-part clocks,
FLOP counts against a measured peak, peak memory."""

# The accuracy benchmarks train in fp32 with the plain optimizer step, as their recorded rows
# were: the default recipe's schedule.amp=auto would make their numbers depend on the CPU
# (bf16 on AMX machines, fp32 elsewhere) and a run resumed on another CPU change precision.
# vs_torchvision's loops start from it too, its --speed overrides on top, and so do the tests'
# tiny runs (tests/conftest.py TINY).
FP32_PLAIN_STEP = ["schedule.amp=none", "schedule.fused_optimizer=false",
                   "schedule.channels_last=false"]
