"""benchmarks/lineage.py: reusing, keeping and continuing runs, the smaller-budget baseline, the
whole program with a stubbed training (every row, two seeds, the plot, resume, runs kept from
another machine, runs side by side, BCCD's refused mask rows), and (slow) a tiny end-to-end run
of every system. The modules it is built from are tested in tests/benchmark/lineage/."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
import torchvision

from rcnn_cli.benchmark.lineage import runs, systems
from rcnn_cli.benchmark.lineage.timing import PARTS
from rcnn_cli.errors import ConfigError
from tests.benchmark.lineage.records import lineage_records
from tests.conftest import REPO
from tests.data.helpers import voc_object, voc_tree


def load_script():
    spec = importlib.util.spec_from_file_location("lineage", REPO / "benchmarks" / "lineage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lineage = load_script()
LABELS = [s.label for s in systems.SYSTEMS]


@pytest.fixture(autouse=True)
def kept_in_tmp(tmp_path, monkeypatch):
    """Runs are kept under tmp_path, never in the repository's benchmarks/results/."""
    monkeypatch.setattr(lineage, "KEEP", tmp_path / "kept")


def forget(out, tmp_path, slug: str, seed: int, scale: str = "1") -> None:
    """A run's result lost: its record in the run directory and the kept one."""
    (out / slug / f"seed{seed}" / "lineage_record.json").unlink()
    (tmp_path / "kept" / f"shapes_x{scale}" / f"{slug}_seed{seed}.json").unlink()


def test_a_missing_system_stops_the_program_before_training(monkeypatch, capsys, tmp_path):
    tardis = systems.System("Time machine", ("model=tardis",), {"shapes": 1, "bccd": 1})
    monkeypatch.setattr(systems, "SYSTEMS", [*systems.SYSTEMS, tardis])
    assert lineage.main(["--out", str(tmp_path), "--systems", "FPN,Time machine"]) == 1
    assert "system 'Time machine' cannot be set up" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was trained


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


class StubTraining:
    """``train`` and ``time_systems`` without training: counts each run trained."""

    def __init__(self, monkeypatch, fail=()):
        self.trained, self.fail = [], set(fail)
        monkeypatch.setattr("rcnn_cli.engine.train.train", self.train)
        monkeypatch.setattr(runs, "time_systems", self.time)
        monkeypatch.setattr(runs, "warm_proposal_cache", lambda cfg: 1.5)

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
    forget(out, tmp_path, "fpn", 1)
    stub.trained.clear()
    assert lineage.main(args) == 0 and stub.trained == [("fpn", 1)]
    stub.trained.clear()
    assert lineage.main([*args, "--systems", "FPN,HTC", "--budget-scale", "0.5"]) == 0
    assert stub.trained == [("fpn", 0), ("fpn", 1), ("htc", 0), ("htc", 1)]
    assert "| FPN | 600 x 8 |" in (out / "lineage.md").read_text()


def test_a_run_trained_beside_another_job_says_so(monkeypatch, tmp_path):
    StubTraining(monkeypatch)
    threads = torch.get_num_threads()
    monkeypatch.setattr(runs, "machine_load", lambda minutes: {15: threads + 1.0}[minutes])
    out = tmp_path / "lineage"
    assert lineage.main(["--out", str(out), "--systems", "FPN", "--seeds", "0"]) == 0
    [run] = json.loads((out / "lineage.json").read_text())["runs"]
    assert run["train_load"] == {"load": threads + 1.0, "threads": threads}
    assert (f"- trained while another job used the CPU: FPN seed 0 (load {threads + 1.0:g} on "
            f"{threads} thread(s))") in (out / "lineage.md").read_text()


def test_runs_kept_from_another_machine_are_not_trained_and_keep_their_timing(monkeypatch,
                                                                             tmp_path):
    stub = StubTraining(monkeypatch)
    args = ["--out", str(tmp_path / "a"), "--systems", "R-CNN,Faster R-CNN", "--seeds", "0"]
    monkeypatch.setattr(runs, "cpu_model", lambda: "CPU A")
    assert lineage.main(args) == 0 and stub.trained == [("r_cnn", 0), ("faster_r_cnn", 0)]
    kept = json.loads((tmp_path / "kept" / "shapes_x1" / "r_cnn_seed0.json").read_text())
    assert kept["cpu"] == "CPU A" and kept["timed"] == "alone" and kept["test"]["total_ms"] == 10
    assert kept["config"]["seed"] == 0
    # Another session, another CPU, no run directory left: only the new row trains.
    monkeypatch.setattr(runs, "cpu_model", lambda: "CPU B")
    stub.trained.clear()
    args = ["--out", str(tmp_path / "b"), "--systems", "R-CNN,Faster R-CNN,FPN", "--seeds", "0"]
    assert lineage.main(args) == 0 and stub.trained == [("fpn", 0)]
    text = (tmp_path / "b" / "lineage.md").read_text()
    assert "- CPU A, timed alone after training: R-CNN seed 0, Faster R-CNN seed 0" in text
    assert "- CPU B, timed alone after training: FPN seed 0" in text
    # A kept run whose config differs (another budget) is trained again.
    stub.trained.clear()
    assert lineage.main([*args, "--budget-scale", "0.5"]) == 0 and len(stub.trained) == 3


