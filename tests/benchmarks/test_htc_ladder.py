"""benchmarks/htc_ladder.py: a smoke-size rung through rcnn-train (its record and row, kept,
skipped when run again), the resume decision, which kept records count and s/iter across a
resumed run."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from rcnn_cli.engine.runtime import config_dict, cpu_model
from tests.benchmarks.programs import run_program
from tests.conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("htc_ladder", REPO / "benchmarks" / "htc_ladder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ladder = load_script()


def test_one_rung_gives_a_kept_record_and_a_table_row_and_is_skipped_when_run_again(tmp_path):
    args = ("--smoke", "--seeds", "0", "--rungs", "cascade_mask_last", "--out", str(tmp_path))
    out = run_program("htc_ladder", *args, "--jobs", "2", timeout=600)
    run_dir = tmp_path / "cascade_mask_last_seed0"
    [record] = json.loads((tmp_path / "ladder.json").read_text())
    kept_file = tmp_path / "kept" / "cascade_mask_last_seed0.json"
    assert record == json.loads(kept_file.read_text())
    assert record == {**json.loads((run_dir / "record.json").read_text()),
                      "config": record["config"]}
    assert record["config"]["seed"] == 0 and record["config"]["schedule"]["max_iter"] == 4
    assert record["cpu"] == cpu_model()
    assert record["rung"] == "cascade_mask_last" and record["seed"] == 0
    assert record["box_AP"] is not None and record["mask_AP"] is not None
    assert record["s_per_iter"] > 0 and record["starts"] == 1 and record["threads"] == 1
    assert (run_dir / "console.log").is_file() and (run_dir / "checkpoints" / "last.pt").exists()
    row = "| Cascade Mask R-CNN (last-stage mask) |"
    assert "| rung | box AP | mask AP | s/iter (training) | s/iter (alone) | seeds |" in out
    assert row in out

    shutil.rmtree(run_dir)  # a new machine: only the kept record is left
    again = run_program("htc_ladder", *args, timeout=120)
    assert "kept, skipped" in again and row in again
    assert not run_dir.exists()  # nothing trained
    assert json.loads((tmp_path / "ladder.json").read_text()) == [record]
    table = run_program("htc_ladder", "--table", "--seeds", "0", "--keep", str(kept_file.parent))
    assert row in table


def write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_s_per_iter_leaves_out_each_starts_first_window_and_counts_windows_once(tmp_path):
    ladder.mark_start(tmp_path)
    write_metrics(tmp_path, [{"iteration": 2, "step_time": 9.0}, {"iteration": 4, "step_time": 1.0},
                             {"iteration": 6, "step_time": 5.0}])  # stopped; checkpoint at 4
    ladder.mark_start(tmp_path)
    write_metrics(tmp_path, [{"iteration": 6, "step_time": 8.0}, {"iteration": 8, "step_time": 2.0},
                             {"iteration": 8, "bbox/AP": 0.5}])
    assert json.loads((tmp_path / "starts.json").read_text()) == [0, 3]
    # windows 4 (1.0), 6 (5.0; the resumed start's 8.0 is start-up) and 8 (2.0)
    assert ladder.step_time(tmp_path) == pytest.approx(8.0 / 3)
    assert len(ladder.segments(tmp_path)) == 2


def test_a_checkpointed_run_resumes_and_one_without_checkpoint_starts_afresh(tmp_path):
    resumable, partial = tmp_path / "a", tmp_path / "b"
    (resumable / "checkpoints").mkdir(parents=True)
    (resumable / "checkpoints" / "index.json").write_text("{}")
    write_metrics(partial, [{"iteration": 2, "step_time": 1.0}])
    assert ladder.resume_args(resumable) == [f"resume={resumable}"]
    assert ladder.resume_args(partial) == [] and not partial.exists()
    command = ladder.train_command(["model=htc"], 1, resumable, 200, True, [f"resume={resumable}"])
    assert {"seed=1", "schedule.checkpoint_period=200", "threads=1", "dataset.num_workers=1",
            f"resume={resumable}", f"hydra.run.dir={resumable}"} <= set(command)


def test_a_record_with_other_overrides_is_refused(tmp_path):
    run_dir = tmp_path / "htc_seed0"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps({"overrides": ["model=htc", "x=1"]}))
    assert ladder.finished(tmp_path / "htc_seed1", ["model=htc"]) is None
    with pytest.raises(SystemExit, match="other overrides"):
        ladder.finished(run_dir, ["model=htc"])


def test_side_by_side_runs_start_with_the_costliest_rungs():
    rungs = ["htc", "cascade_mask_last", "detectors"]
    assert ladder.run_order(rungs, [0, 1], 1) == [(r, s) for s in (0, 1) for r in rungs]
    assert ladder.run_order(rungs, [0, 1], 2) == [
        ("detectors", 0), ("detectors", 1), ("htc", 0), ("htc", 1),
        ("cascade_mask_last", 0), ("cascade_mask_last", 1)]


@pytest.mark.slow
def test_timing_alone_writes_timing_json_and_its_column(tmp_path):
    out = run_program("htc_ladder", "--smoke", "--time-iters", "10", "--rungs",
                      "cascade_mask_last", "--out", str(tmp_path), timeout=300)
    timing = json.loads((tmp_path / "kept" / "timing.json").read_text())
    assert set(timing) == {"cascade_mask_last"}
    assert timing["cascade_mask_last"]["s_per_iter"] > 0
    assert timing["cascade_mask_last"]["iters"] == 10
    metrics = (tmp_path / "timing" / "cascade_mask_last" / "metrics.jsonl").read_text()
    assert [json.loads(x)["iteration"] for x in metrics.splitlines()
            if "step_time" in json.loads(x)] == [5, 10]
    alone = f"{timing['cascade_mask_last']['s_per_iter']:.3f}"
    assert f"| Cascade Mask R-CNN (last-stage mask) | - | - | - | {alone} | 0 |" in out
    assert not (tmp_path / "cascade_mask_last_seed0").exists()  # no ladder run


def test_table_shows_the_timing_column_beside_the_logged_one():
    records = [{"rung": "htc", "box_AP": 0.5, "mask_AP": 0.4, "s_per_iter": 3.0},
               {"rung": "htc", "box_AP": 0.7, "mask_AP": 0.6, "s_per_iter": 5.0}]
    text = ladder.table(records, {"htc": {"s_per_iter": 2.5}})
    assert "| HTC | 0.600 | 0.500 | 4.000 | 2.500 | 2 |" in text
    assert "Cascade" not in text


def test_timing_runs_each_rung_alone_with_its_overrides(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, check, env, stdout, stderr):
        commands.append((command, env["OMP_NUM_THREADS"]))
        run_dir = Path(next(c for c in command if c.startswith("hydra.run.dir=")).split("=", 1)[1])
        write_metrics(run_dir, [{"iteration": 5, "step_time": 9.0},
                                {"iteration": 10, "step_time": 2.0},
                                {"iteration": 15, "step_time": 4.0}])

    monkeypatch.setattr(ladder.subprocess, "run", fake_run)
    timing = ladder.time_all(["htc", "detectors"], tmp_path, tmp_path / "kept", 15, 2, [])
    assert timing == {rung: {"s_per_iter": 3.0, "iters": 15, "threads": 2, "cpu": cpu_model()}
                      for rung in ("htc", "detectors")}  # the first window left out
    assert json.loads((tmp_path / "kept" / "timing.json").read_text()) == timing
    (htc, htc_threads), (detectors, _) = commands
    assert htc_threads == "2" and {"model=htc", "schedule.max_iter=15", "threads=2",
                                   "log.period=5", "seed=0"} <= set(htc)
    assert not any(c.startswith("resume=") for c in htc)
    assert "backbone.rfp_steps=2" in detectors


def test_a_run_finished_in_out_is_kept_with_its_config_without_training(tmp_path, monkeypatch):
    monkeypatch.setattr(ladder.subprocess, "run", pytest.fail)  # nothing may train
    overrides = ladder.RUNGS["htc"][1]
    cfg = ladder.planned_config(overrides, 1)
    run_dir = tmp_path / "out" / "htc_seed1"
    run_dir.mkdir(parents=True)
    record = {"rung": "htc", "seed": 1, "overrides": overrides, "box_AP": 0.5}
    (run_dir / "record.json").write_text(json.dumps(record))
    keep = tmp_path / "kept"
    got = ladder.run("htc", overrides, 1, cfg, tmp_path / "out", keep, 200, True)
    assert got == {"cpu": cpu_model(), **record, "config": config_dict(cfg)}
    assert json.loads((keep / "htc_seed1.json").read_text()) == got
    assert ladder.run("htc", overrides, 1, cfg, tmp_path / "elsewhere", keep, 200, True) == got


def test_a_kept_record_counts_only_with_the_same_config_but_for_how_it_executed(tmp_path, capsys):
    overrides = ladder.RUNGS["htc_no_semantic"][1]
    cfg = ladder.planned_config(overrides, 0)
    ladder.keep_record(tmp_path, {"rung": "htc_no_semantic", "seed": 0}, cfg)
    assert ladder.kept(tmp_path, "htc_no_semantic", 0, cfg) is not None
    same = ladder.planned_config([*overrides, "threads=1", "schedule.checkpoint_period=7"], 0)
    assert ladder.kept(tmp_path, "htc_no_semantic", 0, same) is not None
    for other in (["schedule.max_iter=600"], ["model.htc.semantic=true"]):
        assert ladder.kept(tmp_path, "htc_no_semantic", 0,
                           ladder.planned_config([*overrides, *other], 0)) is None
    assert "schedule.max_iter: 1200 -> 600" in capsys.readouterr().out
    assert ladder.kept(tmp_path, "htc_no_semantic", 1, cfg) is None  # not kept at all


def test_the_group_norm_rungs_differ_from_their_batch_norm_rungs_only_in_the_norm():
    for rung in ("htc", "detectors"):
        bn = ladder.planned_config(ladder.RUNGS[rung][1], 0)
        gn = ladder.planned_config(ladder.RUNGS[f"{rung}_gn"][1], 0)
        assert (bn.backbone.norm.value, gn.backbone.norm.value) == ("bn", "gn")
        gn.backbone.norm = bn.backbone.norm
        assert config_dict(gn) == config_dict(bn)
