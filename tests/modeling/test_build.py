"""Detector factory: torchvision parity for r50_fpn, explicit errors for bad combinations."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.backbones import build_backbone
from rcnn_cli.modeling.build import build_detector
from tests.conftest import compose_cfg

PARITY = ["backbone=r50_fpn", "anchors=fpn", "sampler=torchvision", "~experiment",
          "dataset.min_size=800", "dataset.max_size=1333"]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                  box_score_thresh=0.0)
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        cfg = compose("train", overrides=PARITY + ["model.box_head.score_thresh=0.0"])
    ours = build_detector(cfg, num_classes=90)
    return ref, ours


def test_r50_fpn_state_dict_matches_torchvision(pair):
    ref, ours = pair
    a = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert a == b


def test_r50_fpn_same_weights_same_detections(pair):
    ref, ours = pair
    ours.load_state_dict(ref.state_dict())
    ref.eval()
    ours.eval()
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 120, 160, generator=g), torch.rand(3, 96, 96, generator=g)]
    with torch.inference_mode():
        out_ref, out_ours = ref(images), ours(images)
    for r, o in zip(out_ref, out_ours):
        assert len(r["boxes"]) > 0
        torch.testing.assert_close(o["boxes"], r["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["scores"], r["scores"], atol=1e-4, rtol=0)
        assert torch.equal(o["labels"], r["labels"])


def test_default_detector_trains_one_step():
    cfg = compose_cfg("train", ["dataset.image_size=64"])
    model = build_detector(cfg, num_classes=3)
    model.train()
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])}]
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                           "loss_rpn_box_reg"}
    sum(losses.values()).backward()


def test_anchor_levels_must_match_the_backbone():
    cfg = compose_cfg("train")
    cfg.anchors.sizes = [[32, 64, 128]]
    with pytest.raises(ConfigError, match="anchors=fpn_small defines 1 feature map"):
        build_detector(cfg, num_classes=3)


def test_unknown_backbone_and_model_are_named():
    with pytest.raises(ConfigError, match="backbone=vgg99"):
        build_backbone("vgg99", None, 5, "bn", 256)
    cfg = compose_cfg("train")
    cfg.model.name = "yolo"
    with pytest.raises(ConfigError, match="model=yolo"):
        build_detector(cfg, num_classes=3)


def test_backbone_weights_from_a_local_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(5)
    trunk = resnet18()
    torch.save(trunk.state_dict(), tmp_path / "r18.pt")
    spec = build_backbone("r18_fpn", str(tmp_path / "r18.pt"), 5, "bn", 64)
    torch.testing.assert_close(spec.module.body.conv1.weight, trunk.conv1.weight)


def test_backbone_weights_name_that_is_neither_file_nor_enum():
    with pytest.raises(ConfigError, match="neither an existing file nor a torchvision"):
        build_backbone("r18_fpn", "nope.pt", 5, "bn", 64)


def test_frozen_stages_do_not_require_grad():
    spec = build_backbone("r18_fpn", None, 2, "frozen_bn", 64)
    body = spec.module.body
    assert not body.conv1.weight.requires_grad and not body.layer2[0].conv1.weight.requires_grad
    assert body.layer3[0].conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad
