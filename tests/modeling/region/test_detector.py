"""model=rcnn / model=sppnet: refused combinations, warp sizes, the fine-tuning minibatch, the
test-time scoring from the SVM buffers, SPPNet's frozen trunk and fc6 initialisation."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import alexnet, vgg16

from rcnn_cli.config import validate
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector
from rcnn_cli.modeling.region.build import warp_size
from rcnn_cli.modeling.region.cnn import classifier_parts, conv5_trunk, freeze_blocks
from rcnn_cli.modeling.region.rcnn import RCNN
from rcnn_cli.modeling.region.sppnet import SPPNet
from tests.conftest import TINY, compose_cfg

SMALL = ["model.box_head.representation_size=32", "model.warp_size=64", "model.context=5"]


def cfg_for(model: str, *extra: str):
    return compose_cfg("train", TINY + [f"model={model}", "backbone=alexnet",
                                        "proposals=selective_search", f"sampler={model}",
                                        *SMALL, *extra])


@pytest.mark.parametrize("overrides, message", [
    (["model=rcnn", "backbone=alexnet"], "model=rcnn needs external proposals"),
    (["model=sppnet", "backbone=alexnet", "proposals=rpn"], "model=sppnet needs external"),
    (["model=rcnn", "proposals=selective_search"], "backbone=r18_fpn (an FPN backbone)"),
    (["model=rcnn", "proposals=selective_search", "backbone=r50_c4"],
     "backbone=r50_c4 (not a classifier network)"),
    (["model=rcnn", "proposals=selective_search", "backbone=alexnet",
      "schedule=alternating"], "schedule=alternating is for model=faster"),
    (["model=rcnn", "proposals=selective_search", "backbone=alexnet", "model.warp_size=32"],
     "model.warp_size=32: backbone=alexnet needs an input of at least 63"),
])
def test_unsupported_combinations_raise_naming_them(overrides, message):
    cfg = compose_cfg("train", TINY + overrides + ["model.box_head.representation_size=32"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_detector(cfg, 3)


def test_region_keys_are_typed():
    with pytest.raises(ConfigError, match="model.warp_sise"):
        validate(cfg_for("rcnn", "+model.warp_sise=64"))
    with pytest.raises(Exception, match="classifier"):
        cfg_for("sppnet", "model.classifier=linear")
    with pytest.raises(ConfigError, match="model.svm.rouns"):
        validate(cfg_for("rcnn", "+model.svm.rouns=2"))


def test_warp_size_defaults_to_the_papers_input():
    cfg = cfg_for("rcnn", "model.warp_size=null")
    assert warp_size(cfg) == 227
    cfg.backbone.name = "vgg16"
    assert warp_size(cfg) == 224
    cfg.model.warp_size = 96
    assert warp_size(cfg) == 96


def test_rcnn_warps_each_region_to_the_cnn_input():
    torch.manual_seed(0)
    model = build_detector(cfg_for("rcnn"), 3)
    assert isinstance(model, RCNN)
    seen = []
    model.backbone.net.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    model.eval()
    boxes = torch.tensor([[4.0, 4.0, 20.0, 30.0], [10.0, 0.0, 60.0, 12.0], [0, 0, 64, 64]])
    out = model([torch.rand(3, 64, 64)], proposals=[boxes])
    assert seen == [torch.Size([3, 3, 64, 64])]
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_finetuning_minibatch_is_balanced_and_includes_ground_truth():
    model = build_detector(cfg_for("rcnn", "sampler.roi.batch_size_per_image=16"), 3)
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    near = gt + torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    far = torch.tensor([[40.0 + i, 40.0, 60.0, 60.0] for i in range(40)])
    props, labels = model.roi_heads.sample([torch.cat([near, far])],
                                           [{"boxes": gt, "labels": torch.tensor([2])}])
    assert len(labels[0]) == 16
    assert (labels[0] == 2).sum() == 2  # the near proposal and the ground truth itself
    assert (labels[0] == 0).sum() == 14
    assert any(torch.equal(b, gt[0]) for b in props[0])


def test_svm_buffers_score_and_nms_per_class():
    model = build_detector(cfg_for("rcnn"), 2)
    heads = model.roi_heads
    fc7 = torch.tensor([[1.0] + [0.0] * 31, [0.0, 1.0] + [0.0] * 30, [1.0] + [0.0] * 31])
    heads.svm_weight[0, 0], heads.svm_weight[1, 1] = 3.0, 2.0
    heads.svm_bias[:] = -1.0
    scores = heads.class_scores(fc7)
    assert torch.allclose(scores[0], torch.sigmoid(torch.tensor([2.0, -1.0])))
    assert torch.allclose(scores[1], torch.sigmoid(torch.tensor([-1.0, 1.0])))
    pool5 = torch.zeros(3, heads.ridge_weight.shape[1] - 1)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    heads.score_thresh = 0.5
    out = heads(pool5, fc7, [boxes], [(20, 20)])[0]
    # class 1: regions 0 and 2 overlap (IoU 0.82 > 0.3): one kept; class 2: region 1
    assert sorted(out["labels"].tolist()) == [1, 2]
    assert torch.equal(heads.regress(pool5, boxes)[:, 0], boxes)  # zero ridge = no move


def test_sppnet_freezes_conv_and_starts_fc6_from_the_classifier(tmp_path):
    net = alexnet(weights=None, num_classes=4)
    torch.save(net.state_dict(), tmp_path / "alexnet.pt")
    cfg = cfg_for("sppnet", f"backbone.weights={tmp_path / 'alexnet.pt'}",
                  "model.box_head.representation_size=4096")
    model = build_detector(cfg, 3)
    assert isinstance(model, SPPNet)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.roi_heads.fc6.parameters())
    fc6 = model.roi_heads.fc6.weight
    assert fc6.shape == (4096, 256 * 50)
    assert torch.equal(fc6[:, -9216:], net.classifier[1].weight)
    assert not fc6[:, :-9216].any()
    assert torch.equal(model.backbone[0].weight, net.features[0].weight)
    model.train()
    assert not model.backbone.training and model.roi_heads.training


def test_sppnet_finetune_conv_unfreezes_the_top_conv_layers():
    model = build_detector(cfg_for("sppnet", "model.finetune_conv=2",
                                   "model.box_head.representation_size=32"), 3)
    convs = [m for m in model.backbone if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False, False, False, True, True]
    model.train()
    assert model.backbone.training  # a trunk being fine-tuned follows train()
    with pytest.raises(ConfigError, match="model.finetune_conv=6"):
        build_detector(cfg_for("sppnet", "model.finetune_conv=6"), 3)
    with pytest.raises(ConfigError, match="model.finetune_conv=1 is SPPNet's switch"):
        build_detector(cfg_for("rcnn", "model.finetune_conv=1"), 3)


@pytest.mark.parametrize("blocks, trainable_convs", [(0, 0), (1, 3), (2, 6), (5, 13)])
def test_vgg16_blocks_are_counted_with_or_without_pool5(blocks, trainable_convs):
    for features in (vgg16(weights=None).features, conv5_trunk(vgg16(weights=None).features)):
        freeze_blocks(features, blocks, "backbone.trainable_layers")
        convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
        assert sum(c.weight.requires_grad for c in convs) == trainable_convs
        assert all(c.weight.requires_grad for c in convs[len(convs) - trainable_convs:])


def test_classifier_weights_file_must_match(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="shape mismatch"):
        classifier_parts("alexnet", str(tmp_path / "bad.pt"), "none", 4096)
    with pytest.raises(ConfigError, match="representation_size=64"):
        net = alexnet(weights=None)
        torch.save(net.state_dict(), tmp_path / "ok.pt")
        classifier_parts("alexnet", str(tmp_path / "ok.pt"), "none", 64)


@pytest.mark.parametrize("name", ["rcnn_alexnet_shapes", "sppnet_alexnet_shapes"])
def test_shapes_experiments_compose_and_name_a_missing_weights_file(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}",
                                f"backbone.weights={tmp_path / 'missing.pt'}"])
    validate(cfg)
    assert cfg.model.name == name.split("_")[0] and cfg.proposals.name == "selective_search"
    with pytest.raises(ConfigError, match="missing.pt"):
        build_detector(cfg, 3)
