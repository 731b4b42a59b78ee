"""benchmarks/eval_speed.py at a tiny size: both COCO backends agree and one record is
appended; rcnn-predict's loop runs for both backbones (not timed here)."""

import json

from tests.benchmarks.programs import run_program


def test_backends_agree_and_predict_runs(tmp_path):
    out = run_program("eval_speed", "--images", "12", "--dets", "5", "--predict-images", "2",
                      "--batch-size", "2", "--json", str(tmp_path / "r.json"), "--tag", "t")
    (rec,) = json.loads((tmp_path / "r.json").read_text())
    assert rec["mode"] == "eval" and rec["images"] == 12 and rec["tag"] == "t"
    assert rec["max_stat_diff"] < 1e-6
    assert "r18_fpn (random init)" in out and "r50_fpn (random init)" in out
