"""Rich tables on the console: in a log (a file, CI, a SLURM job) rich would fold and cut
their rows at 80 columns."""

from __future__ import annotations

import os

from rich.console import Console

LOG_WIDTH = 200  # columns of a rich table written to a file, CI or a SLURM log


def table_console(stderr: bool = False) -> Console:
    """Where rich tables go: a terminal at its own width (or ``COLUMNS``); elsewhere at
    ``LOG_WIDTH``."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(stderr=stderr, width=LOG_WIDTH)
