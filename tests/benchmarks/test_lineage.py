"""benchmarks/lineage.py: the timing split, the budgets and their overrides, the tables and the
papers' claims, the whole program with a stubbed training (every row, two seeds, the plot,
resume, BCCD's refused mask rows), and (slow) a tiny end-to-end run of every system."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
import torchvision
from torch import nn

from rcnn_cli.errors import ConfigError
from tests.conftest import REPO
from tests.data.helpers import voc_object, voc_tree


def load_script():
    spec = importlib.util.spec_from_file_location("lineage", REPO / "benchmarks" / "lineage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lineage = load_script()
LABELS = [s.label for s in lineage.SYSTEMS]


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


def test_systems_budgets_and_the_order_of_overrides():
    assert len(set(LABELS)) == len(LABELS) and set(lineage.PAPER_ORDER) <= set(LABELS)
    assert {"Cascade Mask R-CNN", "HTC", "DetectoRS"} <= set(LABELS)
    assert all(set(s.iters) == set(lineage.DATASETS) for s in lineage.SYSTEMS)
    assert lineage.split_iterations(2000, (3, 9, 2, 2)) == [375, 1125, 250, 250]
    assert lineage.split_iterations(10, (3, 9, 2, 2)) == [2, 6, 1, 1]
    assert lineage.split_iterations(2, (3, 9, 2, 2)) == [1, 2, 1, 1]  # every stage runs
    assert [s.label for s in lineage.select_systems("fpn,R-CNN")] == ["FPN", "R-CNN"]
    with pytest.raises(ConfigError, match="unknown system 'Yolo'"):
        lineage.select_systems("Yolo")
    shapes, bccd = lineage.DATASETS["shapes"], lineage.DATASETS["bccd"]
    four_step = lineage.select_systems("Faster R-CNN 4-step")[0]
    cfg = lineage.compose_system(four_step, shapes, scale=0.5, seed=3)
    assert (cfg.schedule.max_iter, cfg.seed, cfg.dataset.min_size) == (1000, 3, 320)
    assert lineage.budget_text(cfg) == "1000 x 4 (188/562/125/125)"
    # the dataset's settings < the system's own < its budget < the user's overrides
    fpn = lineage.select_systems("FPN")[0]
    cfg = lineage.compose_system(fpn, shapes, extra=["schedule.max_iter=7"])
    assert (cfg.schedule.max_iter, cfg.dataset.min_size, cfg.dataset.train_size) == (7, 128, 1000)
    assert lineage.budget_text(lineage.compose_system(fpn, bccd, 0.5)) == "300 x 4"
    # BCCD's selective-search settings reach the rows on external proposals only
    fast, faster = lineage.select_systems("Fast R-CNN (SS),Faster R-CNN")
    on_ss = lineage.compose_system(fast, bccd)
    assert (on_ss.proposals.scale, on_ss.proposals.max_proposals) == (0.5, 500)
    assert lineage.compose_system(faster, bccd).proposals.name == "rpn"


def test_a_run_older_than_a_schema_key_is_reused_while_that_key_is_its_default():
    fpn, shapes = lineage.select_systems("FPN")[0], lineage.DATASETS["shapes"]
    cfg = lineage.compose_system(fpn, shapes)
    saved = lineage.config_dict(cfg)
    assert lineage.same_config(saved, cfg) and not lineage.same_config(None, cfg)
    del saved["dataset"]["vflip_prob"]  # written before vertical flips existed
    assert lineage.same_config(saved, cfg)
    assert not lineage.same_config(saved, lineage.compose_system(
        fpn, shapes, extra=["dataset.vflip_prob=0.5"]))
    # every other key counts, run settings included (they change the wall time)
    assert not lineage.same_config(saved, lineage.compose_system(fpn, shapes, extra=["threads=1"]))


def test_a_missing_system_is_a_clear_error_naming_it(monkeypatch, capsys, tmp_path):
    tardis = lineage.System("Time machine", ("model=tardis",), {"shapes": 1, "bccd": 1})
    with pytest.raises(ConfigError, match="system 'Time machine' cannot be set up"):
        lineage.compose_system(tardis, lineage.DATASETS["shapes"])
    monkeypatch.setattr(lineage, "SYSTEMS", [*lineage.SYSTEMS, tardis])
    assert lineage.main(["--out", str(tmp_path), "--systems", "FPN,Time machine"]) == 1
    assert "system 'Time machine' cannot be set up" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was trained


def run_record(label: str, seed: int = 0, ap=0.5, total=100.0, **metrics) -> dict:
    values = {"AP": ap, "AP50": 0.8, "AP75": 0.5, "APs": 0.3, "mask AP": None, **metrics}
    return {"label": label, "seed": seed, "overrides": [f"x={label}"], "budget": "10 x 2",
            "train_s": 120.0, "proposal_cache_s": None, **values,
            "test": {"params": 2e6, "proposals_ms": 1.0, "cnn_ms": 2.0, "region_ms": 3.0,
                     "other_ms": total - 6.0, "total_ms": total}}


def test_rows_are_means_over_seeds_and_the_table_has_every_column():
    records = [run_record("FPN", 0, ap=0.4, total=40.0), run_record("FPN", 1, ap=0.6, total=60.0),
               {"label": "HTC", "seed": 0, "overrides": [], "refused": "no masks here"},
               {"label": "SPPNet", "seed": 0, "overrides": [], "error": "RuntimeError: boom\nx"}]
    rows = lineage.summarize(records)
    assert [r["label"] for r in rows] == ["FPN", "HTC", "SPPNet"]
    assert rows[0]["seeds"] == [0, 1] and rows[0]["AP"] == pytest.approx(0.5)
    assert rows[0]["test"]["total_ms"] == pytest.approx(50.0)
    table = lineage.format_table(rows).splitlines()
    assert table[0] == ("| system | budget (it x img) | params | train | proposals ms/img | "
                        "CNN ms/img | region-wise ms/img | other ms/img | total ms/img | AP | "
                        "AP50 | AP75 | APs | mask AP |")
    assert table[2] == ("| FPN | 10 x 2 | 2.0 M | 2.0 min | 1.0 | 2.0 | 3.0 | 44.0 | 50.0 | "
                        "0.500 | 0.800 | 0.500 | 0.300 | n/a |")
    assert table[3] == "| HTC | refused: no masks here |" + " |" * 12
    assert table[4] == "| SPPNet | failed: RuntimeError: boom |" + " |" * 12
    seeds = lineage.format_seed_table(records).splitlines()
    assert seeds[2:] == ["| FPN | 0 | 2.0 min | 40.0 | 0.400 | 0.800 | 0.500 | 0.300 | n/a |",
                         "| FPN | 1 | 2.0 min | 60.0 | 0.600 | 0.800 | 0.500 | 0.300 | n/a |"]


def lineage_records(**changes) -> list[dict]:
    """One run per system in the papers' story (each step faster and more accurate)."""
    values = {"R-CNN": (0.40, 900.0), "SPPNet": (0.35, 300.0), "Fast R-CNN (SS)": (0.45, 80.0),
              "Faster R-CNN": (0.50, 60.0), "Faster R-CNN 4-step": (0.49, 60.0),
              "FPN": (0.60, 40.0), "Mask R-CNN": (0.60, 110.0), "Cascade R-CNN": (0.65, 80.0),
              "Cascade Mask R-CNN": (0.66, 150.0), "HTC": (0.68, 300.0),
              "DetectoRS": (0.70, 600.0)}
    records = []
    for label, (ap, total) in values.items():
        change = dict(changes.get(label, {}))
        total = change.pop("total", total)
        extra = {"AP50": ap + 0.3, "AP75": ap, "APs": ap - 0.1,
                 "mask AP": ap - 0.05 if label in ("Mask R-CNN", "Cascade Mask R-CNN", "HTC",
                                                   "DetectoRS") else None}
        records.append(run_record(label, ap=ap, total=total, **{**extra, **change}))
    return records


