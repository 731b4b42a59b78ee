"""model=fast: the Fast R-CNN minibatch, the multi-task loss, external proposals, config errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector
from rcnn_cli.modeling.fast_rcnn import FastRCNN
from tests.conftest import compose_cfg

FAST = ["model=fast", "proposals=precomputed", "proposals.file=unused.npz",
        "sampler=fast_rcnn", "dataset.image_size=64"]


def fast_model(extra=()):
    torch.manual_seed(0)
    return build_detector(compose_cfg("train", FAST + list(extra)), num_classes=3)


def candidate_proposals(gt: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Jittered copies of the gt boxes (many fg) plus random boxes (bg and ignored)."""
    jitter = gt.repeat(40, 1) + torch.randn(40 * len(gt), 4, generator=g) * 6
    xy = torch.rand(600, 2, generator=g) * size * 0.8
    wh = torch.rand(600, 2, generator=g) * size * 0.5 + 4
    rand = torch.cat([xy, xy + wh], dim=1)
    return torch.cat([jitter, rand]).clamp(0, size)


def test_minibatch_is_128_rois_over_2_images_with_32_fg_and_the_paper_iou_bands():
    model = fast_model()
    heads = model.roi_heads
    g = torch.Generator().manual_seed(0)
    gts = [torch.tensor([[20.0, 20.0, 80.0, 90.0], [120.0, 40.0, 180.0, 100.0]]),
           torch.tensor([[30.0, 110.0, 150.0, 190.0]])]
    targets = [{"boxes": b, "labels": torch.arange(1, len(b) + 1)} for b in gts]
    proposals = [candidate_proposals(b, 200, g) for b in gts]
    for p, b in zip(proposals, gts):  # the candidates cover every band (the test can fail)
        iou = box_iou(b, p).max(dim=0).values
        assert (iou >= 0.5).sum() > 16 and ((iou >= 0.1) & (iou < 0.5)).sum() > 48
        assert (iou < 0.1).sum() > 48
    torch.manual_seed(0)
    sampled, _, labels, _ = heads.select_training_samples(proposals, targets)
    assert [len(s) for s in sampled] == [64, 64]
    assert sum(int((lab > 0).sum()) for lab in labels) == 32
    for s, lab, b in zip(sampled, labels, gts):
        iou = box_iou(b, s).max(dim=0).values
        fg = lab > 0
        assert int(fg.sum()) == 16
        assert (iou[fg] >= 0.5).all()
        assert (iou[~fg] >= 0.1).all() and (iou[~fg] < 0.5).all()


def test_ground_truth_boxes_join_the_proposals_in_training():
    heads = fast_model().roi_heads
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    far = torch.tensor([[100.0, 100.0, 140.0, 140.0]])  # IoU 0: ignored, never background
    torch.manual_seed(0)
    sampled, _, labels, _ = heads.select_training_samples(
        [far], [{"boxes": gt, "labels": torch.tensor([2])}])
    assert torch.equal(sampled[0], gt) and labels[0].tolist() == [2]


def test_fast_rcnn_trains_and_detects_on_external_proposals():
    model = fast_model(["model.box_head.score_thresh=0.0"])
    assert isinstance(model, FastRCNN) and not hasattr(model, "rpn")
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    boxes = [torch.tensor([[4.0, 4.0, 30.0, 40.0]]), torch.tensor([[10.0, 8.0, 40.0, 30.0]])]
    props = [b + torch.tensor([[1.0, -1.0, 2.0, 1.0]]) for b in boxes]
    targets = [{"boxes": b, "labels": torch.tensor([2]), "proposals": p}
               for b, p in zip(boxes, props)]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.roi_heads.box_head.fc6.weight.grad is not None
    model.eval()
    with torch.inference_mode():
        out = model(images, proposals=props)
    assert len(out) == 2 and all(len(o["boxes"]) > 0 for o in out)
    with pytest.raises(ConfigError, match="needs external proposals"):
        model(images)


@pytest.mark.parametrize("overrides, message", [
    (["model=fast"], "model=fast needs external proposals"),
    (["proposals=selective_search"], "proposals=selective_search is supported with model=fast"),
    (FAST + ["sampler.roi.bg_iou_lo=0.7"], "need 0 <= bg_iou_lo"),
    (FAST + ["model.fast_rcnn.dropout=1.0"], "dropout=1.0"),
])
def test_unsupported_combinations_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_detector(compose_cfg("train", overrides), num_classes=3)


def test_fc6_fc7_start_from_the_pretrained_vgg16_classifier(tmp_path):
    """Fast R-CNN §2.2: fc6/fc7 of the pre-trained VGG16 initialise the head."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    state = vgg16(weights=None, num_classes=4).state_dict()
    path = tmp_path / "vgg16.pt"
    torch.save(state, path)
    common = ["backbone=vgg16", "backbone.norm=none", f"backbone.weights={path}",
              "model.box_head.representation_size=4096", "pooler.output_size=7"]
    model = fast_model([*common, "model.fast_rcnn.fc_init=backbone"])
    head = model.roi_heads.box_head
    assert torch.equal(head.fc6.weight, state["classifier.0.weight"])
    assert torch.equal(head.fc7.bias, state["classifier.3.bias"])
    assert torch.equal(model.backbone.body[0].weight, state["features.0.weight"])
    assert not torch.equal(fast_model(common).roi_heads.box_head.fc6.weight[:4, :4],
                           state["classifier.0.weight"][:4, :4])
    with pytest.raises(ConfigError, match="do not fit the head"):
        fast_model([*common[:3], "model.fast_rcnn.fc_init=backbone"])
    with pytest.raises(ConfigError, match="backbone=r18_fpn has none"):
        fast_model(["model.fast_rcnn.fc_init=backbone"])