def test_runs_side_by_side_train_in_their_children_then_are_timed_together(monkeypatch,
                                                                            tmp_path):
    stub = StubTraining(monkeypatch)
    timed, started = [], []

    def time_systems(ckpts, images):
        timed.append(sorted(ckpts))
        return stub.time(ckpts, images)

    def train_with_a_checkpoint(cfg, run_dir):
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "last.pt").touch()
        return stub.train(cfg, run_dir)

    def side_by_side(children, jobs):  # each child's program, in this process, one by one
        started.append(([c.key for c in children], jobs))
        for child in children[1:]:
            assert lineage.main(child.argv[2:]) == 0
        assert not (tmp_path / "out" / "lineage.md").exists()  # the children table nothing
        return {children[0].key: "child exited with 1; see its log"}

    monkeypatch.setattr("rcnn_cli.engine.train.train", train_with_a_checkpoint)
    monkeypatch.setattr(runs, "time_systems", time_systems)
    monkeypatch.setattr(lineage, "run_side_by_side", side_by_side)
    args = ["--out", str(tmp_path / "out"), "--systems", "FPN,Cascade R-CNN", "--seeds", "0",
            "1", "--jobs", "2", "--fresh"]
    assert lineage.main(args) == 1  # the failed child's run is in the table as failed
    keys = [("FPN", 0), ("FPN", 1), ("Cascade R-CNN", 0), ("Cascade R-CNN", 1)]
    assert started == [(keys, 2)]
    # Trained by the children (--fresh is theirs), reused here.
    assert stub.trained == [("fpn", 1), ("cascade_r_cnn", 0), ("cascade_r_cnn", 1)]
    assert timed == [[k] for k in keys[1:]] + [sorted(keys[1:])]  # alone each, then together
    records = json.loads((tmp_path / "out" / "lineage.json").read_text())["runs"]
    assert records[0]["error"] == "child exited with 1; see its log"
    assert [r["timed"] for r in records[1:]] == ["together"] * 3


def test_runs_side_by_side_find_the_selective_search_cache_made_before_them(monkeypatch,
                                                                             tmp_path):
    StubTraining(monkeypatch)
    warmed = []

    def warm(cfg):
        warmed.append(cfg.seed)
        return 2.0

    def side_by_side(children, jobs):
        assert warmed == [0, 1]  # made before any child starts
        return {}

    monkeypatch.setattr(runs, "warm_proposal_cache", warm)
    monkeypatch.setattr(lineage, "run_side_by_side", side_by_side)
    out = tmp_path / "out"
    args = ["--out", str(out), "--systems", "Fast R-CNN (SS),FPN", "--seeds", "0", "1"]
    assert lineage.main([*args, "--jobs", "2"]) == 0
    assert json.loads((out / "lineage.json").read_text())["proposal_cache_s"] == 4.0
    assert ("- selective search cache made before the runs side by side: 4.0 s"
            in (out / "lineage.md").read_text())
    warmed.clear()  # one job: each run on external proposals makes or reads it itself
    assert lineage.main([*args, "--fresh"]) == 0 and warmed == [0, 1]
    assert "made before the runs" not in (out / "lineage.md").read_text()


def test_a_run_that_could_not_be_timed_is_not_kept(monkeypatch, tmp_path):
    stub = StubTraining(monkeypatch)
    monkeypatch.setattr(runs, "time_systems",
                        lambda ckpts, images: {key: {"error": "OSError: gone"} for key in ckpts})
    args = ["--out", str(tmp_path / "a"), "--systems", "FPN", "--seeds", "0"]
    assert lineage.main(args) == 1
    assert "| FPN | failed: timing: OSError: gone |" in (tmp_path / "a" / "lineage.md").read_text()
    assert not (tmp_path / "kept" / "shapes_x1" / "fpn_seed0.json").exists()
    monkeypatch.setattr(runs, "time_systems", stub.time)
    stub.trained.clear()
    assert lineage.main(["--out", str(tmp_path / "b"), *args[2:]]) == 0
    assert stub.trained == [("fpn", 0)]


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
            progress = json.loads((run_dir / runs.PROGRESS).read_text())
            started = progress["started"] = progress["started"] - 1000.0
            (run_dir / runs.PROGRESS).write_text(json.dumps(progress))
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
    forget(tmp_path, tmp_path, "cascade_r_cnn", 0)
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
        assert t["total_ms"] == pytest.approx(sum(t[f"{p}_ms"] for p in PARTS))
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
    forget(out, tmp_path, "cascade_r_cnn", 0, scale="0.005")
    assert lineage.main(args) == 0 and trained == ["cascade_r_cnn"]
    assert json.loads((out / "lineage.json").read_text())["runs"][0]["timed"] == "together"
