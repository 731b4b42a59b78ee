"""benchmarks/lineage.py: the timing split, the table and its ratios, missing systems named, and
(slow) a tiny end-to-end run of every system this checkout has."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torchvision
from torch import nn

from rcnn_cli.errors import ConfigError
from tests.conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("lineage", REPO / "benchmarks" / "lineage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lineage = load_script()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Spend(nn.Module):
    """Advances the fake clock by ``before``, runs ``inner``, then advances by ``after``."""

    def __init__(self, clock: FakeClock, before: float, inner: nn.Module | None = None,
                 after: float = 0.0):
        super().__init__()
        self.clock, self.before, self.inner, self.after = clock, before, inner, after

    def forward(self, x):
        self.clock.now += self.before
        if self.inner is not None:
            x = self.inner(x)
        self.clock.now += self.after
        return x


def test_part_timer_charges_nested_modules_exclusively():
    clock = FakeClock()
    backbone = Spend(clock, 2.0)
    roi_heads = Spend(clock, 1.0, inner=backbone, after=0.5)  # R-CNN-like: CNN inside heads
    timer = lineage.PartTimer({"backbone": backbone, "roi_heads": roi_heads}, clock)
    roi_heads(torch.zeros(1))
    backbone(torch.zeros(1))
    assert timer.totals == {"backbone": 4.0, "roi_heads": 1.5}
    timer.reset()
    assert timer.totals == {"backbone": 0.0, "roi_heads": 0.0}
    timer.remove()
    roi_heads(torch.zeros(1))
    assert timer.totals == {"backbone": 0.0, "roi_heads": 0.0}


def test_split_times_for_rpn_and_external_proposals():
    rpn = lineage.split_times(1.0, {"backbone": 0.5, "rpn": 0.2, "roi_heads": 0.25}, None)
    assert rpn == pytest.approx({"proposals": 0.2, "cnn": 0.5, "region": 0.25, "other": 0.05,
                                 "total": 1.0})
    ss = lineage.split_times(1.0, {"backbone": 0.6, "roi_heads": 0.3}, 2.0)
    assert ss == pytest.approx({"proposals": 2.0, "cnn": 0.6, "region": 0.3, "other": 0.1,
                                "total": 3.0})


def record(label: str, total: float, ap=0.5, cache=None) -> dict:
    return {"label": label, "overrides": [f"model={label}"], "train_s": 120.0, "AP": ap,
            "AP50": None if ap is None else 0.75,
            "proposal_cache_s": cache,
            "test": {"proposals_ms": 1.0, "cnn_ms": 2.0, "region_ms": 3.0, "other_ms": 0.5,
                     "total_ms": total}}


def test_table_rows_and_the_papers_order_with_ratios(tmp_path):
    records = [record("R-CNN", 900.0, cache=30.0), record("SPPNet", 300.0),
               record("Fast R-CNN (SS)", 400.0, ap=None), record("Faster R-CNN", 100.0),
               {"label": "FPN", "overrides": [], "error": "RuntimeError: out of memory\nmore"}]
    table = lineage.format_table(records)
    assert table.splitlines()[2] == ("| R-CNN | 2.0 min | 1.0 | 2.0 | 3.0 | 0.5 | 900.0 | "
                                     "0.500 | 0.750 |")
    assert "| n/a | n/a |" in table.splitlines()[4]
    assert table.splitlines()[6] == "| FPN | failed: RuntimeError: out of memory |" + " |" * 7
    order = lineage.order_report(records)
    assert order == ["- R-CNN / SPPNet: 3.00x per test image (as the papers report)",
                     "- SPPNet / Fast R-CNN (SS): 0.75x per test image (NOT as the papers report)",
                     "- Fast R-CNN (SS) / Faster R-CNN: 4.00x per test image (as the papers report)"]
    assert lineage.order_report(records[2:])[-1] == "- not in this table: R-CNN, SPPNet"
    text = lineage.write_report(records, tmp_path, "header")
    assert (tmp_path / "lineage.md").read_text() == text
    assert "R-CNN 30.0 s" in text and "- SPPNet: `model=SPPNet`" in text
    assert [r["label"] for r in json.loads((tmp_path / "lineage.json").read_text())] == \
        [r["label"] for r in records]


def test_system_table_and_budget_overrides():
    labels = [label for label, _ in lineage.SYSTEMS]
    assert len(set(labels)) == len(labels) and set(lineage.PAPER_ORDER) <= set(labels)
    assert lineage.effective_overrides(["a=1", "b=2", "a=3"]) == ["a=3", "b=2"]
    assert [label for label, _ in lineage.select_systems("fpn,R-CNN")] == ["FPN", "R-CNN"]
    with pytest.raises(ConfigError, match="unknown system 'Yolo'"):
        lineage.select_systems("Yolo")
    # budget < the system's declared deviation < the user's explicit override
    system = ["model=faster", "schedule.max_iter=7"]
    assert lineage.compose_system("X", system, ["schedule.max_iter=100"]).schedule.max_iter == 7
    assert lineage.compose_system("X", system, ["schedule.max_iter=100"],
                                  ["schedule.max_iter=9"]).schedule.max_iter == 9


def test_a_missing_system_is_a_clear_error_naming_it(monkeypatch, capsys, tmp_path):
    with pytest.raises(ConfigError, match=r"system 'Time machine' \(model=tardis\)"):
        lineage.compose_system("Time machine", ["model=tardis"], [])
    monkeypatch.setattr(lineage, "SYSTEMS", [*lineage.SYSTEMS, ("Time machine", ["model=tardis"])])
    assert lineage.main(["--out", str(tmp_path), "--systems", "FPN,Time machine"]) == 1
    assert "system 'Time machine' (model=tardis) cannot be set up" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was trained


def test_a_failing_system_is_tabled_and_the_others_still_run(monkeypatch, tmp_path):
    ran = []

    def fake_run(label, overrides, cfg, out, fresh):
        ran.append(label)
        if label == "FPN":
            raise RuntimeError("boom")
        r = record(label, 10.0)
        return {**{k: v for k, v in r.items() if k != "test"}, "ckpt": str(out / "x.pt")}

    timed = []

    def fake_time(ckpts, images):
        timed.append(sorted(ckpts))
        return {label: record(label, 10.0)["test"] for label in ckpts}

    monkeypatch.setattr(lineage, "run_system", fake_run)
    monkeypatch.setattr(lineage, "time_systems", fake_time)
    assert lineage.main(["--out", str(tmp_path), "--systems", "FPN,Cascade R-CNN"]) == 1
    assert ran == ["FPN", "Cascade R-CNN"] and timed == [["Cascade R-CNN"]]
    table = (tmp_path / "lineage.md").read_text()
    assert "| FPN | failed: RuntimeError: boom |" in table
    assert "| Cascade R-CNN | 2.0 min | 1.0 | 2.0 | 3.0 | 0.5 | 10.0 |" in table


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
    results = lineage.time_systems({"A": "a.pt", "X": "broken.pt", "B": "b.pt"}, 5, warmup=1)
    assert calls == [("warm-up", "a.pt", 0), ("warm-up", "b.pt", 0), ("a.pt", 0), ("b.pt", 0),
                     ("a.pt", 1), ("b.pt", 1), ("a.pt", 2)]
    assert results == {"A": {"images": 3}, "B": {"images": 2},
                       "X": {"error": "RuntimeError: no such checkpoint"}}


TINY_BUDGET = ["dataset.train_size=4", "dataset.val_size=2", "dataset.image_size=64",
               "schedule.batch_size=2", "schedule.max_iter=4", "schedule.warmup_iters=2",
               "schedule.checkpoint_period=2", "log.period=2", "dataset.num_workers=0",
               "proposals.workers=0"]


def available_systems() -> list[str]:
    found = []
    for label, overrides in lineage.SYSTEMS:
        try:
            lineage.compose_system(label, overrides, [])
        except ConfigError:
            continue
        found.append(label)
    return found


@pytest.mark.slow
def test_tiny_lineage_of_every_available_system(tmp_path, monkeypatch):
    systems = available_systems()
    assert {"Fast R-CNN (SS)", "Faster R-CNN", "Faster R-CNN 4-step", "FPN", "Mask R-CNN",
            "Cascade R-CNN"} <= set(systems)
    out = tmp_path / "lineage"
    weights = []
    if {"R-CNN", "SPPNet"} & set(systems):  # their recipes start from AlexNet weights
        torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pt")
        weights = ["--backbone-weights", f"alexnet={tmp_path / 'alexnet.pt'}"]
    args = ["--out", str(out), "--systems", ",".join(systems), "--time-images", "2",
            *weights, *TINY_BUDGET]
    assert lineage.main(args) == 0
    records = json.loads((out / "lineage.json").read_text())
    assert [r["label"] for r in records] == systems
    for r in records:
        t = r["test"]
        assert t["images"] == 2 and r["train_s"] > 0 and 0 <= r["AP50"] <= 1
        assert t["cnn_ms"] > 0 and t["region_ms"] > 0 and t["proposals_ms"] > 0
        parts = sum(t[f"{p}_ms"] for p in lineage.PARTS)
        assert t["total_ms"] == pytest.approx(parts)
        assert (r["proposal_cache_s"] is not None) == (r["proposals"] == "selective_search")
    table = (out / "lineage.md").read_text()
    assert all(f"| {label} |" in table for label in systems)
    # A re-run reuses every finished system instead of training again.
    monkeypatch.setattr("rcnn_cli.engine.train.train",
                        lambda *a, **k: pytest.fail("trained again"))
    assert lineage.main(args) == 0
