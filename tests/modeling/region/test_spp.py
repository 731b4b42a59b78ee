"""SPPNet pooling: 50 x C features per box of any size, equal to a direct max-pool."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rcnn_cli.modeling.region.spp import SpatialPyramidPool, project_boxes, spp_bins


def direct_spp(fmap: torch.Tensor, cells: tuple[int, int, int, int], levels) -> torch.Tensor:
    """Max over each bin of the window's cells, by adaptive max pooling of the slice."""
    x1, y1, x2, y2 = cells
    window = fmap[:, y1:y2 + 1, x1:x2 + 1]
    return torch.cat([F.adaptive_max_pool2d(window, n).flatten() for n in levels])


def test_spp_bins():
    assert spp_bins((1, 2, 3, 6)) == 50 and spp_bins((7,)) == 49


def test_a_whole_map_window_pools_by_hand():
    # value = 6y + x on a 6 x 6 map at stride 1: every level's bins are easy to write down.
    fmap = torch.arange(36.0).reshape(1, 1, 6, 6)
    out = SpatialPyramidPool((1, 2, 3, 6), 1.0)(fmap, [torch.tensor([[0.0, 0.0, 6.0, 6.0]])])
    assert out.shape == (1, 50)
    assert out[0, 0] == 35
    assert out[0, 1:5].tolist() == [14, 17, 32, 35]
    assert out[0, 5:14].tolist() == [7, 9, 11, 19, 21, 23, 31, 33, 35]
    assert torch.equal(out[0, 14:], fmap.flatten())


def test_projection_keeps_the_cells_the_window_touches():
    boxes = torch.tensor([[0.0, 0.0, 15.9, 15.9],  # inside cell 0
                          [8.0, 8.0, 40.0, 40.0],  # cells 0..2
                          [50.0, 52.0, 51.0, 53.0],  # 1 px box in cell 3
                          [-30.0, 70.0, 500.0, 500.0],  # beyond the map: clipped
                          [20.0, 20.0, 20.0, 20.0]])  # zero-size: one cell
    cells = project_boxes(boxes, 1 / 16, height=5, width=7)
    assert cells.tolist() == [[0, 0, 0, 0], [0, 0, 2, 2], [3, 3, 3, 3], [0, 4, 6, 4],
                              [1, 1, 1, 1]]


def test_every_box_size_gives_50_x_c_and_matches_direct_max_pooling():
    torch.manual_seed(0)
    levels, stride = (1, 2, 3, 6), 16
    fmaps = torch.randn(2, 5, 9, 13)
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 3.0], [10.0, 20.0, 200.0, 140.0],
                           [33.0, 17.0, 90.0, 130.0], [0.0, 0.0, 208.0, 144.0]]),
             torch.tensor([[100.0, 60.0, 101.0, 61.0], [-10.0, -10.0, 300.0, 30.0]])]
    spp = SpatialPyramidPool(levels, 1 / stride)
    out = spp(fmaps, boxes)
    assert out.shape == (6, 50 * 5)
    row = 0
    for i, image_boxes in enumerate(boxes):
        cells = project_boxes(image_boxes, 1 / stride, 9, 13).long().tolist()
        for c in cells:
            expected = torch.cat([direct_spp(fmaps[i], c, (n,)) for n in levels])
            assert torch.equal(out[row], expected), (i, c)
            row += 1


def test_layout_is_level_then_channel_then_bin():
    fmap = torch.stack([torch.zeros(4, 4), torch.ones(4, 4)])[None]  # channel 1 is all ones
    out = SpatialPyramidPool((1, 2), 1.0)(fmap, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])])[0]
    assert out.tolist() == [0, 1] + [0] * 4 + [1] * 4


def test_no_boxes_gives_an_empty_batch_and_gradients_flow():
    spp = SpatialPyramidPool()
    fmap = torch.randn(1, 3, 4, 4, requires_grad=True)
    assert spp(fmap, [torch.zeros(0, 4)]).shape == (0, 150)
    spp(fmap, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])]).sum().backward()
    assert fmap.grad is not None and fmap.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="levels"):
        SpatialPyramidPool((), 1.0)
