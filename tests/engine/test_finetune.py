"""Fine-tuning through rcnn-train: the weights check before any dataset work, the load report
in the run directory, the one-line offline error, and rcnn-eval / rcnn-predict that never
re-read pretrained weights (network blocked, weights files deleted)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.predictor import predict_images
from rcnn_cli.engine.train import train
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_architecture
from tests.conftest import NO_OPTIMIZER_STATE, TINY, compose_cfg, run_cli

SHAPES = ["rectangle", "ellipse", "triangle"]
SMALL = ["backbone.fpn_channels=32", "model.box_head.representation_size=32", *NO_OPTIMIZER_STATE]


def block_network(monkeypatch, tmp_path: Path) -> None:
    """No download can succeed, and torch's cache is an empty folder."""
    def refuse(*args, **kwargs):
        raise URLError("network blocked by the test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_wrong_backbone_fails_before_the_dataset_is_opened(tmp_path):
    weights = tmp_path / "r50_detector.pth"
    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
               weights)
    cfg = compose_cfg("train", ["dataset=voc", f"dataset.root={tmp_path / 'no_such_dir'}",
                                f"model.weights={weights}"])
    with pytest.raises(ConfigError, match="ResNet-50 bottlenecks .*use backbone=r50_fpn"):
        train(cfg, tmp_path / "run")


def test_weights_name_offline_is_one_line_naming_file_and_cache(tmp_path, monkeypatch):
    block_network(monkeypatch, tmp_path)
    cfg = compose_cfg("train", ["model=faster", "backbone=r50_fpn", "anchors=fpn",
                                "model.weights=FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
                                "dataset=voc", f"dataset.root={tmp_path / 'none'}"])
    with pytest.raises(ConfigError) as err:
        train(cfg, tmp_path / "run")
    msg = str(err.value)
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert "\n" not in msg and msg.startswith("model.weights=FasterRCNN_ResNet50_FPN_Weights")
    assert f"copy the file fasterrcnn_resnet50_fpn_coco-258fb6c6.pth into {cache}" in msg


