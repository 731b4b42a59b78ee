"""Faults during training: each one stops the run with a message a person can act on.

- non-finite loss: stop at that step naming iteration, loss terms and image ids, and write
  ``failed_batch.json``; the last good checkpoint is kept (nothing is saved after the fault);
- non-finite gradients: the step is skipped (GradScaler does this under fp16); more than
  ``faults.max_nonfinite_steps`` in a row is an error (a collapsing loss scale never errors
  by itself);
- SIGTERM / SIGINT, and the advance-warning signals SIGUSR1 (``sbatch --signal=USR1@<s>``)
  and submitit's preemption signal (SIGUSR2): finish the current step (or evaluation batch),
  checkpoint, exit with ``EXIT_INTERRUPTED`` and a resume hint. Sent to the whole process
  group, they reach the DataLoader workers too, which leave them to the main process
  (``rcnn_cli.data.workers``);
- out-of-memory: error naming the batch's image sizes and box counts;
- DataLoader worker killed (the out-of-memory killer's SIGKILL) or hung: one line naming the
  worker and the settings to lower, instead of torch's RuntimeError from wherever the main
  process happened to be;
- bad boxes reaching the model (non-finite, w or h <= 0): error naming image and box, since
  an ``inf`` coordinate crashes ``roi_align`` outright.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import time
from pathlib import Path

import torch

from rcnn_cli.errors import DataError, RcnnError
from rcnn_cli.io import atomic_write_json

log = logging.getLogger("rcnn_cli")

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: "try again" -- the run can be resumed


class TrainingFault(RcnnError):
    """Training cannot go on (non-finite values, out of memory, data loading failed)."""


class NonFiniteLossError(TrainingFault):
    pass


class NonFiniteGradError(TrainingFault):
    pass


class Interrupted(RcnnError):
    """SIGTERM/SIGINT: a checkpoint was written; the CLI exits with ``EXIT_INTERRUPTED``."""

    exit_code = EXIT_INTERRUPTED


def image_id(target: dict):
    v = target.get("image_id")
    return v.item() if torch.is_tensor(v) else v


def describe_batch(images, targets) -> dict:
    return {"image_ids": [image_id(t) for t in targets],
            "image_sizes": [list(im.shape[-2:]) for im in images],
            "box_counts": [int(len(t["boxes"])) for t in targets]}


def check_targets(targets) -> None:
    """Boxes must be finite with positive width and height before they reach the model."""
    for t in targets:
        boxes = t["boxes"]
        if boxes.numel() == 0:
            continue
        finite = torch.isfinite(boxes).all(dim=1)
        positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        bad = (~(finite & positive)).nonzero().flatten().tolist()
        if bad:
            raise DataError(f"image {image_id(t)}: box {bad[0]} = {boxes[bad[0]].tolist()} is "
                            f"non-finite or has w/h <= 0 ({len(bad)} such box(es)); the dataset "
                            "validation should have caught it")


def check_loss(losses: dict, iteration: int, images, targets, run_dir: Path) -> dict:
    """The loss terms as floats; ``NonFiniteLossError`` (after writing ``failed_batch.json``)
    if any is NaN or infinite."""
    values = {k: float(v.detach()) for k, v in losses.items()}
    if all(math.isfinite(v) for v in values.values()):
        return values
    batch = describe_batch(images, targets)
    path = Path(run_dir) / "failed_batch.json"
    atomic_write_json(path, {"iteration": iteration,
                             "losses": {k: repr(v) for k, v in values.items()}, **batch})
    raise NonFiniteLossError(
        f"non-finite loss at iteration {iteration}: "
        + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        + f"; image ids {batch['image_ids']}; batch written to {path}; the last good "
        "checkpoint is kept")


class GradGuard:
    """Counts consecutive optimizer steps skipped for non-finite gradients."""

    def __init__(self, limit: int):
        self.limit, self.skipped_in_a_row, self.skipped_total = limit, 0, 0

    def update(self, skipped: bool, iteration: int, detail: str = "") -> None:
        if not skipped:
            self.skipped_in_a_row = 0
            return
        self.skipped_in_a_row += 1
        self.skipped_total += 1
        log.warning("iteration %d: non-finite gradients, optimizer step skipped (%d in a row)%s",
                    iteration, self.skipped_in_a_row, detail)
        if self.skipped_in_a_row >= self.limit:
            raise NonFiniteGradError(
                f"{self.skipped_in_a_row} steps in a row with non-finite gradients (up to "
                f"iteration {iteration}){detail}; training diverged: lower schedule.lr, set "
                "schedule.clip_grad_norm, or raise faults.max_nonfinite_steps")


def grads_finite(params) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def advance_warning_signals() -> tuple[signal.Signals, ...]:
    """SIGUSR1 (``sbatch --signal=USR1@<seconds>``) and submitit's timeout/preemption signal
    (``$SUBMITIT_PREEMPT_SIGNAL``, SIGUSR2 by default in submitit >= 1.5)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return tuple(dict.fromkeys((signal.SIGUSR1, getattr(signal, name, signal.SIGUSR2))))


# A SIGINT this soon after the first stop signal is the same stop delivered twice (to the
# group by the terminal and forwarded by torchrun or srun), not a person pressing Ctrl-C again.
REPEAT_S = 1.0