def test_the_papers_claims_hold_or_not_with_their_numbers():
    lines = lineage.claims(lineage_records(), min_ap50=0.5)
    assert lines[0] == ("- test time falls from R-CNN to Faster R-CNN: holds (R-CNN 900.0 -> "
                        "SPPNet 300.0 -> Fast R-CNN (SS) 80.0 -> Faster R-CNN 60.0 ms/img)")
    assert lines[1:4] == ["  - R-CNN / SPPNet: 3.00x per test image",
                          "  - SPPNet / Fast R-CNN (SS): 3.75x per test image",
                          "  - Fast R-CNN (SS) / Faster R-CNN: 1.33x per test image"]
    assert lines[4:] == [
        "- Fast R-CNN (SS) >= R-CNN in AP: holds (0.450 vs 0.400)",
        "- Faster R-CNN >= Fast R-CNN (SS) in AP: holds (0.500 vs 0.450)",
        "- Faster R-CNN 4-step within 0.05 AP50 of Faster R-CNN: holds (0.790 vs 0.800, gap 0.010)",
        "- FPN >= Faster R-CNN in APs (small objects; Faster R-CNN: one stride-16 map): holds "
        "(0.500 vs 0.400)",
        "- Cascade R-CNN >= FPN in AP75: holds (0.650 vs 0.600)",
        "- HTC >= Mask R-CNN in mask AP: holds (0.630 vs 0.550)",
        "- HTC >= Cascade Mask R-CNN in mask AP: holds (0.630 vs 0.610)",
        "- every run's AP50 >= 0.5: holds (lowest: SPPNet seed 0 0.650)"]
    broken = lineage.claims(lineage_records(**{
        "SPPNet": {"total": 1000.0, "AP50": 0.3},
        "Faster R-CNN 4-step": {"AP50": 0.6}, "HTC": {"mask AP": None}}), min_ap50=0.5)
    assert broken[0].startswith("- test time falls from R-CNN to Faster R-CNN: does not hold")
    assert "  - R-CNN / SPPNet: 0.90x per test image" in broken
    assert ("- Faster R-CNN 4-step within 0.05 AP50 of Faster R-CNN: does not hold "
            "(0.600 vs 0.800, gap 0.200)") in broken
    assert ("- HTC >= Mask R-CNN in mask AP: not checkable here (no mask AP for HTC)") in broken
    assert broken[-1] == "- every run's AP50 >= 0.5: does not hold (below: SPPNet seed 0 0.300)"
    few = lineage.claims([run_record("FPN")])
    assert few[0] == ("- test time falls from R-CNN to Faster R-CNN: not checkable here "
                      "(timed: none)")
    assert all("not checkable" in line for line in few)


