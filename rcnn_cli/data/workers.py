"""DataLoader workers leave stop signals to the main process.

A cluster stops a job by signalling its whole process group (``kill -- -<pgid>``, ``timeout``,
systemd, SLURM's ``scancel`` and preemption, Ctrl-C in a terminal), so the loader's workers get
the signal too. Killed there, they take the run down inside the step, before the main process
reaches the step boundary where it checkpoints (``rcnn_cli.engine.faults.StopSignal``).

So a worker ignores SIGINT, SIGUSR1 and SIGUSR2, and SIGTERM from anyone but its parent: the
main process still ends a worker that does not answer its shutdown request with SIGTERM, and
that must keep working. A SIGTERM's sender is only known to ``sigwaitinfo``, so the worker
blocks SIGTERM and a watcher thread takes each one, exiting when the parent sent it (what
torch's own worker handler does). ``Loader`` starts its workers with those signals blocked, so
none lands between the worker's start and its ``worker_init_fn``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

from torch.utils.data import DataLoader

IGNORED = (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGTERM, *IGNORED)


def _exit_on_parent_sigterm(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


def leave_stop_signals_to_main(worker_id: int) -> None:
    """``worker_init_fn``: runs in each worker before it loads anything."""
    for s in IGNORED:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit
    parent = multiprocessing.parent_process()  # the main process, also under forkserver
    threading.Thread(target=_exit_on_parent_sigterm, name="sigterm-from-parent",
                     args=(parent.pid if parent else os.getppid(),), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(IGNORED))


class Loader(DataLoader):
    """A ``DataLoader`` whose workers leave stop signals to the main process."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("worker_init_fn") is not None:
            raise ValueError("Loader sets its own worker_init_fn")
        super().__init__(*args, worker_init_fn=leave_stop_signals_to_main, **kwargs)

    def __iter__(self):
        if self.num_workers == 0 or threading.current_thread() is not threading.main_thread():
            return super().__iter__()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
        try:  # workers start here and inherit the mask; the main process gets its signals after
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
