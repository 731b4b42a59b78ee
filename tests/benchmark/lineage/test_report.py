"""The lineage's tables: rows are means over seeds, every column, refused and failed rows."""

from __future__ import annotations

import pytest

from rcnn_cli.benchmark.lineage import report as lineage
from tests.benchmark.lineage.records import run_record


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


def test_machine_notes_name_the_cpu_and_the_runs_timed_on_a_busy_machine():
    quiet, busy, old = (run_record("FPN", 0), run_record("FPN", 1), run_record("HTC", 0))
    quiet.update(cpu="CPU A", timed="alone", train_load={"load": 1.3, "threads": 1})
    quiet["test"].update(threads=1, others=0.1)
    busy.update(cpu="CPU A", timed="alone", train_load={"load": 1.9, "threads": 1})
    busy["test"].update(threads=1, others=0.95)
    old.update(cpu="CPU B", timed="together")  # kept before loads were recorded
    assert lineage.machine_notes([quiet, busy, old]) == [
        "- CPU A, timed alone after training: FPN seed 0, FPN seed 1",
        "- CPU B, timed together, interleaved: HTC seed 0",
        "- trained while another job used the CPU: FPN seed 1 (load 1.9 on 1 thread(s))",
        "- timed while another job used the CPU: FPN seed 1 (0.95 cores busy with other work)"]