def test_a_smaller_budget_run_is_the_baseline_of_the_learned_check(tmp_path):
    info = {"dataset": "bccd", "budget_scale": 0.5, "seeds": [0]}
    small = lineage_records(FPN={"AP50": 0.95})
    lineage.write_report(small, tmp_path, "header", info)
    baseline = lineage.load_baseline(tmp_path / "lineage.json", "bccd", 1.0)
    line = lineage.claims(lineage_records(), baseline=baseline)[-1]
    assert line.startswith("- every row's AP50 at budget x1.0 >= the same system's at x0.5: "
                           "does not hold (FPN 0.900 < 0.950)")
    held = lineage.claims(small, baseline=baseline)[-1]
    assert "x0.5: holds (R-CNN 0.700 vs 0.700, SPPNet" in held
    for dataset, scale in (("shapes", 1.0), ("bccd", 0.5)):
        with pytest.raises(ConfigError, match="needs dataset"):
            lineage.load_baseline(tmp_path / "lineage.json", dataset, scale)


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


class StubTraining:
    """``train`` and ``time_systems`` without training: counts each run trained."""

    def __init__(self, monkeypatch, fail=()):
        self.trained, self.fail = [], set(fail)
        monkeypatch.setattr("rcnn_cli.engine.train.train", self.train)
        monkeypatch.setattr(lineage, "time_systems", self.time)
        monkeypatch.setattr(lineage, "warm_proposal_cache", lambda cfg: 1.5)

    def train(self, cfg, run_dir):
        self.trained.append((run_dir.parent.name, cfg.seed))
        if run_dir.parent.name in self.fail:
            raise RuntimeError("diverged")
        masks = {"segm/AP": 0.3} if cfg.model.name in ("mask", "cascade_mask", "htc",
                                                        "detectors") else {}
        return {"bbox/AP": 0.5 + cfg.seed / 10, "bbox/AP50": 0.8, "bbox/AP75": 0.6,
                "bbox/APs": -1.0, "iteration": cfg.schedule.max_iter, **masks}

    @staticmethod
    def time(ckpts, images):
        return {key: {"images": images, "params": 1e6, "proposals_ms": 1.0, "cnn_ms": 2.0,
                      "region_ms": 3.0, "other_ms": 4.0, "total_ms": 10.0} for key in ckpts}


