"""HTC and DetectoRS through rcnn-train, rcnn-eval and rcnn-predict, at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.evaluation.draw import write_image
from tests.conftest import NO_OPTIMIZER_STATE, TINY, run_cli

SMALL = [*TINY, "schedule.max_iter=2", "schedule.checkpoint_period=2", "log.tensorboard=false",
         "dataset.train_size=4", "dataset.val_size=2", "model.rpn.post_nms_top_n_train=50",
         "model.rpn.post_nms_top_n_test=20", "sampler.roi.batch_size_per_image=16",
         "model.box_head.representation_size=64", "model.box_head.detections_per_img=10",
         "model.mask_head.layers=[32,32]", "model.mask_head.dim_reduced=32",
         "backbone.fpn_channels=32", *NO_OPTIMIZER_STATE]
MODELS = {"htc": ["model=htc"],
          "detectors": ["model=detectors", "backbone.sac=true", "backbone.sac_deformable=true",
                        "backbone.rfp_steps=2"]}


@pytest.mark.parametrize("model", [
    "htc", pytest.param("detectors", marks=pytest.mark.slow)])
def test_train_eval_predict(model, tmp_path: Path):
    run = tmp_path / "run"
    r = run_cli("rcnn-train", *MODELS[model], *SMALL, f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stdout + r.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["segm/AP"] is not None and metrics["bbox/AP"] is not None
    ckpt = run / "checkpoints" / "last.pt"
    r = run_cli("rcnn-eval", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert r.returncode == 0, r.stdout + r.stderr
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["segm/AP"] == pytest.approx(metrics["segm/AP"], abs=1e-6)
    images = tmp_path / "images"
    raw = ShapesDataset("val", 2, 64)
    for i in range(2):
        write_image(images / f"{i}.png", torch.from_numpy(raw.raw(i)[0]).permute(2, 0, 1)
                    .contiguous())
    out = tmp_path / "out"
    r = run_cli("rcnn-predict", f"ckpt={ckpt}", f"input={images}", f"output={out}",
                "score_thresh=0.0", f"hydra.run.dir={tmp_path / 'predict'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "0.png").is_file() and (out / "detections.json").is_file()


def test_detectors_without_its_backbone_is_one_clear_line(tmp_path: Path):
    r = run_cli("rcnn-train", "model=detectors", *SMALL, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode != 0
    assert "model=detectors is HTC on a DetectoRS backbone" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
