"""RoIPool vs RoIAlign on a hand-computed map, and FPN level assignment for either."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.poolers import build_pooler

# feature[y, x] = 4y + x: bilinear interpolation of a linear map is exact, so RoIAlign's
# samples can be written down by hand.
FEATURE = {"0": torch.arange(16.0).reshape(1, 1, 4, 4)}
BOX = [torch.tensor([[0.0, 0.0, 3.0, 3.0]])]
IMAGE = [(4, 4)]  # the map has stride 1


def pool(name: str, aligned: bool = False) -> list[list[float]]:
    pooler = build_pooler(name, ["0"], 2, 1, 224, 4, aligned)
    return pooler(FEATURE, BOX, IMAGE)[0, 0].tolist()


def test_roi_pool_quantises_and_takes_the_max_of_each_bin():
    # The box covers cells 0..3 (rounded, end inclusive) = 4 cells, 2 x 2 cells per bin.
    assert pool("roi_pool") == [[5.0, 7.0], [13.0, 15.0]]


@pytest.mark.parametrize("name", ["roi_pool", "roi_align"])
def test_bf16_maps_with_fp32_boxes_pool_as_under_autocast(name):
    """schedule.amp=bf16 on the CPU: the backbone's maps are bf16, the boxes stay fp32."""
    pooler = build_pooler(name, ["0"], 2, 1, 224, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pooler({"0": FEATURE["0"].bfloat16()}, BOX, IMAGE)
    assert out[0, 0].float().tolist() == pool(name)  # the map's values are exact in bf16


def test_roi_align_samples_bilinearly_at_the_bin_centres():
    # Width 3, bins of 1.5: one sample per bin (sampling_ratio=1) at 0.75 and 2.25.
    assert pool("roi_align") == [[3.75, 5.25], [9.75, 11.25]]
    # aligned=True shifts the box by half a pixel: samples at 0.25 and 1.75.
    assert pool("roi_align", aligned=True) == [[1.25, 2.75], [7.25, 8.75]]


def test_roi_pool_rejects_aligned():
    with pytest.raises(ConfigError, match="roi_pool"):
        build_pooler("roi_pool", ["0"], 7, 0, 224, 4, aligned=True)
    with pytest.raises(ConfigError, match="pooler=nearest"):
        build_pooler("nearest", ["0"], 7, 0, 224, 4)


PYRAMID = {str(i): torch.full((1, 1, 512 // s, 512 // s), float(i))
           for i, s in enumerate([4, 8, 16, 32])}


@pytest.mark.parametrize("name", ["roi_pool", "roi_align"])
def test_fpn_level_assignment_k0_4_canonical_224(name):
    pooler = build_pooler(name, list(PYRAMID), 2, 2, 224, 4)
    # sqrt(wh) = 224 -> P4 (index 2); each halving goes one level down, clamped to P2..P5.
    sides = [8, 56, 111, 112, 224, 448, 500]
    boxes = [torch.tensor([[0.0, 0.0, s, s] for s in sides])]
    levels = pooler(PYRAMID, boxes, [(512, 512)])[:, 0, 0, 0].tolist()
    assert levels == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0]


def test_roi_align_matches_torchvision_multiscale_roialign():
    g = torch.Generator().manual_seed(0)
    feats = {str(i): torch.rand(2, 3, 64 // 2**i, 80 // 2**i, generator=g) for i in range(4)}
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 40.0], [0.0, 0.0, 200.0, 250.0]]),
             torch.tensor([[10.0, 10.0, 90.0, 60.0], [5.0, 5.0, 9.0, 9.0]])]
    shapes = [(256, 320), (250, 300)]
    ours = build_pooler("roi_align", list(feats), 7, 2, 224, 4)(feats, boxes, shapes)
    ref = MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, shapes)
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
