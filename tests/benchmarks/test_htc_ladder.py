"""benchmarks/htc_ladder.py at a smoke size: one rung through rcnn-train, its record and row."""

import json

from tests.benchmarks.programs import run_program


def test_one_rung_gives_a_record_and_a_table_row(tmp_path):
    out = run_program("htc_ladder", "--smoke", "--seeds", "0", "--rungs", "htc",
                      "--out", str(tmp_path), timeout=600)
    [record] = json.loads((tmp_path / "ladder.json").read_text())
    assert record["rung"] == "htc" and record["seed"] == 0
    assert record["box_AP"] is not None and record["mask_AP"] is not None
    assert record["s_per_iter"] > 0
    assert "| HTC |" in out and "| rung | box AP | mask AP | s/iter | seeds |" in out
