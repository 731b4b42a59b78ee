"""Test-time augmentation: one identity view reproduces plain evaluation; views map back."""

from __future__ import annotations

import pytest
import torch

from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.errors import ConfigError
from rcnn_cli.evaluation.build import DetectionEvaluator
from rcnn_cli.evaluation.inference import predict
from rcnn_cli.evaluation.tta import TTADetector, fuse, mirror, wrap
from rcnn_cli.modeling.build import build_detector
from tests.conftest import TINY, compose_cfg


@pytest.fixture(scope="module")
def setup():
    cfg = compose_cfg("train", [*TINY, "model.box_head.score_thresh=0.0"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3).eval()
    view = build_dataset(cfg.dataset, "val", train=False)
    return model, view


def test_one_identity_view_reproduces_plain_evaluation(setup):
    model, view = setup
    loader = eval_loader(view, 2, 0)
    ids = list(view.raw.category_ids)
    plain = predict(model, loader, torch.device("cpu"), ids)
    tta = TTADetector(model, [(False, False, None)], "nms", model.roi_heads.nms_thresh,
                      model.roi_heads.detections_per_img)
    merged = predict(tta, loader, torch.device("cpu"), ids)
    assert len(plain) > 50 and plain == merged
    gt = view.raw.coco_gt()
    assert DetectionEvaluator(gt).evaluate(plain) == DetectionEvaluator(gt).evaluate(merged)


def test_a_view_at_the_models_own_scale_is_the_plain_view(setup):
    model, view = setup
    images = [view[(0, 0)][0]]
    size = model.transform.min_size[-1]
    own = TTADetector(model, [(False, False, size)], "nms", 0.5, 100)
    with torch.no_grad():
        a, b = model(images)[0], own.run_view(images, False, False, size)[0]
    assert torch.equal(a["boxes"], b["boxes"])
    assert model.transform.min_size == (64,)  # restored


@pytest.mark.parametrize(("hflip", "vflip"), [(True, False), (False, True), (True, True)])
def test_flip_views_map_boxes_back(setup, hflip, vflip):
    model, view = setup
    image = view[(1, 0)][0]
    dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
    flipped = image.flip(dims)
    # the flip view of the flipped image runs the model on the original image: its boxes,
    # mapped back, are the original image's boxes flipped into the flipped image
    with torch.no_grad():
        got = TTADetector(model, [], "nms", 0.5, 100).run_view([flipped], hflip, vflip, None)[0]
        plain = model([image])[0]
    assert len(plain["boxes"]) > 0
    expected = plain
    for dim in dims:
        expected = mirror(expected, tuple(image.shape[-2:]), dim)
    assert torch.allclose(got["boxes"], expected["boxes"], atol=1e-4)
    assert torch.equal(got["scores"], plain["scores"])


def test_mirror_along_either_side():
    b = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    assert torch.equal(mirror(mirror({"boxes": b}, (30, 20)), (30, 20))["boxes"], b)
    assert torch.equal(mirror({"boxes": b}, (30, 20))["boxes"], torch.tensor([[15.0, 2, 19, 9]]))
    assert torch.equal(mirror({"boxes": b}, (30, 20), -2)["boxes"],
                       torch.tensor([[1.0, 21, 5, 28]]))
    masks = torch.zeros(1, 1, 4, 3)
    masks[..., 0, 2] = 1
    out = mirror({"boxes": b, "masks": masks}, (4, 3), -2)
    assert out["masks"][0, 0, 3, 2] == 1 and out["masks"].sum() == 1


def test_weighted_box_fusion():
    cat = {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]),
           "scores": torch.tensor([0.9, 0.3, 0.6]), "labels": torch.tensor([1, 1, 1])}
    out = fuse(cat, iou=0.5, views=2, top=10)
    assert torch.allclose(out["boxes"][0], torch.tensor([0.25, 0, 10.25, 10]))
    assert torch.allclose(out["scores"], torch.tensor([0.6, 0.3]))  # mean 0.6; 0.6 * 1/2
    other = {**cat, "labels": torch.tensor([1, 2, 1])}  # fusion is per class
    assert len(fuse(other, 0.5, 2, 10)["boxes"]) == 3


def test_bad_combinations_are_refused(setup):
    model, _ = setup
    assert wrap(model, "none", [], "nms", 0.5, False) is model
    with pytest.raises(ConfigError, match="eval.tta_scales"):
        wrap(model, "scales", [], "nms", 0.5, False)
    with pytest.raises(ConfigError, match="wbf"):
        wrap(model, "flip", [], "wbf", 0.5, True)
    assert len(wrap(model, "scales", [48, 64, 96], "wbf", 0.5, False).views) == 3
    assert wrap(model, "flips", [], "nms", 0.5, True).views == [
        (False, False, None), (True, False, None), (False, True, None), (True, True, None)]
