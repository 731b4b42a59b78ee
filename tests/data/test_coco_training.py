"""COCO / VOC datasets through training and evaluation: category ids and the VOC -> COCO
round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn_cli.data.build import build_raw_dataset
from rcnn_cli.data_cli import run as data_run
from rcnn_cli.evaluation.coco import CocoEvaluator
from tests.conftest import NO_OPTIMIZER_STATE, compose_cfg
from tests.data.helpers import shapes_to_disk

# Tiny runs on 64 px images written to disk (tests.data.helpers.shapes_to_disk); a narrow box
# head (dataset=coco gets torchvision's 1024-wide one) and no optimizer state: small checkpoints.
FILE_TINY = ["schedule.batch_size=2", "schedule.max_iter=4", "schedule.warmup_iters=2",
             "schedule.checkpoint_period=4", "schedule.eval_period=0", "log.period=2",
             "log.tensorboard=false", "dataset.min_size=64", "dataset.max_size=64",
             "dataset.num_workers=0", "model.box_head.score_thresh=0.0",
             "model.box_head.representation_size=64", *NO_OPTIMIZER_STATE]


def coco_overrides(d: dict, train_json=None, val_json=None) -> list[str]:
    return ["dataset=coco", f"dataset.train_json={train_json or d['train_json']}",
            f"dataset.train_images={d['train_images']}",
            f"dataset.val_json={val_json or d['val_json']}", f"dataset.val_images={d['val_images']}"]


def voc_overrides(d: dict) -> list[str]:
    return ["dataset=voc", f"dataset.root={d['voc_root']}", "dataset.train_split=train",
            "dataset.val_split=val"]


def convert(d: dict, out: Path) -> dict:
    cfg = compose_cfg("data", ["command=convert", *voc_overrides(d), f"out={out}"])
    data_run(cfg)
    return {**d, "train_json": str(out / "train.json"), "val_json": str(out / "val.json")}


def mark_first_val_object_difficult(d: dict) -> None:
    xml = Path(d["voc_root"]) / "Annotations" / "val_0000.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>",
                                           "<difficult>1</difficult>", 1))


def jittered_predictions(gt: dict, seed: int = 0) -> list[dict]:
    """Fixed predictions: each ground-truth box moved a little, plus a false positive."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = (v + float(j) for v, j in zip(a["bbox"], rng.normal(0, 1, 4)))
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x, y, w, h], "score": float(rng.uniform(0.2, 1.0))})
        dets.append({"image_id": a["image_id"], "category_id": int(rng.choice(cats)),
                     "bbox": [y, x, h, w], "score": float(rng.uniform(0.0, 0.6))})
    return dets


def test_voc_converted_to_coco_evaluates_the_same_predictions_identically(tmp_path):
    d = shapes_to_disk(tmp_path, n_train=4, n_val=6)
    mark_first_val_object_difficult(d)
    c = convert(d, tmp_path / "coco")
    voc = build_raw_dataset(compose_cfg("train", voc_overrides(d)).dataset, "val")
    coco = build_raw_dataset(compose_cfg("train", coco_overrides(c)).dataset, "val")
    assert voc.classes == coco.classes and voc.category_ids == coco.category_ids
    assert np.array_equal(voc.image_ids, coco.image_ids)
    gt_voc, gt_coco = voc.coco_gt(), coco.coco_gt()
    assert [a["iscrowd"] for a in gt_voc["annotations"]].count(1) == 1  # the difficult object
    dets = jittered_predictions(gt_voc)
    a, b = CocoEvaluator(gt_voc).evaluate(dets), CocoEvaluator(gt_coco).evaluate(dets)
    assert a == b
    assert 0.2 < a["bbox/AP"] < 0.99


def test_non_contiguous_category_ids_survive_training_results_and_coco_eval(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from rcnn_cli.engine.train import train

    d = shapes_to_disk(tmp_path, n_train=4, n_val=2, category_ids=(42, 3, 7))
    run = tmp_path / "run"
    metrics = train(compose_cfg("train", FILE_TINY + coco_overrides(d) + ["schedule.max_iter=2",
                                "schedule.checkpoint_period=2", "schedule.warmup_iters=1"]), run)
    dets = json.loads((run / "predictions" / "detections.json").read_text())
    assert dets and {x["category_id"] for x in dets} <= {3, 7, 42}
    assert len({x["category_id"] for x in dets}) > 1
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["classes"] == ["ellipse", "triangle", "rectangle"]  # in category id order
    assert last["category_ids"] == [3, 7, 42]
    assert json.loads((run / "export" / "model.json").read_text())["category_ids"] == [3, 7, 42]
    # pycocotools directly on the user's own file and the results JSON: the same AP
    gt = COCO(d["val_json"])
    ev = COCOeval(gt, gt.loadRes(str(run / "predictions" / "detections.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(metrics["bbox/AP"], abs=1e-9)
    assert ev.stats[1] == pytest.approx(metrics["bbox/AP50"], abs=1e-9)


def test_contiguous_labels_map_back_to_the_original_ids_in_results(tmp_path):
    """Perfect predictions in label space, mapped back, score AP 1 on the user's own file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from rcnn_cli.evaluation.inference import to_coco_results

    d = shapes_to_disk(tmp_path, n_train=2, n_val=4, category_ids=(42, 3, 7))
    ds = build_raw_dataset(compose_cfg("train", coco_overrides(d)).dataset, "val")
    assert ds.category_ids == [3, 7, 42]
    results = []
    for i in range(len(ds)):
        t = ds.target(i)
        out = {"boxes": torch.as_tensor(t["boxes"]), "labels": torch.as_tensor(t["labels"]),
               "scores": torch.ones(len(t["labels"]))}
        results += to_coco_results(out, t["image_id"], ds.category_ids)
    (tmp_path / "results.json").write_text(json.dumps(results))
    gt = COCO(d["val_json"])
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "results.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    assert CocoEvaluator(ds.coco_gt()).evaluate(results)["bbox/AP"] == pytest.approx(1.0)


@pytest.mark.slow
def test_voc_and_converted_coco_train_and_evaluate_the_same(tmp_path):
    """Train as dataset=coco on the converted files, evaluate the checkpoint as dataset=voc."""
    from rcnn_cli.engine.evaluator import evaluate_checkpoint
    from rcnn_cli.engine.train import train

    d = shapes_to_disk(tmp_path, n_train=8, n_val=4)
    mark_first_val_object_difficult(d)
    c = convert(d, tmp_path / "coco")
    as_coco = train(compose_cfg("train", FILE_TINY + coco_overrides(c)), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    cfg = compose_cfg("eval", [f"ckpt={ckpt}", *voc_overrides(d), "dataset.min_size=64",
                               "dataset.max_size=64", "dataset.num_workers=0"])
    as_voc = evaluate_checkpoint(cfg, tmp_path / "eval")
    dets = [json.loads((tmp_path / p / "predictions" / "detections.json").read_text())
            for p in ("run", "eval")]
    assert dets[0] and dets[0] == dets[1]
    losses = {k for k in as_coco if k.startswith("val/")}  # training's validation losses only
    assert losses and set(as_voc) == set(as_coco) - losses
    for k, v in as_voc.items():
        assert v == pytest.approx(as_coco[k], abs=1e-9), k
