"""benchmarks/vs_torchvision.py: a tiny train and infer run write complete records (not timed: the numbers
are the benchmark's, docs/benchmarks.md)."""

from __future__ import annotations

import json

from tests.benchmarks.programs import run_program

TINY = ["--threads", "1", "--override", "dataset.train_size=16", "--override",
        "dataset.num_workers=0", "--override", "schedule.batch_size=2"]


def run_bench(tmp_path, *args: str) -> list[dict]:
    out = tmp_path / "bench.json"
    run_program("vs_torchvision", *args, "--json", str(out), "--tag", "t", timeout=600)
    return json.loads(out.read_text())


def test_train_record_has_every_loop_split_and_an_unchanged_loss_curve(tmp_path):
    (rec,) = run_bench(tmp_path, "train", "--steps", "2", "--warmup", "1", "--sizes", "64",
                       *TINY)
    assert rec["mode"] == "train" and rec["size"] == 64 and rec["tag"] == "t"
    assert rec["flops_per_step"] > 0
    assert set(rec["loops"]) == {"bare torchvision", "rcnn-cli (speed off)",
                                 "rcnn-cli (speed on)"}
    for row in rec["loops"].values():
        for key in ("step_s", "forward_s", "backward_s", "optimizer_s", "backbone_s", "rpn_s",
                    "roi_heads_s", "gflops_per_s", "speedup_vs_bare"):
            assert row[key] > 0, key
    assert rec["loops"]["rcnn-cli (speed on)"]["max_rel_loss_diff"] == 0.0  # bit-identical


def test_infer_record_compares_detections(tmp_path):
    (rec,) = run_bench(tmp_path, "infer", "--images", "2", "--batch", "2", "--sizes", "96",
                       "--override", "model.box_head.score_thresh=0.0", "--threads", "1")
    ours = rec["loops"]["rcnn-cli (speed on)"]
    assert rec["mode"] == "infer" and rec["size"] == 96
    # identity itself is tests/engine/test_fast_inference.py's; here: it is measured
    assert ours["images_with_label_mismatch"] in (0, 1, 2) and ours["max_box_diff"] >= 0
    assert ours["images_per_s"] > 0 and rec["loops"]["bare torchvision"]["backbone_s"] > 0

