"""Anchor presets, checked on the boxes themselves (Faster R-CNN §3.1.1; FPN §4.1)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.anchors import build_anchor_generator
from tests.conftest import compose_cfg


def anchors_for(cfg_anchors, strides: list[int], image: int = 128) -> list[torch.Tensor]:
    """Anchors of one ``image`` x ``image`` image, one tensor per feature map."""
    names = [str(i) for i in range(len(strides))]
    gen = build_anchor_generator(cfg_anchors.name, cfg_anchors.sizes, cfg_anchors.aspect_ratios,
                                 names, "test")
    images = ImageList(torch.zeros(1, 3, image, image), [(image, image)])
    feats = [torch.zeros(1, 8, image // s, image // s) for s in strides]
    per_level = [f.shape[-2] * f.shape[-1] * n
                 for f, n in zip(feats, gen.num_anchors_per_location())]
    return list(gen(images, feats)[0].split(per_level)), gen


def shapes(boxes: torch.Tensor) -> set[tuple[int, int]]:
    wh = (boxes[:, 2:] - boxes[:, :2]).round().int().tolist()
    return {tuple(x) for x in wh}


def rounded(size: int, ratio: float) -> tuple[int, int]:
    """Width and height of a ``size``-anchor with ratio h/w (half-sides rounded to pixels)."""
    return 2 * round(size / ratio**0.5 / 2), 2 * round(size * ratio**0.5 / 2)


def test_paper_anchors_are_nine_per_location_with_the_papers_sizes_and_ratios():
    cfg = compose_cfg("train", ["anchors=paper", "backbone=vgg16"]).anchors
    (level,), gen = anchors_for(cfg, [16], image=64)
    assert gen.num_anchors_per_location() == [9]
    assert level.shape == (4 * 4 * 9, 4)
    first = level[:9]
    # Sizes 128/256/512 (area = size^2) x ratios h/w 1:2, 1:1, 2:1, rounded to whole pixels.
    assert shapes(first) == {(182, 90), (128, 128), (90, 182),
                             (362, 182), (256, 256), (182, 362),
                             (724, 362), (512, 512), (362, 724)}
    centres = (first[:, :2] + first[:, 2:]) / 2
    assert torch.equal(centres, torch.zeros_like(centres))
    # The same 9 boxes slide with stride 16: location (row 1, column 2) is shifted by (32, 16).
    loc = level[(1 * 4 + 2) * 9:(1 * 4 + 2) * 9 + 9]
    assert torch.equal(loc, first + torch.tensor([32.0, 16.0, 32.0, 16.0]))


def test_fpn_anchors_are_one_size_per_level_fifteen_over_the_pyramid():
    cfg = compose_cfg("train", ["anchors=fpn"]).anchors
    strides = [4, 8, 16, 32, 64]
    levels, gen = anchors_for(cfg, strides, image=128)
    assert gen.num_anchors_per_location() == [3] * 5
    all_shapes = set()
    for boxes, stride, size in zip(levels, strides, [32, 64, 128, 256, 512]):
        assert boxes.shape == ((128 // stride) ** 2 * 3, 4)
        level_shapes = shapes(boxes[:3])
        assert level_shapes == {rounded(size, r) for r in (0.5, 1.0, 2.0)}
        for w, h in level_shapes:
            assert w * h == pytest.approx(size * size, rel=0.02)
        all_shapes |= level_shapes
    assert len(all_shapes) == 15
    assert {(32, 32), (46, 22), (22, 46), (512, 512), (724, 362)} <= all_shapes


def test_free_sizes_and_ratios_from_the_command_line():
    cfg = compose_cfg("train", ["anchors=paper", "anchors.sizes=[[20,40]]",
                                "anchors.aspect_ratios=[1.0,4.0]"]).anchors
    (level,), gen = anchors_for(cfg, [16], image=32)
    assert gen.num_anchors_per_location() == [4]
    assert shapes(level[:4]) == {(20, 20), (40, 40), (10, 40), (20, 80)}


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="positive"):
        build_anchor_generator("x", [[0]], [1.0], ["0"], "vgg16")
    with pytest.raises(ConfigError, match="at least one size"):
        build_anchor_generator("x", [[]], [1.0], ["0"], "vgg16")


# --- anchor statistics and anchors=auto ---


def planted(seed: int = 0) -> torch.Tensor:
    """Box shapes around 2 sizes x 3 aspect ratios (h / w), 2% jitter."""
    from rcnn_cli.modeling.anchors import anchor_shapes

    g = torch.Generator().manual_seed(seed)
    base = torch.cat([anchor_shapes([16], [0.5, 1.0, 2.0]), anchor_shapes([64], [0.5, 1.0, 2.0])])
    wh = base.repeat(40, 1)
    return wh * (1 + 0.02 * torch.randn(wh.shape, generator=g, dtype=torch.float64))


def test_fitting_recovers_planted_box_shapes():
    from rcnn_cli.modeling.anchors import fit_anchors

    sizes, ratios = fit_anchors(planted(), levels=2, per_level=3, seed=0)
    assert sizes == [[16], [64]]
    for level in ratios:
        assert sorted(level) == pytest.approx([0.5, 1.0, 2.0], rel=0.05)
    assert fit_anchors(planted(), 2, 3, seed=0) == (sizes, ratios)  # seeded


def test_coverage_of_fitted_and_mismatched_anchors():
    from rcnn_cli.modeling.anchors import anchor_shapes, fit_anchors, uncovered_share

    wh = planted()
    sizes, ratios = fit_anchors(wh, 2, 3, seed=1)
    fitted = torch.cat([anchor_shapes(s, r) for s, r in zip(sizes, ratios)])
    assert uncovered_share(wh, fitted, 0.7) == 0.0
    squares = anchor_shapes([16, 64], [1.0])  # no elongated anchors: those boxes are missed
    assert uncovered_share(wh, squares, 0.7) == pytest.approx(4 / 6, abs=0.02)


def test_auto_anchors_are_stored_so_the_model_is_rebuilt(tmp_path):
    from rcnn_cli.config import typed_train_config
    from rcnn_cli.engine.evaluator import build_trained_model
    from rcnn_cli.engine.train import train
    from tests.conftest import NO_OPTIMIZER_STATE, TINY

    cfg = compose_cfg("train", [*TINY, *NO_OPTIMIZER_STATE, "anchors=auto", "schedule.max_iter=1",
                                "log.images_every=0", "eval.val_loss=false"])
    train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    stored = ckpt["config"]["anchors"]
    assert len(stored["sizes"]) == 5 and len(stored["level_aspect_ratios"]) == 5
    model = build_trained_model(ckpt, typed_train_config(ckpt["config"]), "cpu")
    gen = model.rpn.anchor_generator
    assert gen.sizes == tuple(tuple(s) for s in stored["sizes"])
    assert gen.aspect_ratios == tuple(tuple(r) for r in stored["level_aspect_ratios"])
