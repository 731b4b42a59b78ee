"""rcnn-predict: drawn images and a COCO results file that pycocotools reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.engine.predictor import predict_images
from rcnn_cli.errors import ConfigError, DataError
from rcnn_cli.evaluation.draw import read_image, write_image
from tests.conftest import compose_cfg, run_cli
from tests.evaluation.untrained import make_export


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("export") / "export")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    """A COCO dataset on disk: 5 shapes validation images (PNG) and their annotation file."""
    root = tmp_path_factory.mktemp("source")
    raw = ShapesDataset("val", 5, 64)
    gt = raw.coco_gt()
    for i, im in enumerate(gt["images"]):
        write_image(root / "images" / im["file_name"],
                    torch.from_numpy(raw.raw(i)[0]).permute(2, 0, 1).contiguous())
    (root / "instances_val.json").write_text(json.dumps(gt))
    return root / "images", root / "instances_val.json"


def test_folder_gives_drawn_images_and_results_pycocotools_reloads(export, source, tmp_path):
    images, ann = source
    out = tmp_path / "out"
    r = run_cli("rcnn-predict", f"ckpt={export}", f"input={images}", f"output={out}",
                f"ann_file={ann}", "score_thresh=0.0", "batch_size=2",
                f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stdout + r.stderr
    for src in sorted(images.iterdir()):
        drawn, original = read_image(out / src.name), read_image(src)
        assert drawn.shape == original.shape and not torch.equal(drawn, original), src.name
    gt = COCO(str(ann))
    dets = json.loads((out / "detections.json").read_text())
    assert dets, "an untrained model still returns low-score boxes"
    res = gt.loadRes(str(out / "detections.json"))
    assert set(res.getImgIds()) <= set(gt.getImgIds())
    assert {d["category_id"] for d in dets} <= {1, 2, 3}
    ev = COCOeval(gt, res, "bbox")
    ev.evaluate()
    ev.accumulate()
    assert len(ev.evalImgs) > 0
    listed = json.loads((out / "images.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    assert {im["file_name"]: im["id"] for im in listed["images"]} == by_name


def test_dataset_split_and_a_single_jpeg_file(export, tmp_path):
    cfg = compose_cfg("predict", [f"ckpt={export}", "input=dataset", "dataset=shapes",
                                  "dataset.val_size=3", "dataset.image_size=64",
                                  f"output={tmp_path / 'ds'}"])
    summary = predict_images(cfg)
    assert summary["images"] == 3 and summary["images_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "ds").glob("*.png")) == [
        "val_000001.png", "val_000002.png", "val_000003.png"]
    ids = {d["image_id"] for d in json.loads((tmp_path / "ds" / "detections.json").read_text())}
    assert ids <= {1, 2, 3}
    img = torch.from_numpy(ShapesDataset("val", 1, 64).raw(0)[0]).permute(2, 0, 1).contiguous()
    write_image(tmp_path / "in" / "photo.jpg", img)
    cfg = compose_cfg("predict", [f"ckpt={export}", f"input={tmp_path / 'in' / '*.jpg'}",
                                  f"output={tmp_path / 'one'}", "score_thresh=0.3"])
    assert predict_images(cfg)["images"] == 1
    assert (tmp_path / "one" / "photo.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG


def test_bad_inputs_are_clear_errors(export, source, tmp_path):
    (tmp_path / "empty").mkdir()
    base = [f"ckpt={export}", f"output={tmp_path / 'o'}"]
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg image found"):
        predict_images(compose_cfg("predict", base + [f"input={tmp_path / 'empty'}"]))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [{"id": 9, "file_name": "x.png"}]}))
    with pytest.raises(DataError, match="val_000001.png"):
        predict_images(compose_cfg("predict", base + [f"input={source[0]}",
                                                      f"ann_file={other}"]))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png: cannot decode"):
        predict_images(compose_cfg("predict", base + [f"input={tmp_path / 'broken'}"]))
    with pytest.raises(ConfigError, match="split=test"):
        predict_images(compose_cfg("predict", base + ["input=dataset", "split=test"]))
    with pytest.raises(ConfigError, match="score_thresh=1.5"):
        predict_images(compose_cfg("predict", base + [f"input={source[0]}",
                                                      "score_thresh=1.5"]))


def test_voc_dataset_split_uses_its_ids_and_reloads_against_its_ground_truth(export, tmp_path,
                                                                              monkeypatch):
    from rcnn_cli.data.build import build_raw_dataset
    from tests.data.helpers import shapes_to_disk

    monkeypatch.setenv("RCNN_CLI_CACHE", str(tmp_path / "cache"))
    d = shapes_to_disk(tmp_path / "data", n_train=2, n_val=3)
    cfg = compose_cfg("predict", [
        f"ckpt={export}", "input=dataset", "dataset=voc", f"dataset.root={d['voc_root']}",
        "dataset.train_split=train", "dataset.val_split=val",
        "dataset.classes=[rectangle,ellipse,triangle]", f"output={tmp_path / 'o'}"])
    assert predict_images(cfg)["images"] == 3
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == [
        "val_0000.png", "val_0001.png", "val_0002.png"]
    gt = COCO()
    gt.dataset = build_raw_dataset(cfg.dataset, "val").coco_gt()
    gt.createIndex()
    res = gt.loadRes(str(tmp_path / "o" / "detections.json"))
    assert res.getAnnIds() and set(res.getImgIds()) <= set(gt.getImgIds())
    assert {a["category_id"] for a in res.dataset["annotations"]} <= set(gt.getCatIds())


def test_flip_tta_merges_two_views(export, source, tmp_path):
    images, ann = source
    counts = {}
    for mode in ("none", "flip"):
        cfg = compose_cfg("predict", [f"ckpt={export}", f"input={images}",
                                      f"output={tmp_path / mode}", "score_thresh=0.0", f"tta={mode}"])
        counts[mode] = predict_images(cfg)["detections"]
    a = json.loads((tmp_path / "none" / "detections.json").read_text())
    b = json.loads((tmp_path / "flip" / "detections.json").read_text())
    assert counts["none"] > 0 and counts["flip"] > 0 and a != b
