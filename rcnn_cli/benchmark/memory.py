"""Peak memory of a block: CUDA's allocator peak, or on the CPU the process's peak resident set
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) above its size before the block.

On the CPU, glibc keeps freed memory for reuse, which hides a block's allocations from the
resident set; ``track_allocations()`` makes every allocation >= 128 KiB its own mapping
(returned on free) and trims the heap before each block. That slows allocation, so time
first and measure memory in a separate pass.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from pathlib import Path

import torch

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{STATUS}: no {field} line")
    return int(match.group(1))


M_MMAP_THRESHOLD = -3
_LIBC = None


def track_allocations(threshold: int = 1 << 17) -> bool:
    """Fix glibc's mmap threshold (no dynamic raise); False where libc is not glibc."""
    global _LIBC
    try:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        _LIBC = None
        return False


def cpu_peak_supported() -> bool:
    try:
        _status_kib("VmHWM")
        CLEAR_REFS.write_text("5")
        return True
    except (OSError, RuntimeError):
        return False


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_mib``: the block's peak above the
    memory in use when it started (None where the platform cannot tell)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mib = device, None
        self.cpu_ok = device.type != "cpu" or cpu_peak_supported()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.cpu_ok:
            if _LIBC is not None:
                _LIBC.malloc_trim(0)
            CLEAR_REFS.write_text("5")
            self._base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.cpu_ok:
            peak = _status_kib("VmHWM") * 1024
        else:
            return False
        self.peak_mib = max(0, peak - self._base) / 2**20
        return False
