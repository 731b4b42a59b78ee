"""benchmarks/export_speed.py at a tiny size: both loops run and agree (not timed here)."""

import json

from tests.benchmarks.programs import run_program


def test_eager_and_onnx_runtime_run_and_agree():
    rec = json.loads(run_program("export_speed", "--size", "64", "--images", "2",
                                 "--threads", "1").splitlines()[-1])
    assert rec["backbone"] == "r18_fpn" and rec["size"] == 64
    assert set(rec["images_per_s"]) == {"eager", "onnxruntime"}
    worst = rec["eager_speed_switches_vs_onnx"]
    assert worst["labels_equal"] and worst["max_boxes_diff"] < 1e-2