def test_the_whole_table_with_a_stubbed_training_then_resume(monkeypatch, tmp_path):
    stub = StubTraining(monkeypatch, fail={"sppnet"})
    out, plot = tmp_path / "lineage", tmp_path / "images" / "lineage.png"
    args = ["--out", str(out), "--seeds", "0", "1", "--plot", str(plot)]
    assert lineage.main(args) == 1  # SPPNet failed: tabled, the others ran
    assert len(stub.trained) == 2 * len(LABELS)
    text = (out / "lineage.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| system | budget (it x img) | params | train |")
    assert [line.split(" | ")[0][2:] for line in table[1:1 + len(LABELS)]] == LABELS
    assert "| FPN | 1200 x 8 | 1.0 M | " in text and "| DetectoRS | 600 x 8 |" in text
    assert "| SPPNet | failed: RuntimeError: diverged |" in text
    assert "| HTC | 1 | " in text  # the per-seed table
    assert "- every run's AP50 >= 0.5: holds" in text
    report = json.loads((out / "lineage.json").read_text())
    assert (report["dataset"], report["seeds"], report["budget_scale"]) == ("shapes", [0, 1], 1.0)
    assert len(report["runs"]) == 2 * len(LABELS)
    fpn = next(row for row in report["rows"] if row["label"] == "FPN")
    assert fpn["seeds"] == [0, 1] and fpn["AP"] == pytest.approx(0.55) and fpn["APs"] is None
    assert len(report["claims"]) == 12 and set(report["claims"]) <= set(text.splitlines())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Resume: finished runs are reused, the failed one is trained again.
    records = sorted(out.glob("*/seed*/lineage_record.json"))
    mtimes = [p.stat().st_mtime_ns for p in records]
    stub.trained.clear()
    stub.fail.clear()
    assert lineage.main(args) == 0
    assert stub.trained == [("sppnet", 0), ("sppnet", 1)]
    assert [p.stat().st_mtime_ns for p in records] == mtimes
    # A lost result: only that run again; another budget: every run again.
    (out / "fpn" / "seed1" / "lineage_record.json").unlink()
    stub.trained.clear()
    assert lineage.main(args) == 0 and stub.trained == [("fpn", 1)]
    stub.trained.clear()
    assert lineage.main([*args, "--systems", "FPN,HTC", "--budget-scale", "0.5"]) == 0
    assert stub.trained == [("fpn", 0), ("fpn", 1), ("htc", 0), ("htc", 1)]
    assert "| FPN | 600 x 8 |" in (out / "lineage.md").read_text()


def test_an_interrupt_stops_the_table_and_a_rerun_continues(monkeypatch, tmp_path, capsys):
    from rcnn_cli.engine import faults

    stub = StubTraining(monkeypatch)
    train = stub.train

    def stopped(cfg, run_dir):
        if run_dir.parent.name == "cascade_r_cnn":
            raise faults.Interrupted("SIGTERM at iteration 3")
        return train(cfg, run_dir)

    monkeypatch.setattr("rcnn_cli.engine.train.train", stopped)
    args = ["--out", str(tmp_path), "--systems", "FPN,Cascade R-CNN,HTC", "--seeds", "0"]
    assert lineage.main(args) == faults.Interrupted.exit_code
    assert stub.trained == [("fpn", 0)] and "SIGTERM at iteration 3" in capsys.readouterr().err
    assert "1/3 runs trained" in (tmp_path / "lineage.md").read_text()
    monkeypatch.setattr("rcnn_cli.engine.train.train", train)
    stub.trained.clear()
    assert lineage.main(args) == 0 and stub.trained == [("cascade_r_cnn", 0), ("htc", 0)]


def test_a_stopped_run_continues_from_what_it_saved_and_sums_its_starts(monkeypatch, tmp_path):
    import os

    from rcnn_cli.engine import faults

    stub, calls = StubTraining(monkeypatch), []
    train = stub.train

    def stop_after_a_checkpoint(cfg, run_dir, saved_after: float | None):
        calls.append((run_dir.parent.name, cfg.resume))
        if saved_after is not None:  # this start began 1000 s ago, saved after saved_after s
            progress = json.loads((run_dir / lineage.PROGRESS).read_text())
            started = progress["started"] = progress["started"] - 1000.0
            (run_dir / lineage.PROGRESS).write_text(json.dumps(progress))
            ckpt = run_dir / "checkpoints" / "model_0000003.pt"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_bytes(b"")
            os.utime(ckpt, (started + saved_after, started + saved_after))
        raise faults.Interrupted("SIGTERM at iteration 4")

    args = ["--out", str(tmp_path), "--systems", "Cascade R-CNN", "--seeds", "0"]
    run_dir = tmp_path / "cascade_r_cnn" / "seed0"
    for saved_after in (100.0, None, 50.0):  # the second start saved nothing: it keeps 0 s
        monkeypatch.setattr("rcnn_cli.engine.train.train",
                            lambda cfg, d, s=saved_after: stop_after_a_checkpoint(cfg, d, s))
        assert lineage.main(args) == faults.Interrupted.exit_code
    assert calls == [("cascade_r_cnn", None), ("cascade_r_cnn", str(run_dir)),
                     ("cascade_r_cnn", str(run_dir))]
    monkeypatch.setattr("rcnn_cli.engine.train.train", train)
    assert lineage.main(args) == 0 and stub.trained == [("cascade_r_cnn", 0)]
    record = json.loads((run_dir / "lineage_record.json").read_text())
    assert record["starts"] == 4 and 150.0 <= record["train_s"] < 160.0
    # Another budget cannot continue that run's checkpoints: it starts afresh.
    (run_dir / "lineage_record.json").unlink()
    monkeypatch.setattr("rcnn_cli.engine.train.train",
                        lambda cfg, d: stop_after_a_checkpoint(cfg, d, 10.0))
    assert lineage.main(args) == faults.Interrupted.exit_code
    assert lineage.main([*args, "--budget-scale", "0.5"]) == faults.Interrupted.exit_code
    assert calls[-1] == ("cascade_r_cnn", None)


