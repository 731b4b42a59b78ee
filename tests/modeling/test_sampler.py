"""Sampler rules on hand-made boxes (Faster R-CNN §3.1.2-3.1.3; Fast R-CNN §2.3)."""

from __future__ import annotations

import pytest
import torch

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector
from rcnn_cli.modeling.sampler import (
    RangeMatcher,
    build_balanced_sampler,
    build_rpn_matcher,
    label_anchors,
)
from tests.conftest import compose_cfg

T = torch.tensor
GT = T([[0.0, 0.0, 10.0, 10.0],       # g0
        [100.0, 100.0, 110.0, 110.0],  # g1: no anchor reaches IoU 0.7
        [190.0, 0.0, 200.0, 10.0]])   # g2: at the right border of a 200 x 200 image
ANCHORS = T([[0.0, 0.0, 10.0, 10.0],     # a0: IoU 1 with g0 -> fg
             [0.0, 0.0, 10.0, 20.0],     # a1: IoU 0.5 -> between 0.3 and 0.7: ignored
             [0.0, 0.0, 10.0, 40.0],     # a2: IoU 0.25 -> bg
             [50.0, 50.0, 60.0, 60.0],   # a3: IoU 0 -> bg
             [100.0, 100.0, 110.0, 130.0],  # a4: IoU 1/3, the best anchor of g1 -> fg
             [-1.0, 0.0, 10.0, 10.0],    # a5: IoU 0.91 with g0 but crosses the left border
             [189.0, 0.0, 201.0, 10.0],  # a6: IoU 0.83 with g2, crosses the right border
             [180.0, 0.0, 200.0, 10.0]])  # a7: IoU 0.5 with g2, inside


def rpn_labels(image_size):
    return label_anchors(build_rpn_matcher(0.7, 0.3), ANCHORS, GT, image_size)


def test_rpn_iou_rules_and_best_anchor_per_gt():
    labels, matched = rpn_labels(None)
    assert labels.tolist() == [1, -1, 0, 0, 1, 1, 1, -1]
    assert torch.equal(matched[4], GT[1])  # positive only through the best-anchor rule
    assert torch.equal(matched[6], GT[2])


def test_rpn_border_crossing_anchors_are_ignored_and_not_best_anchors():
    labels, matched = rpn_labels((200, 200))
    # a5, a6 cross the border: ignored; a7 becomes g2's best anchor inside the image.
    assert labels.tolist() == [1, -1, 0, 0, 1, -1, -1, 1]
    assert torch.equal(matched[7], GT[2])


def test_rpn_without_ground_truth_is_all_background():
    labels, _ = label_anchors(build_rpn_matcher(0.7, 0.3), ANCHORS, torch.zeros(0, 4), None)
    assert labels.tolist() == [0] * len(ANCHORS)


def test_border_rule_reaches_the_rpn_of_the_paper_preset():
    paper = build_detector(compose_cfg("train", ["sampler=paper"]), num_classes=3)
    tv = build_detector(compose_cfg("train", ["sampler=torchvision"]), num_classes=3)
    assert paper.rpn.ignore_border and not tv.rpn.ignore_border
    paper.rpn._image_sizes = [(200, 200)]
    labels, _ = paper.rpn.assign_targets_to_anchors([ANCHORS], [{"boxes": GT}])
    assert labels[0].tolist() == [1, -1, 0, 0, 1, -1, -1, 1]


@pytest.mark.parametrize(("n_pos", "n_neg", "batch", "fraction", "want_pos", "want_neg"), [
    (200, 1000, 256, 0.5, 128, 128),   # enough of both: exactly the fraction
    (10, 1000, 256, 0.5, 10, 246),     # few positives: negatives fill the batch
    (100, 20, 256, 0.5, 100, 20),      # few of both: everything is taken
    (100, 1000, 64, 0.25, 16, 48),     # the paper's RoI minibatch: 25 % of 64 per image
])
def test_balanced_sampler_counts(n_pos, n_neg, batch, fraction, want_pos, want_neg):
    labels = torch.cat([torch.ones(n_pos), torch.zeros(n_neg), -torch.ones(30)])
    torch.manual_seed(0)
    pos, neg = build_balanced_sampler("rpn", batch, fraction)([labels])
    assert int(pos[0].sum()) == want_pos and int(neg[0].sum()) == want_neg
    assert bool((labels[pos[0].bool()] == 1).all()) and bool((labels[neg[0].bool()] == 0).all())


def test_roi_background_is_the_half_open_range():
    iou = T([[0.05, 0.1, 0.3, 0.49, 0.5, 0.9]])
    fg, bg, ignored = 0, RangeMatcher.BELOW_LOW_THRESHOLD, RangeMatcher.BETWEEN_THRESHOLDS
    assert RangeMatcher(0.5, 0.5, 0.1)(iou).tolist() == [ignored, bg, bg, bg, fg, fg]
    assert RangeMatcher(0.5, 0.5, 0.0)(iou).tolist() == [bg, bg, bg, bg, fg, fg]


def test_roi_range_reaches_the_box_head_labels():
    cfg = compose_cfg("train", ["sampler=paper", "sampler.roi.bg_iou_lo=0.1"])
    heads = build_detector(cfg, num_classes=3).roi_heads
    gt = T([[0.0, 0.0, 10.0, 10.0]])
    proposals = T([[0.0, 0.0, 10.0, 10.0],    # IoU 1    -> class 2
                   [0.0, 0.0, 10.0, 19.0],    # IoU 0.53 -> class 2
                   [0.0, 0.0, 10.0, 25.0],    # IoU 0.4  -> background
                   [0.0, 0.0, 10.0, 200.0],   # IoU 0.05 -> below bg_iou_lo: ignored
                   [50.0, 50.0, 60.0, 60.0]])  # IoU 0    -> ignored
    _, labels = heads.assign_targets_to_proposals([proposals], [gt], [T([2])])
    assert labels[0].tolist() == [2, 2, 0, -1, -1]


def test_inconsistent_thresholds_are_config_errors():
    with pytest.raises(ConfigError, match="sampler.roi"):
        RangeMatcher(0.5, 0.5, 0.6)
    with pytest.raises(ConfigError, match="sampler.rpn"):
        build_rpn_matcher(0.3, 0.7)
    with pytest.raises(ConfigError, match="positive_fraction"):
        build_balanced_sampler("roi", 64, 0.0)