class StopSignal:
    """Within ``with``: SIGTERM, SIGINT and the advance-warning signals set ``requested``
    instead of killing the process.

    The loop checks it at each step boundary (``stop_requested()`` reads it anywhere, e.g. in
    the evaluation loop); a second SIGINT (more than ``REPEAT_S`` later) interrupts at once. Leaving the block with
    ``Interrupted`` after an advance-warning signal hands that signal on to the handler it
    replaced (submitit's checkpoint-and-requeue), now that the checkpoint is written.
    """

    active: StopSignal | None = None  # signal handlers are per process, so is the stop

    def __init__(self):
        self.requested: str | None = None
        self._signum: int | None = None
        self._since = 0.0
        self._previous: dict = {}
        self._outer: StopSignal | None = None

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested and signum == signal.SIGINT and now - self._since > REPEAT_S:
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested, self._signum, self._since = signal.Signals(signum).name, signum, now
        log.warning("%s received: stopping after the current step with a checkpoint",
                    signal.Signals(signum).name)

    def __enter__(self) -> StopSignal:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for s in (signal.SIGTERM, signal.SIGINT, *advance_warning_signals()):
                self._previous[s] = signal.signal(s, self._handle)
            self._outer, StopSignal.active = StopSignal.active, self
            if self._outer is not None:  # a stop that came before this block still counts
                self.requested, self._signum = self._outer.requested, self._outer._signum
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._previous:
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        StopSignal.active = self._outer
        if self._outer is not None and self.requested and not self._outer.requested:
            self._outer.requested, self._outer._signum = self.requested, self._signum
        previous = self._previous.get(self._signum)
        if (exc_type is not None and issubclass(exc_type, Interrupted) and self._outer is None
                and self._signum in advance_warning_signals() and callable(previous)):
            log.info("handing %s on to %s", self.requested, getattr(previous, "__qualname__",
                                                                     previous))
            previous(self._signum, None)


def stop_requested() -> str | None:
    """The stop signal received inside the current ``StopSignal`` block, if any."""
    return StopSignal.active.requested if StopSignal.active is not None else None


class StopRequested(RcnnError):
    """A stop signal, raised at a batch boundary of work that keeps no checkpoint (a stage that
    writes its outputs at its end re-runs on resume); ``signal`` names it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal = signal_name


def stop_point() -> None:
    """``StopRequested`` if a stop signal arrived."""
    requested = stop_requested()
    if requested:
        raise StopRequested(requested)


class UntilStop:
    """Iterate ``loader`` until a stop signal arrives: then end (the evaluation loop, whose
    caller checkpoints) or, with ``raising``, raise ``StopRequested``."""

    def __init__(self, loader, raising: bool = False):
        self.loader, self.raising = loader, raising

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.raising:
                stop_point()
            elif stop_requested():
                return
            yield batch


@contextlib.contextmanager
def oom_guard(images, targets, iteration: int):
    """Out-of-memory becomes a ``TrainingFault`` describing the batch."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        batch = describe_batch(images, targets)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TrainingFault(
            f"out of memory at iteration {iteration} ({first}); batch image ids "
            f"{batch['image_ids']}, image sizes (h, w) {batch['image_sizes']}, box counts "
            f"{batch['box_counts']}: lower schedule.batch_size or dataset.max_size") from None


WORKER_FAILURES = ("DataLoader worker", "DataLoader timed out")
DEAD_WORKER = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (is killed by signal: "
                         r"[^.]+|exited unexpectedly(?: with exit code -?\d+)?)")


def worker_failure(e: RuntimeError) -> TrainingFault | None:
    """The one-line fault for torch's DataLoader errors (None for any other error)."""
    text = str(e).strip()
    if not any(s in text for s in WORKER_FAILURES):
        return None
    dead = DEAD_WORKER.search(text)
    if dead:
        return TrainingFault(
            f"data loading failed: DataLoader worker (pid {dead[1]}) {dead[2]}, most likely "
            "ended by the out-of-memory killer: lower dataset.num_workers or "
            "schedule.batch_size (dataset.num_workers=0 shows an error raised while loading); "
            "the checkpoints written so far are intact")
    return TrainingFault(
        f"data loading failed: {text.splitlines()[0]}. Hint: a worker killed by the OS usually "
        "ran out of memory (or /dev/shm is small); try dataset.num_workers=0 to see the "
        "underlying error, or raise faults.dataloader_timeout if loading is slow")


@contextlib.contextmanager
def worker_deaths():
    """A dead DataLoader worker becomes a ``TrainingFault``. torch reports it from its SIGCHLD
    handler, i.e. wherever the main process is at that moment (often inside ``backward``)."""
    try:
        yield
    except RuntimeError as e:
        fault = worker_failure(e)
        if fault is None:
            raise
        raise fault from None


def guarded_batches(loader, timeout: float):
    """Iterate a DataLoader; a killed, crashed or hung worker becomes a ``TrainingFault``."""
    if loader.num_workers > 0 and timeout > 0:
        loader.timeout = timeout
    # One guard over the whole body: torch raises a worker's death from its SIGCHLD handler in
    # whichever frame runs at that moment, iter() (the workers start there) included.
    with worker_deaths():
        yield from iter(loader)
