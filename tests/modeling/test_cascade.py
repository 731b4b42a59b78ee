"""Cascade R-CNN (Cai & Vasconcelos 2018): stages, IoU thresholds, loss weights, test scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import clip_boxes_to_image

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector
from tests.conftest import compose_cfg

T = torch.tensor
PROPOSALS = [T([[4.0, 4.0, 30.0, 30.0], [10.0, 12.0, 50.0, 40.0], [0.0, 0.0, 63.0, 63.0],
                [30.0, 30.0, 60.0, 62.0], [20.0, 5.0, 35.0, 25.0]])]
SHAPES = [(64, 64)]


def cascade(*overrides: str):
    torch.manual_seed(0)
    cfg = compose_cfg("train", ["model=cascade", "dataset.image_size=64", *overrides])
    model = build_detector(cfg, num_classes=3)
    features = model.backbone(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    return model.roi_heads, features


def test_three_stages_with_rising_iou_thresholds_and_their_own_weights():
    heads, _ = cascade()
    assert len(heads.stages) == 3
    assert heads.iou_thresholds == [0.5, 0.6, 0.7]
    assert [(m.high_threshold, m.low_threshold) for m in heads.matchers] == [
        (0.5, 0.5), (0.6, 0.6), (0.7, 0.7)]
    assert heads.stage_loss_weights == [1.0, 0.5, 0.25]
    assert [c.weights for c in heads.box_coders] == [
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]
    # Separate heads, class-agnostic regression (4 deltas per RoI).
    assert heads.stages[0].head is not heads.stages[1].head
    assert all(s.predictor.bbox_pred.out_features == 4 for s in heads.stages)
    assert all(s.predictor.cls_score.out_features == 4 for s in heads.stages)


def test_each_stage_labels_at_its_own_iou():
    heads, _ = cascade()
    gt = {"boxes": T([[0.0, 0.0, 20.0, 20.0]]), "labels": T([2])}
    props = [T([[0.0, 0.0, 20.0, 36.0],    # IoU 0.556
                [0.0, 0.0, 20.0, 30.0],    # IoU 0.667
                [40.0, 40.0, 60.0, 60.0]])]  # IoU 0
    for t, want in enumerate([[2, 2, 0, 2], [0, 2, 0, 2], [0, 0, 0, 2]]):
        boxes, labels, _, _ = heads.sample(t, props, [gt])
        got = {tuple(b.tolist()): int(lab) for b, lab in zip(boxes[0], labels[0])}
        # The ground-truth box is added to every stage's candidates (the last entry).
        expected = {tuple(b.tolist()): w for b, w in zip(torch.cat([props[0], gt["boxes"]]), want)}
        assert got == expected


def test_test_scores_are_the_mean_of_the_stage_scores():
    heads, feats = cascade()
    heads.eval()
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = -1.0, 1.0, 1000
    # Each stage scores the boxes the previous stage regressed, with its own box coder.
    coders = [BoxCoder(w) for w in [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                    (30.0, 30.0, 15.0, 15.0)]]
    boxes, probs = PROPOSALS, []
    with torch.no_grad():
        for stage, coder in zip(heads.stages, coders):
            logits, deltas = stage.predictor(stage.head(heads.box_roi_pool(feats, boxes, SHAPES)))
            probs.append(F.softmax(logits, -1))
            boxes = [clip_boxes_to_image(coder.decode_single(deltas, boxes[0]), SHAPES[0])]
        (result,), _ = heads(feats, PROPOSALS, SHAPES)
    mean = torch.stack(probs).mean(0)
    assert not torch.allclose(mean, probs[-1])
    torch.testing.assert_close(result["scores"].sort().values, mean[:, 1:].flatten().sort().values)
    for box, score, label in zip(result["boxes"], result["scores"], result["labels"]):
        i = int((boxes[0] - box).abs().sum(1).argmin())  # the last stage's box
        torch.testing.assert_close(boxes[0][i], box)
        torch.testing.assert_close(mean[i, label], score)


def test_stage_losses_are_weighted_1_05_025():
    targets = [{"boxes": T([[4.0, 4.0, 30.0, 34.0], [30.0, 30.0, 60.0, 60.0]]),
                "labels": T([1, 3])}]

    def losses(weights: str):
        heads, feats = cascade(f"model.cascade.stage_loss_weights={weights}")
        heads.train()
        torch.manual_seed(3)
        return heads(feats, PROPOSALS, SHAPES, targets)[1]

    weighted, plain = losses("[1.0,0.5,0.25]"), losses("[1.0,1.0,1.0]")
    assert set(weighted) == {f"loss_{k}_stage{t}" for k in ("classifier", "box_reg")
                             for t in (1, 2, 3)}
    for t, w in zip((1, 2, 3), (1.0, 0.5, 0.25)):
        for k in ("classifier", "box_reg"):
            torch.testing.assert_close(weighted[f"loss_{k}_stage{t}"],
                                       w * plain[f"loss_{k}_stage{t}"])
    assert plain["loss_box_reg_stage3"] > 0


def test_stage_lists_must_agree():
    with pytest.raises(ConfigError, match="model.cascade"):
        cascade("model.cascade.iou_thresholds=[0.5,0.6]")


MASKS = torch.zeros(2, 64, 64, dtype=torch.uint8)
MASKS[0, 4:34, 4:30] = 1
MASKS[1, 30:60, 30:60] = 1
MASK_TARGETS = [{"boxes": T([[4.0, 4.0, 30.0, 34.0], [30.0, 30.0, 60.0, 60.0]]),
                 "labels": T([1, 3]), "masks": MASKS}]


def test_per_stage_masks_have_their_own_heads_and_the_stage_loss_weights():
    def losses(weights: str):
        heads, feats = cascade("model=cascade_mask", "model.cascade.stage_masks=true",
                               f"model.cascade.stage_loss_weights={weights}")
        heads.train()
        torch.manual_seed(3)
        return heads, heads(feats, PROPOSALS, SHAPES, MASK_TARGETS)[1]

    heads, weighted = losses("[1.0,0.5,0.25]")
    _, plain = losses("[1.0,1.0,1.0]")
    assert len(heads.mask_stages) == 3 and heads.mask_head is None
    assert heads.mask_stages[0].head is not heads.mask_stages[2].head
    assert "loss_mask" not in weighted
    for t, w in zip((1, 2, 3), (1.0, 0.5, 0.25)):
        assert plain[f"loss_mask_stage{t}"] > 0
        torch.testing.assert_close(weighted[f"loss_mask_stage{t}"], w * plain[f"loss_mask_stage{t}"])


def test_last_stage_mask_branch_stays_available():
    heads, feats = cascade("model=cascade_mask")
    assert heads.mask_stages is None and heads.mask_head is not None
    heads.train()
    losses = heads(feats, PROPOSALS, SHAPES, MASK_TARGETS)[1]
    assert "loss_mask" in losses and not any(k.startswith("loss_mask_stage") for k in losses)


def test_per_stage_test_masks_are_the_mean_of_the_stage_probabilities():
    heads, feats = cascade("model=cascade_mask", "model.cascade.stage_masks=true")
    heads.eval()
    with torch.no_grad():
        (result,), _ = heads(feats, PROPOSALS, SHAPES)
        x = heads.mask_roi_pool(feats, [result["boxes"]], SHAPES)
        idx = torch.arange(len(result["labels"]))
        probs = [s(x)[idx, result["labels"]].sigmoid()[:, None] for s in heads.mask_stages]
    assert len(result["masks"])
    assert not torch.allclose(probs[0], probs[2])
    torch.testing.assert_close(result["masks"], torch.stack(probs).mean(0))
