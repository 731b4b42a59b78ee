"""The lineage's runs trained side by side: one child process of the lineage program per run
(one system, one seed, one thread), ``jobs`` at a time. Each child trains, evaluates, times and
keeps its run as a one-run table would; the parent then reuses their records and times them
all together, interleaved, on the machine the children have left idle."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rcnn_cli.benchmark.lineage.systems import slug
from rcnn_cli.engine import faults

log = logging.getLogger("rcnn_cli")

POLL_S = 0.5


@dataclass(frozen=True)
class Child:
    """One run as a child process: its table key, command line and console log."""

    key: tuple[str, int]
    argv: list[str]
    log_path: Path


def child_argv(script: Path, args, label: str, seed: int, weights: str | None) -> list[str]:
    """The lineage command for one run: the parent's dataset, budget, timing, kept records and
    overrides, only that system and seed, and the trunk weights of that system's backbone
    (``weights``: ``BACKBONE=FILE`` or None). ``--child``: the run is trained, timed alone and
    kept, and neither timed again nor tabled (the parent does both for every run)."""
    argv = [sys.executable, str(script), "--out", str(args.out), "--dataset", args.dataset,
            "--systems", label, "--seeds", str(seed), "--budget-scale", str(args.budget_scale),
            "--time-images", str(args.time_images), "--keep", str(args.keep), "--child"]
    if weights is not None:
        argv += ["--backbone-weights", weights]
    if args.fresh:
        argv.append("--fresh")
    return argv + list(args.overrides)


def plan_children(script: Path, args, runs) -> list[Child]:
    """A child per planned run that its data does not refuse; ``runs`` as ``plan`` makes them
    (system, seed, config with the ``--backbone-weights`` of its trunk set, refusal)."""
    children = []
    for system, seed, cfg, refusal in runs:
        if refusal is not None:
            continue
        weights = cfg.backbone.weights
        trunk = f"{cfg.backbone.name}={weights}" if weights else None
        children.append(Child((system.label, seed),
                              child_argv(script, args, system.label, seed, trunk),
                              args.out / "logs" / f"{slug(system.label)}_seed{seed}.log"))
    return children


def start(child: Child) -> subprocess.Popen:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("lineage: %s seed %d started side by side (console: %s)", *child.key,
             child.log_path)
    with open(child.log_path, "a") as console:
        return subprocess.Popen(child.argv, stdout=console, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_side_by_side(children: list[Child], jobs: int) -> dict[tuple[str, int], str]:
    """Run ``children``, ``jobs`` at a time; the failed ones' messages by key. A stop signal
    (SIGTERM, SIGINT, the advance warnings) is handed on to the running children, which
    checkpoint and exit; none starts after it, and ``faults.Interrupted`` follows."""
    pending, running, failed = list(children), {}, {}
    stopped = False
    with faults.StopSignal() as stop:
        while pending or running:
            if stop.requested and not stopped:
                for _, proc in running.values():
                    proc.send_signal(signal.SIGTERM)
                stopped = True
            if stopped:
                pending.clear()
            while pending and len(running) < jobs:
                child = pending.pop(0)
                running[child.key] = (child, start(child))
            for key, (child, proc) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[key]
                if proc.returncode == faults.EXIT_INTERRUPTED:
                    stopped = True
                elif proc.returncode != 0:
                    failed[key] = f"child exited with {proc.returncode}; see {child.log_path}"
            if running:
                time.sleep(POLL_S)
        if stopped:
            raise faults.Interrupted(stop.requested or "a run side by side was stopped")
    return failed
