"""benchmarks/small_data_bccd.py: the table and resume from records, and a smoke run end to end."""

import json
import shutil

import pytest

from tests.benchmarks.programs import load_program, run_program
from tests.data.helpers import shapes_to_disk


def record(variant, seed, ap, val_aps=(0.1, 0.3)):
    scores = {"AP": ap, "AP50": ap + 0.3, "AP75": ap, "Platelets": ap, "RBC": ap, "WBC": None,
              "iteration": 300}
    return {"variant": variant, "init": "finetuned", "seed": seed, "train_wall_s": 100.0,
            "curve": [{"iteration": 150 * (i + 1), "val_AP": v, "val_AP50": v,
                       "val_loss": 1.0 - v} for i, v in enumerate(val_aps)],
            "test_best": scores, "test_last": {**scores, "AP": ap - 0.01}}


def test_table_means_seeds_and_finished_runs_are_not_started_again(tmp_path, monkeypatch):
    program = load_program("small_data_bccd")
    for variant, seed, ap in (("plain", 0, 0.40), ("plain", 1, 0.50), ("small_data", 0, 0.6)):
        path = tmp_path / f"{variant}_finetuned_seed{seed}" / "record.json"
        path.parent.mkdir()
        rec = record(variant, seed, ap)
        if variant == "small_data":
            rec["reused_from"] = "OTHER/+vflip_finetuned_seed0"
        path.write_text(json.dumps(rec))
    table = program.report(tmp_path)
    assert "- small_data finetuned seed 0 is reused: OTHER/+vflip_finetuned_seed0" in table
    assert "- finetuned: small_data - plain, test AP: +0.200 (seed 0: +0.200)" in table
    assert "| plain | finetuned | 2 | 0.450 (0.400 / 0.500) | 0.750 (0.700 / 0.800) |" in table
    assert "| small_data | finetuned | 1 | 0.600 |" in table
    # WBC missing, last.pt AP, flip and 4-flip TTA (not measured), best val AP, s/iter, wall
    assert "| - | 0.590 | - | - | 0.300 | - | 100 |" in table
    assert "- plain finetuned seed 1: 150: 0.900, 300: 0.700" in table

    def start(*_):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(program, "start", start)
    args = type("Args", (), {"out": tmp_path, "jobs": 2})
    program.run_all([("plain", "finetuned", 0), ("small_data", "finetuned", 0)], args)


def test_the_wall_time_is_the_runs_own_log_span(tmp_path):
    program = load_program("small_data_bccd")
    run_dir = tmp_path / "plain_finetuned_seed0"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps(record("plain", 0, 0.4)))  # 100 s recorded
    (run_dir / "train.log").write_text("[2026-12-06 17:32:44,082][rcnn_cli][INFO] start\n"
                                       "a line without a time\n"
                                       "[2026-12-06 18:32:30,582][rcnn_cli][INFO] done\n")
    assert program.log_wall(run_dir) == pytest.approx(3586.5)
    assert program.report(tmp_path).splitlines()[2].endswith("| 3586 |")


def test_margins_pair_seeds_and_compare_tta_with_the_plain_runs_best_score(tmp_path):
    program = load_program("small_data_bccd")
    recs = [record("plain", 0, 0.40), record("plain", 1, 0.50), record("small_data", 0, 0.45),
            record("small_data", 1, 0.48), record("small_data", 2, 0.9)]  # seed 2: no plain
    for r, flips in zip(recs, (0.38, 0.52, 0.47, 0.50, 0.9)):
        r["test_best_flips"] = {"AP": flips}
    recs[2]["reused_from"] = "another run"
    [line] = [x for x in program.margins(recs) if x]
    # plain's best scores: 0.40 (best.pt) and 0.52 (4-flip TTA); the preset's TTA: 0.47, 0.50
    assert line == ("- finetuned: small_data - plain, test AP: +0.015 (seed 0: +0.050, "
                    "1: -0.020); small_data with 4-flip TTA - plain's best score: +0.025")
    assert program.margins([r for r in recs if r["variant"] == "plain"]) == []


@pytest.mark.slow
def test_smoke_run_gives_a_record_with_val_loss_and_test_scores(tmp_path):
    root = shapes_to_disk(tmp_path, n_train=8, n_val=4)["voc_root"]
    split_dir = tmp_path / "voc" / "ImageSets" / "Main"
    shutil.copy(split_dir / "val.txt", split_dir / "test.txt")
    out = run_program("small_data_bccd", "--root", root, "--variants", "plain", "--inits",
                      "scratch", "--seeds", "0", "--max-iter", "4", "--eval-period", "2",
                      "--smoke", "--out", str(tmp_path / "out"), timeout=600)
    rec = json.loads((tmp_path / "out" / "plain_scratch_seed0" / "record.json").read_text())
    assert [c["iteration"] for c in rec["curve"]] == [2, 4]
    assert all(c["val_loss"] is not None for c in rec["curve"])
    assert rec["test_last"]["iteration"] == 4 and rec["test_best"]["AP"] is not None
    assert rec["test_best_flip"]["AP"] is not None and rec["test_best_flips"]["AP"] is not None
    assert "| plain | scratch | 1 |" in out


def test_a_trained_but_unscored_run_is_scored_without_training(tmp_path, monkeypatch):
    program = load_program("small_data_bccd")
    (tmp_path / "plain_scratch_seed0").mkdir()
    (tmp_path / "plain_scratch_seed0" / "metrics.json").write_text("{}")
    scored, started = [], []
    monkeypatch.setattr(program, "score", lambda key, run_dir, wall, args: scored.append(key))
    monkeypatch.setattr(program, "start", lambda key, args: started.append(key) or (0, 0, 0, 0))
    monkeypatch.setattr(program, "finish", lambda *job: None)
    monkeypatch.setattr(program, "exit_walls", lambda running: [1.0] * len(running))
    args = type("Args", (), {"out": tmp_path, "jobs": 2})
    program.run_all([("plain", "scratch", 0), ("plain", "scratch", 1)], args)
    assert scored == [("plain", "scratch", 0)] and started == [("plain", "scratch", 1)]


def test_each_run_of_a_batch_is_timed_at_its_own_exit():
    """The second run ended first: its time must not wait for the first (nor its scoring)."""
    import subprocess
    import sys
    import time

    program = load_program("small_data_bccd")
    now = time.perf_counter()
    running = [(key, subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({s})"]),
                None, None, now) for key, s in (("slow", 2.0), ("fast", 0.1))]
    slow, fast = program.exit_walls(running, poll_s=0.05)
    assert fast < 1.5 <= slow


def test_backfill_adds_only_the_missing_tta_scores(tmp_path, monkeypatch):
    program = load_program("small_data_bccd")
    path = tmp_path / "plain_finetuned_seed0" / "record.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**record("plain", 0, 0.4), "test_best_flip": {"AP": 0.41}}))
    calls = []
    monkeypatch.setattr(program, "test_scores",
                        lambda run_dir, name, args, tta: calls.append((name, tta)) or {"AP": 0.42})
    program.backfill_tta(tmp_path, None)
    program.backfill_tta(tmp_path, None)  # nothing left to add
    rec = json.loads(path.read_text())
    assert calls == [("best", "flips")]
    assert rec["test_best_flip"] == {"AP": 0.41} and rec["test_best_flips"] == {"AP": 0.42}
