"""One event stream: scalars fan out to metrics.jsonl, TensorBoard and the console log."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("rcnn_cli")


class EventLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.latest: dict[str, float] = {}
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1) if enabled else None
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def scalars(self, iteration: int, values: dict[str, float], prefix: str = "") -> None:
        values = {f"{prefix}{k}": float(v) for k, v in values.items()}
        self.latest.update(values)
        if not self.enabled:
            return
        clean = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        self._jsonl.write(json.dumps({"iteration": iteration, **clean}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, iteration)

    @property
    def tensorboard(self):
        """The TensorBoard ``SummaryWriter`` (None when disabled), for images and PR curves."""
        return self._tb

    def text(self, message: str) -> None:
        log.info(message)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
