"""Where a detector's time goes: per-part forward clocks and per-phase step clocks.

The parts are those of the Faster R-CNN paper's timing table (§4, Table 5 splits conv / proposal
/ region-wise time): ``transform`` (normalise, batch), ``backbone``, ``rpn``, ``roi_heads``
(without post-processing) and ``postprocess`` (per-class NMS + mapping boxes back). They are
timed with forward hooks, so the model code is untouched and the same clock fits torchvision's
``FasterRCNN`` and ours. ``ExclusiveClock`` times any named submodules of any detector (the
lineage's systems differ in structure), each charged its own time only where one runs inside
another.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import torch

PARTS = ("transform", "backbone", "rpn", "roi_heads", "postprocess")


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class PartClock:
    """Accumulates seconds per part over forward passes of a ``GeneralizedRCNN``."""

    def __init__(self, model, device: torch.device | None = None):
        self.device, self.totals = device, defaultdict(float)
        self._open: dict[str, float] = {}
        self._handles, self._wrapped = [], []
        for name in PARTS[:4]:
            module = getattr(model, name)
            self._handles.append(module.register_forward_pre_hook(partial(self._begin, name)))
            self._handles.append(module.register_forward_hook(partial(self._end, name)))
        if hasattr(model.roi_heads, "postprocess_detections"):
            self._wrap(model.roi_heads, "postprocess_detections", inside="roi_heads")
        self._wrap(model.transform, "postprocess", inside=None)

    def _begin(self, name, *_):
        _sync(self.device)
        self._open[name] = time.perf_counter()

    def _end(self, name, *_):
        _sync(self.device)
        self.totals[name] += time.perf_counter() - self._open.pop(name)

    def _wrap(self, owner, method: str, inside: str | None) -> None:
        """Time ``owner.method`` as post-processing; ``inside``: the part whose forward calls
        it (its time is moved from that part to ``postprocess``)."""
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            _sync(self.device)
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            _sync(self.device)
            seconds = time.perf_counter() - t0
            self.totals["postprocess"] += seconds
            if inside is not None:
                self.totals[inside] -= seconds
            return out

        object.__setattr__(owner, method, timed)
        self._wrapped.append((owner, method))

    def take(self) -> dict[str, float]:
        """The totals since the last call (and reset)."""
        out = {p: self.totals.get(p, 0.0) for p in PARTS}
        self.totals.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        for owner, method in self._wrapped:
            object.__delattr__(owner, method)


@contextmanager
def phase(times: dict, name: str, device: torch.device | None = None):
    """Add the wall time of the block to ``times[name]``."""
    _sync(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _sync(device)
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0


class ExclusiveClock:
    """Exclusive wall time per named submodule, from forward pre/post hooks.

    A stack of open calls: when a call ends, its time minus the time of the hooked calls it
    contained is added to its part, and its whole time to its caller's "children" total.
    """

    def __init__(self, modules: dict[str, torch.nn.Module],
                 clock: Callable[[], float] = time.perf_counter):
        self.clock, self.totals = clock, dict.fromkeys(modules, 0.0)
        self._stack: list[list] = []
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._leave(name)))

    def _enter(self, name: str):
        def hook(_module, _args):
            self._stack.append([name, self.clock(), 0.0])
        return hook

    def _leave(self, name: str):
        def hook(_module, _args, _output):
            opened, start, children = self._stack.pop()
            assert opened == name, f"hook order: closed {name} while {opened} was open"
            elapsed = self.clock() - start
            self.totals[name] += elapsed - children
            if self._stack:
                self._stack[-1][2] += elapsed
        return hook

    def reset(self) -> None:
        self.totals = dict.fromkeys(self.totals, 0.0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
