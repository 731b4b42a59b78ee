"""Shared entry-point behaviour: expected errors become one message and exit code 1."""

from __future__ import annotations

import contextlib
import logging
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


@contextlib.contextmanager
def report_errors():
    """Print an expected failure without a traceback (``hydra.verbose=true`` shows it).

    In a multirun the error is re-raised so the sweep records the failed job and goes on.
    """
    try:
        yield
    except RcnnError as e:
        multirun, verbose = _hydra_state()
        if multirun or verbose:
            raise
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(1)
