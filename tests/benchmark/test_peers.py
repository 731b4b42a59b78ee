"""The bare torchvision peer is the same network as ours: same weights, same detections."""

from __future__ import annotations

import re

import pytest
import torch

from rcnn_cli.benchmark.peers import BareTrainer, bare_detect, bare_faster_rcnn
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector
from tests.conftest import compose_cfg


def test_bare_peer_loads_our_weights_and_detects_the_same():
    cfg = compose_cfg("train", ["model.box_head.score_thresh=0.0"])
    torch.manual_seed(0)
    ours = build_detector(cfg, 3).eval()
    bare = bare_faster_rcnn(cfg, 3).eval()
    bare.load_state_dict(ours.state_dict())
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    with torch.inference_mode():
        ref = ours(images)
    got = bare_detect(bare, images)
    for a, b in zip(ref, got):
        assert len(a["boxes"]) > 0
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"])


def test_bare_trainer_steps_and_splits_its_time():
    cfg = compose_cfg("train", ["dataset.image_size=64"])
    ours = build_detector(cfg, 3)
    bare = BareTrainer(cfg, 3, ours.state_dict())
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    times: dict = {}
    before = [p.detach().clone() for p in bare.model.parameters()]
    loss = bare.step(images, targets, times)
    assert loss > 0 and set(times) == {"forward", "backward", "optimizer"}
    assert any(not torch.equal(a, p) for a, p in zip(before, bare.model.parameters()))


def test_unsupported_peer_is_named():
    with pytest.raises(ConfigError, match="model=mask"):
        bare_faster_rcnn(compose_cfg("train", ["model=mask"]), 3)


def test_unsupported_norm_is_named():
    with pytest.raises(ConfigError, match=re.escape("backbone.norm=bn|frozen_bn; got gn")):
        bare_faster_rcnn(compose_cfg("train", ["backbone.norm=gn"]), 3)
