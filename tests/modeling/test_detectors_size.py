"""model=detectors R50 against DetectoRS HTC-R50 as mmdetection publishes it.

No published parameter count was found (the DetectoRS README, metafile and paper tables give AP,
memory and speed only), so the reference is counted here, layer by layer, from mmdetection's
published config ``configs/detectors/detectors_htc-r50_1x_coco.py`` (on ``htc_r50_fpn_1x_coco``:
80 COCO classes, 183 COCO-stuff semantic classes) and its modules (``DetectoRS_ResNet`` with
``SAC(use_deform=True)`` in res3-res5, ``RFP`` with ``rfp_steps=2``, ``aspp_out_channels=64``,
``HTCMaskHead``, ``FusedSemanticHead``). It does not use our code.
"""

from __future__ import annotations

from tests.conftest import compose_cfg


def conv(i: int, o: int, k: int = 1, bias: bool = True) -> int:
    return i * o * k * k + (o if bias else 0)


def mmdet_detectors_htc_r50() -> int:
    resnet50_without_fc = 25_557_032 - (2048 * 1000 + 1000)
    sac = sum(n * (c * c * 9 + conv(c, 1) + conv(c, c) + conv(c, c) + 2 * conv(c, 18, 3))
              for n, c in ((4, 128), (6, 256), (3, 512)))  # weight_diff, switch, contexts, offsets
    backbones = 2 * (resnet50_without_fc + sac)  # the first pass and the RFP's second ResNet
    rfp_convs = sum(conv(256, c) for c in (512, 1024, 2048))
    fpn = sum(conv(c, 256) for c in (256, 512, 1024, 2048)) + 4 * conv(256, 256, 3)
    aspp = 2 * conv(256, 64) + 2 * conv(256, 64, 3) + conv(256, 1)  # + the fusion weight
    rpn = conv(256, 256, 3) + conv(256, 3) + conv(256, 12)
    box = 3 * (conv(256 * 49, 1024) + conv(1024, 1024) + conv(1024, 81) + conv(1024, 4))
    mask = 3 * (4 * conv(256, 256, 3) + conv(256, 256, 2) + conv(256, 80)) + 2 * conv(256, 256)
    semantic = 5 * conv(256, 256) + 4 * conv(256, 256, 3) + conv(256, 256) + conv(256, 183)
    return backbones + rfp_convs + fpn + aspp + rpn + box + mask + semantic


def test_detectors_r50_parameter_count_is_within_2_percent():
    from rcnn_cli.modeling.build import build_detector

    cfg = compose_cfg("train", ["experiment=detectors_r50_fpn", "backbone.weights=null"])
    ours = sum(p.numel() for p in build_detector(cfg, num_classes=80).parameters())
    reference = mmdet_detectors_htc_r50()
    assert abs(ours - reference) / reference < 0.02, (ours, reference)