def test_bccd_refuses_the_mask_rows_with_the_reason(monkeypatch, tmp_path):
    stub = StubTraining(monkeypatch)
    root = voc_tree(tmp_path, images={"a": [voc_object("RBC")], "b": [voc_object("WBC")]},
                    splits={"trainval": ["a"], "test": ["b"]})
    out = tmp_path / "bccd"
    assert lineage.main(["--out", str(out), "--dataset", "bccd", "--systems",
                         "FPN,Mask R-CNN,HTC", f"dataset.root={root}"]) == 0
    assert stub.trained == [("fpn", 0)]
    text = (out / "lineage.md").read_text()
    assert "| HTC | refused: dataset=voc has no instance masks" in text
    assert "- HTC >= Mask R-CNN in mask AP: not checkable here (no mask AP for HTC, " \
           "Mask R-CNN)" in text
    assert "- every row's AP50" not in text  # no --baseline given
    assert json.loads((out / "lineage.json").read_text())["seeds"] == [0]


TINY = ["dataset.train_size=4", "dataset.val_size=2", "dataset.image_size=64",
        "schedule.batch_size=2", "schedule.warmup_iters=1", "log.period=2",
        "dataset.num_workers=0", "proposals.workers=0"]


@pytest.mark.slow
def test_tiny_lineage_of_every_system_and_resume(tmp_path, monkeypatch):
    out, plot = tmp_path / "lineage", tmp_path / "lineage.png"
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pt")
    args = ["--out", str(out), "--seeds", "0", "--time-images", "2", "--budget-scale", "0.005",
            "--plot", str(plot), "--backbone-weights", f"alexnet={tmp_path / 'alexnet.pt'}",
            *TINY]
    assert lineage.main(args) == 0
    report = json.loads((out / "lineage.json").read_text())
    assert [r["label"] for r in report["runs"]] == LABELS
    for r in report["runs"]:
        t = r["test"]
        assert t["images"] == 2 and r["train_s"] > 0 and 0 <= r["AP50"] <= 1 and t["params"] > 0
        assert t["cnn_ms"] > 0 and t["region_ms"] > 0 and t["proposals_ms"] > 0
        assert t["total_ms"] == pytest.approx(sum(t[f"{p}_ms"] for p in lineage.PARTS))
        assert (r["proposal_cache_s"] is not None) == (r["proposals"] == "selective_search")
        assert (r["mask AP"] is not None) == (r["label"] in ("Mask R-CNN", "Cascade Mask R-CNN",
                                                            "HTC", "DetectoRS"))
    assert [r["budget"] for r in report["runs"]][:5] == ["1 x 2", "2 x 2", "10 x 2", "10 x 2",
                                                          "10 x 2 (2/6/1/1)"]
    table = (out / "lineage.md").read_text()
    assert all(f"| {label} | " in table for label in LABELS)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # A re-run reuses every finished run; a lost one is the only one trained again.
    from rcnn_cli.engine import train as train_module

    trained, real = [], train_module.train
    monkeypatch.setattr(train_module, "train",
                        lambda cfg, run_dir: trained.append(run_dir.parent.name) or real(cfg,
                                                                                         run_dir))
    (out / "cascade_r_cnn" / "seed0" / "lineage_record.json").unlink()
    assert lineage.main(args) == 0 and trained == ["cascade_r_cnn"]
