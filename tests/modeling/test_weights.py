"""model.weights: torchvision-layout detectors loaded for your classes (no network: the source
weights are built here, seeded)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

from rcnn_cli.errors import ConfigError
from rcnn_cli.io import FORMAT, sha256
from rcnn_cli.modeling.build import build_architecture
from rcnn_cli.modeling.weights import (
    Source,
    load_pretrained,
    match_classes,
    named_classes,
    same_id_space,
)
from tests.conftest import compose_cfg
from tests.modeling.test_parity import OURS, SIZE, images

CLASSES = ["person", "car", "dog"]
COCO_ROWS = [0, 1, 3, 18]  # background, person, car, dog in torchvision's 91 rows
R50 = ["model=faster", "backbone=r50_fpn", "anchors=fpn", *OURS]


def source_file(tmp: Path, builder, name: str) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    ref = builder(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0,
                  min_size=SIZE["min_size"], max_size=SIZE["max_size"],
                  rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                  box_detections_per_img=30).eval()
    path = tmp / name
    torch.save(ref.state_dict(), path)
    return path, ref


@pytest.fixture(scope="module")
def faster(tmp_path_factory):
    return source_file(tmp_path_factory.mktemp("src"), fasterrcnn_resnet50_fpn, "faster.pth")


def load(overrides: list[str], classes, category_ids=None):
    cfg = compose_cfg("train", overrides)
    model = build_architecture(cfg, len(classes))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, cfg, classes, category_ids)
    return model.eval(), report, fresh


def class_logits(model, ims) -> torch.Tensor:
    """The box predictor's class logits for ``ims`` (eval mode: the same proposals when the
    backbone and RPN weights are the same)."""
    out = []
    handle = model.roi_heads.box_predictor.register_forward_hook(
        lambda m, i, o: out.append(o[0].detach()))
    with torch.no_grad():
        model(ims)
    handle.remove()
    return out[0]


def test_coco_names_map_rows_blocks_and_logits(faster, tmp_path):
    path, ref = faster
    model, report, _ = load([*R50, f"model.weights={path}", "model.weights_class_names=coco"],
                            CLASSES)
    src, own = ref.state_dict(), model.state_dict()
    head = "roi_heads.box_predictor."
    for k, v in own.items():
        if not k.startswith(head) and "num_batches_tracked" not in k:
            assert torch.equal(v, src[k]), k
    assert torch.equal(own[head + "cls_score.weight"], src[head + "cls_score.weight"][COCO_ROWS])
    assert torch.equal(own[head + "cls_score.bias"], src[head + "cls_score.bias"][COCO_ROWS])
    blocks = torch.tensor([4 * r + j for r in COCO_ROWS for j in range(4)])
    assert torch.equal(own[head + "bbox_pred.weight"], src[head + "bbox_pred.weight"][blocks])
    assert torch.equal(own[head + "bbox_pred.bias"], src[head + "bbox_pred.bias"][blocks])
    ims = images()
    torch.testing.assert_close(class_logits(model, ims), class_logits(ref, ims)[:, COCO_ROWS],
                               atol=1e-5, rtol=0)
    report.write(tmp_path)
    saved = json.loads((tmp_path / "weights_load.json").read_text())
    assert saved["sha256"] == sha256(path) and saved["kind"] == "state dict"
    assert sorted(saved["keys"]["mapped"]) == sorted(
        head + k for k in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight",
                           "bbox_pred.bias"))
    assert not saved["keys"]["reinitialised"] and not saved["keys"]["skipped"]
    assert len(saved["keys"]["loaded"]) == len(
        [k for k in src if not k.startswith(head) and "num_batches_tracked" not in k])
    assert [(c["class"], c["source_row"], c["source_class"]) for c in saved["class_map"]] == [
        ("__background__", 0, "__background__"), ("person", 1, "person"), ("car", 3, "car"),
        ("dog", 18, "dog")]
    assert "| dog | dog (18) |" in report.class_map_text()


def test_reinit_keeps_the_fresh_class_layers(faster):
    path, ref = faster
    model, report, fresh = load([*R50, f"model.weights={path}", "model.weights_class_names=coco",
                                 "model.weights_classes=reinit"], CLASSES)
    own, src = model.state_dict(), ref.state_dict()
    for k, v in own.items():
        if "box_predictor" in k:
            assert torch.equal(v, fresh[k]), k
        elif "num_batches_tracked" not in k:
            assert torch.equal(v, src[k]), k
    assert len(report.reinitialised) == 4 and not report.mapped and not report.class_map


def test_coco_category_ids_reproduce_torchvision_detections(faster, tmp_path):
    """dataset=coco: our 80 contiguous labels take torchvision's rows by category id. The 10
    unused ("N/A") rows of the synthetic source get a bias of -1e4, as they never fire in
    torchvision's trained weights, so both softmaxes agree."""
    ref = copy.deepcopy(faster[1])
    state = ref.state_dict()
    names, _ = named_classes("coco")
    ids = [i for i, n in enumerate(names) if n not in ("__background__", "N/A")]
    unused = [i for i, n in enumerate(names) if n == "N/A"]
    state["roi_heads.box_predictor.cls_score.weight"] *= 50  # spread the scores apart
    state["roi_heads.box_predictor.cls_score.bias"][unused] = -1e4
    ref.load_state_dict(state)
    torch.save(state, tmp_path / "coco.pth")
    coco = ["dataset=coco", "dataset.train_json=a.json", "dataset.train_images=i",
            "dataset.val_json=b.json", "dataset.val_images=i"]
    model, _, _ = load([*R50, *coco, f"model.weights={tmp_path / 'coco.pth'}",
                        "model.weights_class_names=coco"], [names[i] for i in ids], ids)
    ims = images()
    with torch.no_grad():
        theirs, ours = ref(ims), model(ims)
    for t, o in zip(theirs, ours):
        assert len(t["labels"]) > 0
        assert torch.equal(t["labels"], torch.tensor(ids)[o["labels"] - 1])
        torch.testing.assert_close(o["boxes"], t["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["scores"], t["scores"], atol=1e-4, rtol=0)


def test_voc_names_and_synonyms_and_explicit_class_map():
    names, ids = named_classes("coco")
    coco = Source("coco.pth", "state dict", {}, names, ids)
    assert match_classes(["aeroplane", "TVMonitor", "sofa", "cell"], None, coco, {},
                         by_id=False) == [0, 5, 72, 63, None]
    assert match_classes(["cell", "kitty"], None, coco, {"kitty": "cat"},
                         by_id=False) == [0, None, 17]
    with pytest.raises(ConfigError, match="model.class_map: kitty: tiger is not a class"):
        match_classes(["kitty"], None, coco, {"kitty": "tiger"}, by_id=False)
    with pytest.raises(ConfigError, match="model.class_map names \\['dog'\\]"):
        match_classes(["cat"], None, coco, {"dog": "dog"}, by_id=False)
    # a COCO-format dataset of its own classes under ids 1, 2: COCO's ids mean other classes
    assert not same_id_space(["cell", "dog"], [1, 2], coco)
    assert same_id_space(["person", "dog"], [1, 18], coco)
    unnamed = Source("x.pth", "state dict", {})
    with pytest.raises(ConfigError, match="model.weights_class_names=coco\\|voc"):
        match_classes(["cat"], None, unnamed, {}, by_id=False)


def test_mask_rcnn_maps_the_mask_predictor(tmp_path):
    path, ref = source_file(tmp_path, maskrcnn_resnet50_fpn, "mask.pth")
    model, report, _ = load(["model=mask", *R50[1:], f"model.weights={path}",
                             "model.weights_class_names=coco"], CLASSES)
    own, src = model.state_dict(), ref.state_dict()
    key = "roi_heads.mask_predictor.mask_fcn_logits."
    for p in ("weight", "bias"):
        assert torch.equal(own[key + p], src[key + p][COCO_ROWS])
        assert key + p in report.mapped
    assert torch.equal(own["roi_heads.mask_head.0.0.weight"],
                       src["roi_heads.mask_head.0.0.weight"])


def rcnn_cli_checkpoint(path: Path, model, classes: list[str]) -> Path:
    torch.save({"format": FORMAT, "model": model.state_dict(), "classes": classes,
                "category_ids": list(range(1, len(classes) + 1)), "config": {},
                "iteration": 1}, path)
    return path


SMALL = ["backbone.fpn_channels=32", "model.box_head.representation_size=32"]


def test_cascade_stages_map_by_name_from_an_rcnn_cli_checkpoint(tmp_path):
    """A 3-class cascade checkpoint into a cascade for 2 of its classes, in another order:
    each stage's classifier rows follow the names; the class-agnostic box deltas load."""
    torch.manual_seed(0)
    cfg = compose_cfg("train", ["model=cascade", *SMALL])
    shapes = build_architecture(cfg, 3)
    ckpt = rcnn_cli_checkpoint(tmp_path / "last.pt", shapes, ["rectangle", "ellipse", "triangle"])
    model, report, _ = load(["model=cascade", *SMALL, f"model.weights={ckpt}"],
                            ["triangle", "rectangle"])
    src, own = shapes.state_dict(), model.state_dict()
    for s in range(3):
        key = f"roi_heads.stages.{s}.predictor."
        assert torch.equal(own[key + "cls_score.weight"], src[key + "cls_score.weight"][[0, 3, 1]])
        assert torch.equal(own[key + "bbox_pred.weight"], src[key + "bbox_pred.weight"])
        assert key + "bbox_pred.weight" in report.loaded
    assert report.kind == "rcnn-cli checkpoint"


def test_faster_into_cascade_needs_weights_partial_then_loads_backbone_and_rpn(tmp_path):
    torch.manual_seed(0)
    faster = build_architecture(compose_cfg("train", SMALL), 3)
    ckpt = rcnn_cli_checkpoint(tmp_path / "faster.pt", faster, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="model.weights_partial=\\[roi_heads\\]"):
        load(["model=cascade", *SMALL, f"model.weights={ckpt}"], ["a", "b", "c"])
    model, report, fresh = load(["model=cascade", *SMALL, f"model.weights={ckpt}",
                                 "model.weights_partial=[roi_heads]"], ["a", "b", "c"])
    own, src = model.state_dict(), faster.state_dict()
    assert all(torch.equal(own[k], src[k]) for k in own
               if k.startswith(("backbone.", "rpn.")) and "num_batches_tracked" not in k)
    assert all(torch.equal(own[k], fresh[k]) for k in own if k.startswith("roi_heads."))
    assert all(k.startswith("roi_heads.") for k in report.skipped + report.reinitialised)
    assert report.skipped and report.reinitialised


def test_architecture_mismatch_names_the_config_key(faster):
    path, _ = faster
    with pytest.raises(ConfigError, match="model.box_head.representation_size is 256, the "
                                          "weights have 1024"):
        load([*R50, "model.box_head.representation_size=256", f"model.weights={path}",
              "model.weights_class_names=coco"], CLASSES)


def test_region_detector_svms_map_foreground_rows(tmp_path):
    """R-CNN's per-class SVMs and box regressors have one row per foreground class."""
    over = ["experiment=rcnn_alexnet_shapes", "backbone.weights=null"]
    torch.manual_seed(0)
    cfg = compose_cfg("train", over)
    src_model = build_architecture(cfg, 3)
    for k, v in src_model.state_dict().items():
        if k.startswith("roi_heads.svm") or k.startswith("roi_heads.ridge"):
            v.copy_(torch.randn_like(v))
    ckpt = rcnn_cli_checkpoint(tmp_path / "rcnn.pt", src_model, ["rectangle", "ellipse",
                                                                 "triangle"])
    model, report, _ = load([*over, f"model.weights={ckpt}"], ["triangle", "square"])
    own, src = model.state_dict(), src_model.state_dict()
    assert torch.equal(own["roi_heads.svm_weight"][0], src["roi_heads.svm_weight"][2])
    assert torch.equal(own["roi_heads.ridge_weight"][0], src["roi_heads.ridge_weight"][2])
    assert torch.equal(own["roi_heads.cls_score.weight"][[0, 1]],
                       src["roi_heads.cls_score.weight"][[0, 3]])
    assert "roi_heads.svm_weight" in report.mapped


def test_named_backbone_checkpoint_loads_strictly_into_torchvision():
    """`rcnn-train model=faster backbone=r50_fpn` on user data builds torchvision's
    fasterrcnn_resnet50_fpn: its state dict loads strictly."""
    ours = build_architecture(compose_cfg("train", ["model=faster", "backbone=r50_fpn",
                                                    "dataset=voc", "dataset.root=X"]), 3)
    ref = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    ref.load_state_dict(ours.state_dict(), strict=True)


def test_default_names_the_builders_torchvision_has(tmp_path):
    from rcnn_cli.modeling.weights import read_source

    with pytest.raises(ConfigError, match="torchvision has no COCO weights for model=cascade "
                                          "backbone=r50_fpn"):
        read_source("DEFAULT", "cascade", "r50_fpn")
    with pytest.raises(ConfigError, match="no checkpoint, export or state-dict file there"):
        read_source(str(tmp_path / "gone.pth"), "faster", "r50_fpn")


def test_without_the_dataset_classes_same_shaped_class_layers_load_as_they_are(tmp_path):
    """Callers that build without class names (stage graphs) get the class layers unchanged
    when their shapes agree, and a clear error when they do not."""
    over = ["experiment=rcnn_alexnet_shapes", "backbone.weights=null"]
    torch.manual_seed(0)
    src_model = build_architecture(compose_cfg("train", over), 3)
    for k, v in src_model.state_dict().items():
        if k.startswith("roi_heads.svm"):
            v.copy_(torch.randn_like(v))
    ckpt = rcnn_cli_checkpoint(tmp_path / "rcnn.pt", src_model, ["a", "b", "c"])
    cfg = compose_cfg("train", [*over, f"model.weights={ckpt}"])
    model = build_architecture(cfg, 3)
    report = load_pretrained(model, cfg)
    assert torch.equal(model.state_dict()["roi_heads.svm_weight"],
                       src_model.state_dict()["roi_heads.svm_weight"])
    assert "roi_heads.svm_weight" in report.mapped and not report.class_map
    with pytest.raises(ConfigError, match="class mapping needs the dataset's classes"):
        load_pretrained(build_architecture(cfg, 2), cfg)
