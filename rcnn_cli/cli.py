"""Shared entry-point behaviour: expected errors become one message and a non-zero exit.

``RcnnError`` -> exit 1; ``faults.Interrupted`` (SIGTERM/SIGINT, checkpoint written) -> exit
``EXIT_INTERRUPTED`` (75) so schedulers can requeue. ``hydra.verbose=true`` (or
``RCNN_CLI_DEBUG=1``) re-raises instead, showing the full traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from omegaconf import OmegaConf

from rcnn_cli.errors import RcnnError

log = logging.getLogger("rcnn_cli")


def console_handler(show_path: bool = False, markup: bool = False) -> logging.Handler:
    """The console handler of ``conf/hydra/job_logging/rich.yaml``.

    On a terminal, rich's (columns, colour). Elsewhere (a file, CI, a SLURM log) rich would wrap
    each record at 80 columns into several lines, so there each record is one plain line.
    """
    from rich import get_console  # the console RichHandler writes to

    if get_console().is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=show_path, markup=markup)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    return handler


def choosable_options() -> str:
    """``--help``'s group list (conf/hydra/help/rcnn.yaml): each group with the options a user can
    choose, i.e. its YAML files, without the ``*_schema`` entries of the ConfigStore."""
    from importlib.resources import files

    root = files("rcnn_cli.conf")
    groups = sorted(d for d in root.iterdir() if d.is_dir() and d.name not in ("hydra",
                                                                              "__pycache__"))
    lines = []
    for group in groups:
        options = sorted(f.name.removesuffix(".yaml") for f in group.iterdir()
                         if f.name.endswith(".yaml"))
        if options:
            lines.append(f"{group.name}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("rcnn_cli_options", choosable_options, replace=True)


def _hydra_state() -> tuple[bool, bool]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, False
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN, bool(hc.verbose)


def debug_requested() -> bool:
    return os.environ.get("RCNN_CLI_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def report_errors():
    """Print an expected failure without a traceback (``hydra.verbose=true`` shows it).

    In a multirun the error is re-raised so the sweep records the failed job and goes on.
    """
    try:
        yield
    except RcnnError as e:
        multirun, verbose = _hydra_state()
        if multirun or verbose or debug_requested():
            raise
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(getattr(e, "exit_code", 1))
