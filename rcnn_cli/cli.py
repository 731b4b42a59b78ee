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

from rcnn_cli.errors import RcnnError

log = logging.getLogger("rcnn_cli")


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
