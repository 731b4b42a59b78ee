"""Test time per image of trained systems, split as in Faster R-CNN's Table 5 (§4): proposals,
CNN (the ``backbone``), region-wise (``roi_heads``) and the rest; every system interleaved image
by image so that a change in the machine's load affects them alike."""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

import torch

from rcnn_cli.benchmark.clocks import ExclusiveClock

log = logging.getLogger("rcnn_cli")

PARTS = ("proposals", "cnn", "region", "other")
HOOKED = {"backbone": "cnn", "rpn": "proposals", "roi_heads": "region"}


def split_times(forward_s: float, module_s: dict[str, float], ss_s: float | None) -> dict:
    """Seconds of one image -> the table's parts. ``ss_s``: selective search time for systems
    on external proposals (None for the RPN systems, whose ``rpn`` forward is the proposals)."""
    parts = dict.fromkeys(PARTS, 0.0)
    for name, seconds in module_s.items():
        parts[HOOKED[name]] += seconds
    parts["other"] = max(forward_s - sum(module_s.values()), 0.0)
    if ss_s is not None:
        parts["proposals"] += ss_s
    parts["total"] = sum(parts[p] for p in PARTS)
    return parts


class SystemTimer:
    """One trained system's per-image test time over the first ``images`` val images, batch 1,
    split into parts; ``time_image`` runs one image so that systems can be interleaved."""

    def __init__(self, ckpt_path: Path, images: int):
        from rcnn_cli.data.build import build_dataset
        from rcnn_cli.data.loader import eval_loader
        from rcnn_cli.data.proposal_cache import attach_proposals, selective_search_params
        from rcnn_cli.engine.evaluator import build_trained_model, load_trained
        from rcnn_cli.modeling.build import uses_masks

        self.device = torch.device("cpu")
        ckpt, cfg = load_trained(str(ckpt_path))
        self.model = build_trained_model(ckpt, cfg, self.device)
        self.view = build_dataset(cfg.dataset, "val", train=False,
                                  with_masks=uses_masks(cfg.model.name))
        attach_proposals(cfg, "val", self.view)
        self.ss_params = (selective_search_params(cfg.proposals)
                          if cfg.proposals.name == "selective_search" else None)
        self.items = list(itertools.islice(eval_loader(self.view, 1, 0), images))
        self.timer = ExclusiveClock({n: getattr(self.model, n) for n in HOOKED
                                if hasattr(self.model, n)})
        self.sums, self.timed = dict.fromkeys((*PARTS, "total"), 0.0), 0

    def run(self, index: int) -> dict:
        """Seconds per part for image ``index`` (selective search on its pixels included)."""
        from rcnn_cli.evaluation.inference import external_proposals
        from rcnn_cli.modeling.proposals import selective_search

        batch, targets = self.items[index]
        ss_s = None
        if self.ss_params is not None:
            pixels, _ = self.view.raw.raw(index)
            start = time.perf_counter()
            selective_search(pixels, **self.ss_params)
            ss_s = time.perf_counter() - start
        self.timer.reset()
        with torch.inference_mode():
            start = time.perf_counter()
            self.model([img.to(self.device) for img in batch],
                       **external_proposals(targets, self.device))
            forward_s = time.perf_counter() - start
        return split_times(forward_s, self.timer.totals, ss_s)

    def time_image(self, index: int) -> None:
        parts = self.run(index)
        for key in self.sums:
            self.sums[key] += parts[key]
        self.timed += 1

    def result(self) -> dict:
        from rcnn_cli.modeling.backbones import count_parameters

        self.timer.remove()
        return {"images": self.timed, "threads": torch.get_num_threads(),
                "params": count_parameters(self.model)[0],
                **{f"{k}_ms": 1000 * v / max(self.timed, 1) for k, v in self.sums.items()}}


def machine_load(minutes: int = 1) -> float | None:
    """The load average over the last 1, 5 or 15 ``minutes`` (None where the OS has none): work
    done while another job used the CPU shows as a load above the work's own threads."""
    try:
        return round(os.getloadavg()[(1, 5, 15).index(minutes)], 2)
    except (AttributeError, OSError):
        return None


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy since boot, every core summed (Linux's
    ``/proc/stat``; None elsewhere)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


class OtherWork:
    """Cores that other processes kept busy from ``__init__`` to ``cores()``: the machine's busy
    CPU time less this process's own, over the wall time (None where the OS does not say).
    Unlike the load average, it does not lag behind a job that has just ended."""

    def __init__(self):
        self.machine, self.own, self.wall = machine_busy_s(), time.process_time(), time.perf_counter()

    def cores(self) -> float | None:
        machine = machine_busy_s()
        if self.machine is None or machine is None:
            return None
        others = machine - self.machine - (time.process_time() - self.own)
        return round(max(others, 0.0) / max(time.perf_counter() - self.wall, 1e-9), 2)


def time_systems(ckpts: dict, images: int, warmup: int = 2) -> dict:
    """Test time of every run, interleaved image by image (run 1 on image 0, run 2 on image 0,
    ...) so that a change in machine load hits all of them alike; ``warmup`` untimed passes on
    image 0 first. Each result holds the cores other processes kept busy while the images were
    timed (``others``). A run that cannot be timed gets ``{"error": ...}``."""
    timers, results = {}, {}
    for key, ckpt in ckpts.items():
        try:
            timers[key] = SystemTimer(ckpt, images)
            for _ in range(warmup):
                timers[key].run(0)
        except Exception as e:  # noqa: BLE001 - reported in the table, the others go on
            log.exception("lineage: %s cannot be timed", key)
            results[key] = {"error": f"{type(e).__name__}: {e}"}
            timers.pop(key, None)
    other_work = OtherWork()
    for index in range(max((len(t.items) for t in timers.values()), default=0)):
        for timer in timers.values():
            if index < len(timer.items):
                timer.time_image(index)
    others = other_work.cores()
    return {**results, **{key: {**timer.result(), "others": others}
                          for key, timer in timers.items()}}

