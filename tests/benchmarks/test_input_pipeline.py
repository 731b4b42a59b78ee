"""benchmarks/input_pipeline.py: ``step`` on a tiny training run and ``rss`` on a tiny
synthetic COCO file both print their report (not timed here)."""

import re

from tests.benchmarks.programs import run_program


def test_step_reports_data_time_against_step_time():
    out = run_program("input_pipeline", "step", "--iters", "3", "--warmup", "1",
                      "--loader-batches", "2", "dataset.train_size=8", "dataset.image_size=64",
                      "schedule.batch_size=2", "dataset.num_workers=0")
    assert "iterations measured: 2 (after 1 warm-up)" in out
    assert re.search(r"data time / step time: [\d.]+ %", out)


def test_rss_samples_each_worker(tmp_path):
    out = run_program("input_pipeline", "rss", "--images", "64", "--workers", "1",
                      "--batch-size", "4", "--batches", "4", "--targets-only",
                      "--workdir", str(tmp_path))
    assert "1 workers, batch 4" in out and "growth from" in out
