"""R-CNN / SPPNet staged training on a few tiny images: each stage's artifact and TensorBoard
prefix, skipping finished stages on resume (manifests, mtimes, ``run.status``), re-running from a
changed stage on, and the final checkpoint in rcnn-eval / rcnn-predict like any other model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.predictor import predict_images
from rcnn_cli.engine.stages.feature_store import FeatureStore
from rcnn_cli.engine.train import train
from tests.conftest import compose_cfg
from tests.engine.stages.conftest import STAGES, overrides


def manifest(run_dir, stage) -> dict:
    return json.loads((run_dir / "stages" / stage / "manifest.json").read_text())


def stage_mtimes(run_dir) -> dict:
    return {p: p.stat().st_mtime_ns for p in (run_dir / "stages").rglob("*") if p.is_file()}


def test_each_stage_writes_its_artifact_and_scalars(rcnn_run):
    root, metrics = rcnn_run
    run = root / "run"
    for stage in STAGES:
        assert manifest(run, stage)["status"] == "done"
    fc7 = FeatureStore.open(run / "stages" / "features" / "fc7.npy")
    table = np.load(run / "stages" / "features" / "regions.npz")
    assert fc7.array.shape == (len(table["image"]), 64)
    assert table["is_gt"].sum() > 0 and (table["labels"][table["is_gt"]] > 0).all()
    pool5 = FeatureStore.open(run / "stages" / "features" / "pool5.npy")
    assert len(pool5) == len(table["reg_rows"]) and (table["ious"][table["reg_rows"]] >= 0.6).all()
    svms = torch.load(run / "stages" / "svms" / "svms.pt", weights_only=True)
    assert svms["weight"].shape == (3, 64) and svms["weight"].abs().sum() > 0
    ridge = torch.load(run / "stages" / "box_reg" / "box_ridge.pt", weights_only=True)
    assert ridge["weight"].shape == (3, 9216 + 1, 4)
    keys = set().union(*(json.loads(line) for line in (run / "metrics.jsonl").open()))
    for prefix in ("finetune/loss_classifier", "features/regions", "svms/rectangle/cache_size",
                   "box_reg/train_iou_after"):
        assert prefix in keys
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert metrics["bbox/AP50"] is not None and (run / "checkpoints" / "last.pt").is_file()


def test_resumed_run_skips_finished_stages(rcnn_run, graph_runs):
    root, metrics = rcnn_run
    run = root / "run"
    before = stage_mtimes(run)
    again = train(compose_cfg("train", overrides(root, "rcnn", f"resume={run}")), run)
    assert graph_runs[-1].status == dict.fromkeys(STAGES, "reused")  # no stage's work ran again
    assert stage_mtimes(run) == before  # not one stage file rewritten
    assert again["bbox/AP50"] == pytest.approx(metrics["bbox/AP50"], abs=1e-9)


def test_a_changed_svm_setting_reruns_from_the_svms_stage_on(rcnn_run, tmp_path, graph_runs,
                                                              caplog):
    """A cache too small for the margin violators is said, naming the key to raise."""
    root, _ = rcnn_run
    train(compose_cfg("train", overrides(root, "rcnn", f"resume={root / 'run'}",
                                         "model.svm.C=0.01", "model.svm.initial_negatives=2",
                                         "model.svm.max_cache=2")), tmp_path / "changed")
    assert graph_runs[-1].status == {"finetune": "reused", "features": "reused", "svms": "ran",
                                     "box_reg": "ran"}
    assert manifest(tmp_path / "changed", "finetune") == manifest(root / "run", "finetune")
    assert "raise model.svm.max_cache" in caplog.text


def test_final_checkpoint_works_with_eval_and_predict(rcnn_run, tmp_path):
    root, metrics = rcnn_run
    ckpt = root / "run" / "checkpoints" / "last.pt"
    out = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={ckpt}"]), tmp_path / "eval")
    assert out["bbox/AP50"] == pytest.approx(metrics["bbox/AP50"], abs=1e-6)
    exported = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={root / 'run' / 'export'}"]),
                                   tmp_path / "eval_export")
    assert exported["bbox/AP"] == pytest.approx(metrics["bbox/AP"], abs=1e-6)
    pred = predict_images(compose_cfg("predict", [f"ckpt={ckpt}", "input=dataset", "limit=2",
                                                  f"output={tmp_path / 'pred'}",
                                                  "score_thresh=0.0"]))
    assert pred["images"] == 2 and pred["detections"] > 0
    dets = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert {d["category_id"] for d in dets} <= {1, 2, 3}


def test_sppnet_softmax_trains_without_svms_and_evaluates(rcnn_run, tmp_path):
    root, _ = rcnn_run
    run = tmp_path / "spp"
    metrics = train(compose_cfg("train", overrides(root, "sppnet", "model.classifier=softmax")),
                    run)
    assert not (run / "stages" / "svms").exists()
    assert manifest(run, "box_reg")["status"] == "done"
    assert not (run / "stages" / "features" / "fc7.npy").exists()  # softmax: no SVM features
    out = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={run / 'checkpoints' / 'last.pt'}"]),
                              tmp_path / "eval")
    assert out["bbox/AP50"] == pytest.approx(metrics["bbox/AP50"], abs=1e-6)
