"""Hybrid Task Cascade (Chen et al. 2019): switches off == per-stage Cascade Mask R-CNN,
interleaved execution, mask information flow, the semantic branch and its fusion."""

from __future__ import annotations

import pytest
import torch

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector
from rcnn_cli.modeling.htc import FlowMaskStage
from tests.conftest import compose_cfg
from tests.modeling.test_cascade import MASK_TARGETS, PROPOSALS, SHAPES

OFF = ["model.htc.interleaved=false", "model.htc.mask_info_flow=false", "model.htc.semantic=false"]


def heads_of(*overrides: str):
    torch.manual_seed(0)
    cfg = compose_cfg("train", ["dataset.image_size=64", *overrides])
    model = build_detector(cfg, num_classes=3)
    feats = model.backbone(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    return model.roi_heads, {k: v.detach() for k, v in feats.items()}


def losses_of(heads, feats, seed: int = 3):
    heads.train()
    torch.manual_seed(seed)
    return heads(feats, PROPOSALS, SHAPES, MASK_TARGETS)[1]


def test_all_switches_off_is_the_per_stage_cascade_mask_rcnn():
    cascade, feats = heads_of("model=cascade_mask", "model.cascade.stage_masks=true")
    htc, _ = heads_of("model=htc", *OFF)
    htc.load_state_dict(cascade.state_dict())  # strict: the same parameters
    want, got = losses_of(cascade, feats), losses_of(htc, feats)
    assert set(got) == set(want) == {f"loss_{k}_stage{t}" for k in ("classifier", "box_reg", "mask")
                                     for t in (1, 2, 3)}
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_interleaved_mask_heads_train_on_the_boxes_their_box_head_refined(monkeypatch):
    heads, feats = heads_of("model=htc", "model.htc.semantic=false")
    calls = []
    sample = heads.sample

    def recording(t, proposals, targets):
        calls.append((t, [p.clone() for p in proposals]))
        return sample(t, proposals, targets)

    monkeypatch.setattr(heads, "sample", recording)
    losses_of(heads, feats)
    # per stage: the box minibatch, then the mask minibatch drawn from the refined boxes
    assert [t for t, _ in calls] == [0, 0, 1, 1, 2, 2]
    for t in (0, 1):  # the refined boxes are the next stage's input too
        torch.testing.assert_close(calls[2 * t + 1][1], calls[2 * t + 2][1])
        assert not torch.equal(calls[2 * t + 1][1][0][:5], calls[2 * t][1][0][:5])


def test_every_stage_has_a_mask_loss_and_the_flow_trains_stage_one():
    heads, feats = heads_of("model=htc", "model.htc.semantic=false")
    assert [type(s) is FlowMaskStage for s in heads.mask_stages] == [False, True, True]
    losses = losses_of(heads, feats)
    assert all(losses[f"loss_mask_stage{t}"] > 0 for t in (1, 2, 3))
    losses["loss_mask_stage3"].backward()
    first = heads.mask_stages[0].head[0][0].weight.grad
    assert first is not None and first.abs().sum() > 0
    assert heads.mask_stages[1].conv_res.weight.grad.abs().sum() > 0

    plain, feats = heads_of("model=htc", "model.htc.semantic=false",
                            "model.htc.mask_info_flow=false")
    losses_of(plain, feats)["loss_mask_stage3"].backward()
    assert plain.mask_stages[0].head[0][0].weight.grad is None


def test_test_time_masks_run_the_heads_in_sequence():
    heads, feats = heads_of("model=htc", "model.htc.semantic=false")
    heads.eval()
    with torch.no_grad():
        (result,), _ = heads(feats, PROPOSALS, SHAPES)
        x = heads.mask_roi_pool(feats, [result["boxes"]], SHAPES)
        s1, s2, s3 = heads.mask_stages
        f1 = s1.head(x)
        f2 = s2.head(x + s2.conv_res(f1))
        f3 = s3.head(x + s3.conv_res(f2))
        idx = torch.arange(len(result["labels"]))
        probs = [p(f)[idx, result["labels"]].sigmoid()[:, None]
                 for p, f in ((s1.predictor, f1), (s2.predictor, f2), (s3.predictor, f3))]
    assert len(result["masks"])
    torch.testing.assert_close(result["masks"], torch.stack(probs).mean(0))


def test_semantic_loss_and_its_fusion_into_the_roi_features():
    heads, feats = heads_of("model=htc", "model.htc.semantic_loss_weight=0.5")
    losses = losses_of(heads, feats)
    assert losses["loss_semantic"] > 0
    logits, _ = heads.semantic_head(feats)
    from rcnn_cli.modeling.semantic_head import semantic_loss

    torch.testing.assert_close(losses["loss_semantic"],
                               0.5 * semantic_loss(logits, MASK_TARGETS, SHAPES, 8))
    # Fusion: the box and mask losses train the semantic head.
    heads.zero_grad()
    (losses["loss_classifier_stage1"] + losses["loss_mask_stage1"]).backward()
    assert heads.semantic_head.embedding.weight.grad.abs().sum() > 0
    # With the semantic features at zero the box head sees the plain RoI features.
    nn_ = torch.nn
    nn_.init.zeros_(heads.semantic_head.embedding.weight)
    nn_.init.zeros_(heads.semantic_head.embedding.bias)
    heads.eval()
    with torch.no_grad():
        _, semantic = heads.semantic_head(feats)
        fused = heads.run_stage(0, {**feats, "semantic": semantic}, PROPOSALS, SHAPES)
        stage = heads.stages[0]
        plain = stage.predictor(stage.head(heads.box_roi_pool(feats, PROPOSALS, SHAPES)))
        nn_.init.ones_(heads.semantic_head.embedding.bias)
        _, semantic = heads.semantic_head(feats)
        shifted = heads.run_stage(0, {**feats, "semantic": semantic}, PROPOSALS, SHAPES)
    torch.testing.assert_close(fused, plain)
    assert not torch.allclose(shifted[0], plain[0])


def test_htc_refuses_single_level_backbones_for_the_semantic_branch():
    with pytest.raises(ConfigError, match="semantic_fusion_level"):
        heads_of("model=htc", "backbone=r50_c4", "anchors=paper_small")


def test_detectors_needs_its_backbone_switches():
    with pytest.raises(ConfigError, match="backbone.sac=true"):
        heads_of("model=detectors")
