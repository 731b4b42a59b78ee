"""The lineage's test-time split and the interleaved timing of several systems."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rcnn_cli.benchmark.lineage import timing as lineage


def test_split_times_for_rpn_and_external_proposals():
    rpn = lineage.split_times(1.0, {"backbone": 0.5, "rpn": 0.2, "roi_heads": 0.25}, None)
    assert rpn == pytest.approx({"proposals": 0.2, "cnn": 0.5, "region": 0.25, "other": 0.05,
                                 "total": 1.0})
    ss = lineage.split_times(1.0, {"backbone": 0.6, "roi_heads": 0.3}, 2.0)
    assert ss == pytest.approx({"proposals": 2.0, "cnn": 0.6, "region": 0.3, "other": 0.1,
                                "total": 3.0})


def test_systems_are_timed_interleaved_image_by_image(monkeypatch):
    calls = []

    class FakeTimer:
        def __init__(self, ckpt, images):
            if ckpt == "broken.pt":
                raise RuntimeError("no such checkpoint")
            self.ckpt, self.items = ckpt, list(range(min(images, 3 if ckpt == "a.pt" else 2)))

        def run(self, index):
            calls.append(("warm-up", self.ckpt, index))

        def time_image(self, index):
            calls.append((self.ckpt, index))

        def result(self):
            return {"images": len(self.items)}

    monkeypatch.setattr(lineage, "SystemTimer", FakeTimer)
    monkeypatch.setattr(lineage.OtherWork, "cores", lambda self: 1.5)
    results = lineage.time_systems({"A": "a.pt", "X": "broken.pt", "B": "b.pt"}, 5, warmup=1)
    assert calls == [("warm-up", "a.pt", 0), ("warm-up", "b.pt", 0), ("a.pt", 0), ("b.pt", 0),
                     ("a.pt", 1), ("b.pt", 1), ("a.pt", 2)]
    assert results == {"A": {"images": 3, "others": 1.5}, "B": {"images": 2, "others": 1.5},
                       "X": {"error": "RuntimeError: no such checkpoint"}}


def test_machine_load_is_none_where_the_os_has_no_load_average(monkeypatch):
    monkeypatch.setattr(lineage.os, "getloadavg", lambda: (1.234, 0.5, 0.2))
    assert (lineage.machine_load(), lineage.machine_load(15)) == (1.23, 0.2)
    monkeypatch.delattr(lineage.os, "getloadavg")
    assert lineage.machine_load() is None


def test_other_work_is_the_machines_busy_time_less_this_process_over_the_wall_time(
        monkeypatch):
    busy = iter([100.0])
    monkeypatch.setattr(lineage, "machine_busy_s", lambda: next(busy))
    work = lineage.OtherWork()
    start = time.perf_counter()
    while time.perf_counter() - start < 0.2:  # this process's own CPU time, one core
        pass
    own = time.process_time() - work.own
    wall = time.perf_counter() - work.wall
    busy = iter([100.0 + own + 1.5 * wall])  # and others kept 1.5 cores busy meanwhile
    assert work.cores() == pytest.approx(1.5, abs=0.05)


def test_other_work_is_none_where_the_os_does_not_say(monkeypatch):
    monkeypatch.setattr(lineage, "Path", lambda _: Path("/nonexistent/stat"))
    assert lineage.machine_busy_s() is None and lineage.OtherWork().cores() is None
