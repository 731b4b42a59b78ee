"""R-CNN region warping: 16 px of context, the CNN's input size, zeros outside the image."""

from __future__ import annotations

import pytest
import torch

from rcnn_cli.modeling.region.warp import context_boxes, warp_regions

INTERIOR, RING, OUTSIDE = 1.0, 2.0, 3.0


def ringed_image(box: tuple[int, int, int, int], ring_x: int, ring_y: int, size=(3, 400, 500)):
    """Image = OUTSIDE, a RING of ring_x / ring_y px around ``box``, INTERIOR inside the box."""
    image = torch.full(size, OUTSIDE)
    x1, y1, x2, y2 = box
    image[:, y1 - ring_y:y2 + ring_y, x1 - ring_x:x2 + ring_x] = RING
    image[:, y1:y2, x1:x2] = INTERIOR
    return image


@pytest.mark.parametrize("out_size", [227, 224])  # AlexNet, VGG16
def test_warped_crop_has_the_input_size_and_exactly_16px_of_context(out_size: int):
    side = out_size - 2 * 16  # the box maps 1:1 onto the crop's centre
    box = (100, 80, 100 + side, 80 + side)
    image = ringed_image(box, 16, 16)
    crop = warp_regions(image, torch.tensor([box], dtype=torch.float32), out_size)
    assert crop.shape == (1, 3, out_size, out_size)
    crop = crop[0]
    assert torch.all(crop[:, 16:-16, 16:-16] == INTERIOR)
    border = torch.ones(out_size, out_size, dtype=torch.bool)
    border[16:-16, 16:-16] = False
    assert torch.all(crop[:, border] == RING)  # the whole 16 px frame is context ...
    assert not torch.any(crop == OUTSIDE)  # ... and nothing beyond it


def test_warp_is_anisotropic_with_16px_of_context_on_each_axis():
    # 390 x 195 box into 227: x shrinks by 2, y keeps its scale; a 32 px / 16 px ring in the
    # image becomes 16 px on both axes of the crop.
    box = (50, 100, 440, 295)
    image = ringed_image(box, 32, 16)
    crop = warp_regions(image, torch.tensor([box], dtype=torch.float32), 227)[0, 0]
    assert torch.all(crop[16:-16, 16:-16] == INTERIOR)
    assert torch.all(crop[:16] == RING) and torch.all(crop[-16:] == RING)
    assert torch.all(crop[:, :16] == RING) and torch.all(crop[:, -16:] == RING)


def test_context_outside_the_image_is_zero():
    image = torch.ones(3, 300, 300)
    crop = warp_regions(image, torch.tensor([[0.0, 0.0, 195.0, 195.0]]), 227)[0]
    assert torch.all(crop[:, :16, :] == 0) and torch.all(crop[:, :, :16] == 0)
    assert torch.all(crop[:, 16:, 16:] == 1)


def test_context_boxes_dilates_about_the_centre():
    boxes = torch.tensor([[10.0, 20.0, 205.0, 410.0]])  # 195 x 390
    dilated = context_boxes(boxes, 227, 16)
    assert torch.allclose(dilated, torch.tensor([[-6.0, -12.0, 221.0, 442.0]]))
    assert torch.equal(context_boxes(boxes, 227, 0), boxes)
    with pytest.raises(ValueError, match="context=120"):
        context_boxes(boxes, 227, 120)


def test_no_boxes_and_degenerate_boxes_do_not_crash():
    image = torch.rand(3, 50, 60)
    assert warp_regions(image, torch.zeros(0, 4), 227).shape == (0, 3, 227, 227)
    boxes = torch.tensor([[10.0, 10.0, 10.0, 10.0], [5.0, 5.0, 5.0, 30.0]])
    crops = warp_regions(image, boxes, 224)
    assert crops.shape == (2, 3, 224, 224) and torch.isfinite(crops).all()
    # A point box samples one image point: bilinear between the four pixels around (10, 10).
    assert torch.allclose(crops[0], image[:, 9:11, 9:11].mean((1, 2))[:, None, None].expand(3, 224, 224))