def test_backbone_weights_name_offline_is_the_same_clear_error(tmp_path, monkeypatch):
    block_network(monkeypatch, tmp_path)
    cfg = compose_cfg("train", ["experiment=faster_r50_fpn", "dataset=voc",
                                f"dataset.root={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="backbone.weights=ResNet50_Weights.IMAGENET1K_V1: "
                                          "cannot download .* copy the file "
                                          "resnet50-0676ba61.pth into "):
        train(cfg, tmp_path / "run")


def test_cli_offline_error_has_no_traceback(tmp_path, monkeypatch):
    """rcnn-train with the network blocked (a dead proxy) and an empty torch cache; the recipe
    in force is printed first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    out = run_cli("rcnn-train", "model=faster", "backbone=r50_fpn", "model.weights=DEFAULT",
                  "dataset=voc", f"dataset.root={tmp_path}/none",
                  f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    assert "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in out.stderr + out.stdout
    assert "recipe: none (the plain group defaults)" in out.stderr + out.stdout


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> Path:
    """A shapes run fine-tuned from a plain state dict (classes named by
    model.weights_class_names) on a trunk from a local file; both files then deleted."""
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    cfg = compose_cfg("train", TINY + SMALL)
    source = build_architecture(cfg, 3)
    torch.save(source.state_dict(), root / "detector.pth")
    torch.save(resnet18().state_dict(), root / "trunk.pth")
    over = TINY + SMALL + [f"model.weights={root / 'detector.pth'}",
                           f"backbone.weights={root / 'trunk.pth'}",
                           "model.weights_class_names=[triangle,ellipse,rectangle]"]
    train(compose_cfg("train", over), root / "run")
    (root / "detector.pth").unlink()
    (root / "trunk.pth").unlink()
    return root / "run"


def test_train_writes_the_load_report(finetuned):
    report = json.loads((finetuned / "weights_load.json").read_text())
    assert report["kind"] == "state dict" and len(report["sha256"]) == 64
    assert [(c["class"], c["source_row"]) for c in report["class_map"]] == [
        ("__background__", 0), ("rectangle", 3), ("ellipse", 2), ("triangle", 1)]
    assert len(report["keys"]["mapped"]) == 4 and report["keys"]["loaded"]
    tb = list((finetuned / "tb").glob("events.out.tfevents.*"))
    assert tb and any(b"weights/class_map" in p.read_bytes() for p in tb)


def test_eval_and_predict_work_offline_after_the_weights_files_are_gone(finetuned, tmp_path,
                                                                          monkeypatch):
    block_network(monkeypatch, tmp_path)
    ckpt = finetuned / "checkpoints" / "last.pt"
    metrics = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={ckpt}"]), tmp_path / "eval")
    assert metrics["iteration"] == 4
    summary = predict_images(compose_cfg("predict", [
        f"ckpt={ckpt}", "input=dataset", "dataset=shapes", "dataset.val_size=2",
        "dataset.image_size=64", f"output={tmp_path / 'pred'}"]))
    assert summary["images"] == 2


def test_resume_continues_after_the_weights_files_are_gone(finetuned, tmp_path, monkeypatch):
    """A requeued fine-tuning job: every weight comes from the checkpoint, the files named by
    model.weights and backbone.weights (deleted by the fixture) are not read again."""
    from rcnn_cli.io import load_checkpoint

    block_network(monkeypatch, tmp_path)
    root = finetuned.parent
    over = TINY + SMALL + [f"model.weights={root / 'detector.pth'}",
                           f"backbone.weights={root / 'trunk.pth'}",
                           "model.weights_class_names=[triangle,ellipse,rectangle]",
                           "schedule.max_iter=6", f"resume={finetuned}"]
    metrics = train(compose_cfg("train", over), tmp_path / "continued")
    assert metrics["iteration"] == 6
    assert load_checkpoint(tmp_path / "continued" / "checkpoints" / "last.pt")["iteration"] == 6


def test_shapes_checkpoint_fine_tuned_on_a_two_class_subset_maps_by_name(finetuned, tmp_path):
    """An rcnn-cli run directory as the source, loaded for [triangle, rectangle]."""
    from rcnn_cli.io import load_checkpoint
    from rcnn_cli.modeling.weights import load_pretrained

    cfg = compose_cfg("train", TINY + SMALL + [f"model.weights={finetuned}"])
    model = build_architecture(cfg, 2)
    report = load_pretrained(model, cfg, ["triangle", "rectangle"], [3, 1])
    src = load_checkpoint(finetuned / "checkpoints" / "last.pt")["model"]
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(model.state_dict()[key], src[key][[0, 3, 1]])
    assert report.kind == "rcnn-cli checkpoint"
    cfg = compose_cfg("train", TINY + SMALL + [f"model.weights={finetuned / 'export'}"])
    model = build_architecture(cfg, 2)
    report = load_pretrained(model, cfg, ["triangle", "rectangle"], [3, 1])
    assert torch.equal(model.state_dict()[key], src[key][[0, 3, 1]])
    assert report.kind == "rcnn-cli export" and report.path.endswith("model.safetensors")


def test_fine_tune_a_shapes_run_on_a_two_class_coco_format_subset(finetuned, tmp_path):
    """rcnn-train on a COCO-format dataset of two of the shapes classes, under ids of its own
    (10: triangle, 20: rectangle), from the shapes run directory: classes map by name (the ids
    are not the source's), the rest loads."""
    from tests.data.helpers import shapes_to_disk

    d = shapes_to_disk(tmp_path / "data", n_train=6, n_val=3)
    new_id = {1: 20, 3: 10}  # rectangle, triangle; ellipses dropped
    for split in ("train", "val"):
        gt = json.loads(Path(d[f"{split}_json"]).read_text())
        gt["annotations"] = [{**a, "category_id": new_id[a["category_id"]]}
                             for a in gt["annotations"] if a["category_id"] in new_id]
        gt["categories"] = [{"id": 10, "name": "triangle"}, {"id": 20, "name": "rectangle"}]
        Path(d[f"{split}_json"]).write_text(json.dumps(gt))
    over = ["dataset=coco", f"dataset.train_json={d['train_json']}",
            f"dataset.train_images={d['train_images']}", f"dataset.val_json={d['val_json']}",
            f"dataset.val_images={d['val_images']}", "dataset.min_size=64",
            "dataset.max_size=64", "dataset.num_workers=0", "schedule.batch_size=2",
            "schedule.max_iter=2", "schedule.warmup_iters=1", "schedule.checkpoint_period=2",
            "schedule.eval_period=0", "log.tensorboard=false", "anchors=fpn_small",
            *SMALL, f"model.weights={finetuned}"]
    train(compose_cfg("train", over), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "weights_load.json").read_text())
    assert [(c["class"], c["source_class"]) for c in report["class_map"]] == [
        ("__background__", "__background__"), ("triangle", "triangle"),
        ("rectangle", "rectangle")]
    assert report["kind"] == "rcnn-cli checkpoint" and not report["keys"]["reinitialised"]
