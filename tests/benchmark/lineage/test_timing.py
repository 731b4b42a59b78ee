"""The lineage's test-time split and the interleaved timing of several systems."""

from __future__ import annotations

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

    loads = iter([0.9, 2.1])  # before and after the timed images
    monkeypatch.setattr(lineage, "SystemTimer", FakeTimer)
    monkeypatch.setattr(lineage, "machine_load", lambda minutes=1: next(loads))
    results = lineage.time_systems({"A": "a.pt", "X": "broken.pt", "B": "b.pt"}, 5, warmup=1)
    assert calls == [("warm-up", "a.pt", 0), ("warm-up", "b.pt", 0), ("a.pt", 0), ("b.pt", 0),
                     ("a.pt", 1), ("b.pt", 1), ("a.pt", 2)]
    assert results == {"A": {"images": 3, "load": 2.1}, "B": {"images": 2, "load": 2.1},
                       "X": {"error": "RuntimeError: no such checkpoint"}}


def test_machine_load_is_none_where_the_os_has_no_load_average(monkeypatch):
    monkeypatch.setattr(lineage.os, "getloadavg", lambda: (1.234, 0.5, 0.2))
    assert (lineage.machine_load(), lineage.machine_load(15)) == (1.23, 0.2)
    monkeypatch.delattr(lineage.os, "getloadavg")
    assert lineage.machine_load() is None

