"""Sweeps through the console script: one directory and result.json per job, a summary that
lists every job (failed ones too), a non-zero exit when a job failed, and its rebuild script."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from rcnn_cli.engine import sweep
from tests.conftest import REPO, TINY, run_cli

# Lean tiny runs: one checkpoint at the end, SGD without momentum (smaller checkpoints).
BASE = [o for o in TINY if not o.startswith(("schedule.max_iter", "schedule.checkpoint_period"))] + [
    "schedule.max_iter=2", "schedule.checkpoint_period=100", "dataset.val_size=2", "device=cpu",
    "threads=1", "schedule.optimizer=sgd", "schedule.momentum=0"]


def results(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def md_rows(sweep_dir: Path) -> list[str]:
    lines = (sweep_dir / "summary.md").read_text().splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith("| job")]


def csv_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """2 x 2 sweep where exactly one point cannot run: early stopping without evaluations."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "multirun"
    base = [o for o in BASE if not o.startswith("schedule.eval_period")]
    r = run_cli("rcnn-train", "-m", *base, "log.tensorboard=false", "schedule.eval_period=0,2",
                "schedule.early_stop.patience=0,1", f"hydra.sweep.dir={sweep_dir}")
    return sweep_dir, r


def test_a_failing_job_is_listed_and_the_others_finish(failing_sweep):
    sweep_dir, r = failing_sweep
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    res = results(sweep_dir)
    assert len(res) == 4, out
    failed = [k for k, v in res.items() if v["status"] == "failed"]
    assert len(failed) == 1, res
    bad = res[failed[0]]
    assert bad["params"]["schedule.eval_period"] == 0
    assert bad["params"]["schedule.early_stop.patience"] == 1
    assert "needs evaluations during training" in bad["error"]
    for k, v in res.items():
        if k != failed[0]:
            assert v["status"] == "completed" and v["metrics"]["iteration"] == 2
            assert (sweep_dir / k / "metrics.json").is_file()
    # the summary has four rows, the failed one last and listed with its error
    rows = csv_rows(sweep_dir)
    header = list(rows[0])
    assert header[:2] == ["job", "status"] and header[4] == "bbox/AP"
    assert set(header[2:4]) == {"schedule.eval_period", "schedule.early_stop.patience"}
    assert [row["status"] for row in rows] == ["completed"] * 3 + ["failed"]
    assert rows[-1]["job"] == failed[0] and "needs evaluations during training" in rows[-1]["error"]
    assert len(md_rows(sweep_dir)) == 4
    md = (sweep_dir / "summary.md").read_text()
    assert "3 of 4 jobs completed" in md and "## Failed jobs" in md
    assert "1 of 4 sweep jobs failed" in out


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_sweep_script_rebuilds_the_summary(failing_sweep, capsys):
    sweep_dir, _ = failing_sweep
    before = (sweep_dir / "summary.csv").read_text()
    (sweep_dir / "summary.csv").unlink()
    (sweep_dir / "summary.md").unlink()
    rc = load_script("summarize_sweep").main([str(sweep_dir)])
    out = capsys.readouterr().out
    assert rc == 1, out  # a job failed
    assert (sweep_dir / "summary.csv").read_text() == before
    assert "needs evaluations during training" in out


def test_completed_jobs_sort_by_the_metric_and_a_killed_job_is_missing(tmp_path):
    def job(num, status, ap, error=None):
        d = tmp_path / str(num)
        d.mkdir()
        sweep.write_result(d, {"job": num, "dir": str(d), "overrides": [f"seed={num}"],
                               "params": {"seed": num}, "optimized_metric": "bbox/AP",
                               "optimized_mode": "max", "status": status,
                               "metrics": {} if ap is None else {"bbox/AP": ap},
                               "error": error}, tensorboard=False)

    job(0, "completed", 0.2)
    job(1, "failed", None, "ValueError: boom")
    job(2, "completed", 0.5)
    job(10, "completed", float("nan"))
    killed = tmp_path / "3" / ".hydra"
    killed.mkdir(parents=True)
    (killed / "overrides.yaml").write_text("- seed=3\n")
    rows = sweep.write_summary(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [
        (2, "completed"), (0, "completed"), (10, "completed"), (1, "failed"), ("3", "missing")]
    assert [r["job"] for r in sweep.sort_rows(rows, "bbox/AP", "min")][:2] == [0, 2]


@pytest.mark.slow
def test_a_clean_2x2_sweep_writes_four_jobs_a_summary_and_hparams(tmp_path):
    sweep_dir = tmp_path / "multirun"
    r = run_cli("rcnn-train", "-m", *BASE, "schedule.lr=0.01,0.02", "seed=0,1",
                f"hydra.sweep.dir={sweep_dir}")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    res = results(sweep_dir)
    assert sorted(res) == ["0", "1", "2", "3"]
    assert {(v["params"]["schedule.lr"], v["params"]["seed"]) for v in res.values()} == {
        (0.01, 0), (0.01, 1), (0.02, 0), (0.02, 1)}
    assert all(v["status"] == "completed" for v in res.values())
    rows = csv_rows(sweep_dir)
    assert len(rows) == 4 and len(md_rows(sweep_dir)) == 4
    aps = [float(row["bbox/AP"]) for row in rows]
    assert aps == sorted(aps, reverse=True)
    for k in res:
        assert list((sweep_dir / k / "tb" / "hparams").glob("events.out.tfevents.*")), k
    assert "sweep" in out and "bbox/AP" in out
