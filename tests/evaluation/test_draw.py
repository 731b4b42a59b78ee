"""Drawing detections: threshold, masks, ground truth colour, tiling, encoders."""

from __future__ import annotations

import torch

from rcnn_cli.evaluation.draw import (
    GT_COLOUR,
    draw_output,
    draw_target,
    encode,
    grid,
    read_image,
    write_image,
)

CLASSES = ["rectangle", "ellipse", "triangle"]


def _image():
    return torch.full((3, 48, 64), 0.5)


def _output(score: float, masks: bool = False) -> dict:
    out = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2]),
           "scores": torch.tensor([score])}
    if masks:
        m = torch.zeros(1, 1, 48, 64)
        m[0, 0, 22:34, 10:20] = 0.9
        out["masks"] = m
    return out


def test_only_detections_above_the_threshold_are_drawn():
    plain = draw_output(_image(), _output(0.3), CLASSES, score_thresh=0.5)
    assert torch.equal(plain, torch.full((3, 48, 64), 128, dtype=torch.uint8))
    drawn = draw_output(_image(), _output(0.9), CLASSES, score_thresh=0.5)
    assert not torch.equal(drawn, plain) and drawn.dtype == torch.uint8


def test_masks_are_filled_and_scale_enlarges():
    with_mask = draw_output(_image(), _output(0.9, masks=True), CLASSES, 0.5)
    without = draw_output(_image(), _output(0.9), CLASSES, 0.5)
    assert not torch.equal(with_mask[:, 28, 15], without[:, 28, 15])  # inside the mask
    assert torch.equal(with_mask[:, 45, 60], without[:, 45, 60])      # far outside
    assert draw_output(_image(), _output(0.9), CLASSES, 0.5, scale=3).shape == (3, 144, 192)


def test_ground_truth_is_green_and_tiles_pad_to_the_largest():
    tgt = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])}
    gt = draw_target(_image(), tgt, CLASSES)
    green = torch.tensor([int(GT_COLOUR[i:i + 2], 16) for i in (1, 3, 5)], dtype=torch.uint8)
    assert torch.equal(gt[:, 30, 4], green)  # on the left edge of the box
    tiled = grid([gt, gt[:, :20, :20]], ncol=2)
    assert tiled.shape == (3, 2 + 48 + 2, 2 + 2 * (64 + 2))


def test_png_is_lossless_and_jpeg_is_jpeg(tmp_path):
    img = (torch.rand(3, 20, 30) * 255).to(torch.uint8)
    assert torch.equal(read_image(write_image(tmp_path / "a.png", img)), img)
    assert encode(img, ".JPG")[:2] == b"\xff\xd8"
