"""torchvision parity: same parameter names and shapes, same detections with the same weights.

Images are small (``min_size`` 224) and the test-time proposal / detection counts low on both
sides to keep the tests fast; the same code paths run at any size and count.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)

from rcnn_cli.modeling.backbones import resolve_weights
from rcnn_cli.modeling.build import build_detector
from tests.conftest import compose_cfg

SIZE = {"min_size": 224, "max_size": 320}
LIMITS = {"rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
          "box_detections_per_img": 30}
OURS = ["~experiment", "sampler=torchvision", "pooler=roi_align", "model.box_head.score_thresh=0.0",
        f"dataset.min_size={SIZE['min_size']}", f"dataset.max_size={SIZE['max_size']}",
        "model.rpn.pre_nms_top_n_test=300", "model.rpn.post_nms_top_n_test=100",
        "model.box_head.detections_per_img=30"]

CASES = {
    "faster_r50_fpn": (fasterrcnn_resnet50_fpn, {},
                       ["model=faster", "backbone=r50_fpn", "anchors=fpn"]),
    "mask_r50_fpn": (maskrcnn_resnet50_fpn, {},
                     ["model=mask", "backbone=r50_fpn", "anchors=fpn"]),
    # torchvision's builder sets rpn_score_thresh=0.05 for this model.
    "faster_mobilenet_v3_fpn": (fasterrcnn_mobilenet_v3_large_fpn, {},
                                ["model=faster", "backbone=mobilenet_v3_fpn",
                                 "anchors=mobilenet_fpn", "model.rpn.score_thresh=0.05"]),
}


def make_pair(case: str):
    builder, kwargs, overrides = CASES[case]
    torch.manual_seed(0)
    ref = builder(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0,
                  **SIZE, **LIMITS, **kwargs)
    ours = build_detector(compose_cfg("train", overrides + OURS), num_classes=90)
    return ref, ours


def images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 120, 160, generator=g), torch.rand(3, 96, 96, generator=g),
            torch.rand(3, 140, 100, generator=g)]


@pytest.mark.parametrize("case", list(CASES))
def test_same_names_shapes_and_detections_as_torchvision(case):
    ref, ours = make_pair(case)
    assert ({k: tuple(v.shape) for k, v in ours.state_dict().items()}
            == {k: tuple(v.shape) for k, v in ref.state_dict().items()})
    ours.load_state_dict(ref.state_dict())
    ref.eval()
    ours.eval()
    with torch.inference_mode():
        out_ref, out_ours = ref(images()), ours(images())
    for r, o in zip(out_ref, out_ours, strict=True):
        assert len(r["boxes"]) > 0
        assert set(o) == set(r)
        torch.testing.assert_close(o["boxes"], r["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["scores"], r["scores"], atol=1e-4, rtol=0)
        assert torch.equal(o["labels"], r["labels"])
        if "masks" in r:
            assert o["masks"].shape == r["masks"].shape
            torch.testing.assert_close(o["masks"], r["masks"], atol=1e-4, rtol=0)


def test_mask_model_has_the_mask_branch_layout():
    ours = build_detector(compose_cfg("train", CASES["mask_r50_fpn"][2] + OURS), num_classes=2)
    heads = ours.roi_heads
    assert heads.mask_roi_pool.output_size == (14, 14)
    assert len(heads.mask_head) == 4
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 3


def test_backbone_weights_name_is_torchvision_enum():
    enum, file = resolve_weights("ResNet50_Weights.IMAGENET1K_V1")
    assert enum is ResNet50_Weights.IMAGENET1K_V1 and file is None
