"""The real BCCD dataset (Pascal VOC layout, 364 images); skipped when it is absent."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import compose_cfg, run_cli
from tests.data.helpers import BCCD

pytestmark = pytest.mark.skipif(not (BCCD / "ImageSets" / "Main").is_dir(),
                                reason=f"BCCD not found at {BCCD} (set RCNN_CLI_BCCD)")


def test_check_reports_the_two_degenerate_boxes_and_the_class_counts():
    from rich.console import Console

    from rcnn_cli.data import doctor

    cfg = compose_cfg("data", ["command=check", "dataset=voc", f"dataset.root={BCCD}"])
    result = doctor.check(cfg, Console(record=True, width=240))
    total = result["total"]
    assert total["images"] == total["images_listed"] == 364  # trainval 292 + test 72
    assert {c: v["annotated"] for c, v in total["per_class"].items()} == {
        "Platelets": 361, "RBC": 4155, "WBC": 372}
    # both degenerate boxes are zero-size RBC boxes, dropped under the lenient default
    assert total["per_class"]["RBC"]["boxes"] == 4153
    assert list(total["problems"]) == ["degenerate_box"]
    deg = total["problems"]["degenerate_box"]
    assert deg["count"] == 2
    first, second = sorted(deg["examples"])
    # object numbers count <object> elements from 1 (the 13th and the 4th)
    assert "BloodImage_00338.xml: image id 238 (BloodImage_00338.jpg), object 13" in first
    assert "[504, 337, 504, 337]" in first
    assert "BloodImage_00343.xml: image id 242 (BloodImage_00343.jpg), object 4" in second
    assert "[181, 329, 181, 329]" in second


def test_strict_policy_refuses_bccd_naming_both_boxes():
    from rcnn_cli.data.build import load_store
    from rcnn_cli.errors import DataError

    cfg = compose_cfg("data", ["command=check", "dataset=voc", f"dataset.root={BCCD}",
                               "dataset.validation=strict"])
    with pytest.raises(DataError) as e:
        load_store(cfg.dataset, "train")
    msg = str(e.value)
    assert "degenerate_box: 2 problem(s)" in msg
    assert "BloodImage_00338.xml" in msg and "BloodImage_00343.xml" in msg


@pytest.mark.slow
def test_short_rcnn_train_on_bccd_runs_and_evaluates(tmp_path):
    r = run_cli("rcnn-train", "dataset=voc", f"dataset.root={BCCD}", "dataset.min_size=160",
                "dataset.max_size=214", "dataset.num_workers=2", "schedule.batch_size=2",
                "schedule.max_iter=4", "schedule.warmup_iters=2", "schedule.eval_period=0",
                "schedule.checkpoint_period=4", "log.period=2", "log.tensorboard=false",
                f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["iteration"] == 4 and metrics["bbox/AP"] is not None
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["classes"] == ["Platelets", "RBC", "WBC"]
    dets = json.loads((tmp_path / "run" / "predictions" / "detections.json").read_text())
    assert {d["image_id"] for d in dets} <= set(range(1, 73))  # the 72 test images
