"""Detector factory: explicit errors for bad combinations (torchvision parity: test_parity.py)."""

from __future__ import annotations

import pytest
import torch

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.backbones import build_backbone
from rcnn_cli.modeling.build import build_detector
from tests.conftest import compose_cfg


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
