"""DataLoader workers leave stop signals to the main process, yet still end when it says so."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from rcnn_cli.data.workers import STOP_SIGNALS, Loader


class SignalsItself(Dataset):
    """Each item sends every stop signal to the worker loading it (as a group-wide signal
    reaches it: from a process other than its parent)."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        for s in STOP_SIGNALS:
            os.kill(os.getpid(), s)
        return torch.tensor(i)


def test_workers_ignore_stop_signals_from_others():
    loader = Loader(SignalsItself(), batch_size=2, num_workers=2)
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4, 5]]


class StuckAfterFirst(Dataset):
    def __init__(self, pid_file: Path):
        self.pid_file = pid_file

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i > 0:
            self.pid_file.write_text(str(os.getpid()))
            time.sleep(600)
        return torch.tensor(i)


def test_a_stuck_worker_still_ends_on_its_parents_sigterm(tmp_path):
    """The loader's shutdown terminates a worker that does not answer (SIGTERM from the
    parent): ignoring SIGTERM altogether would leave the main process waiting at exit."""
    it = iter(Loader(StuckAfterFirst(tmp_path / "pid"), batch_size=1, num_workers=1))
    assert next(it).tolist() == [0]
    while not (tmp_path / "pid").is_file():
        time.sleep(0.05)
    pid = int((tmp_path / "pid").read_text())
    os.kill(pid, signal.SIGTERM)  # from the main process: the loader's own shutdown signal
    deadline = time.monotonic() + 60
    while pid in [p.pid for p in multiprocessing.active_children()]:
        assert time.monotonic() < deadline, "the worker ignored its parent's SIGTERM"
        time.sleep(0.1)
    del it
    gc.collect()
