"""Recursive Feature Pyramid (DetectoRS §3) and loading ImageNet ResNet weights into the
DetectoRS backbones."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.backbones import build_backbone

X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def seeded_weights(tmp_path, arch=resnet18):
    torch.manual_seed(5)
    net = arch()
    for m in net.modules():  # non-trivial BatchNorm statistics, as in a trained network
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_mean, -0.1, 0.1)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
    path = tmp_path / "resnet.pt"
    torch.save(net.state_dict(), path)
    return str(path)


def pair(weights: str, name: str = "r18_fpn", **switches):
    plain = build_backbone(name, weights, 5, "bn", 64).module.eval()
    other = build_backbone(name, weights, 5, "bn", 64, **switches).module.eval()
    other.fpn.load_state_dict(plain.fpn.state_dict())
    return plain, other


def close(a: dict, b: dict, tol: float = 1e-5):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=tol)


def test_zero_initialised_feedback_is_the_plain_fpn(tmp_path):
    plain, rfp = pair(seeded_weights(tmp_path), rfp_steps=2)
    with torch.no_grad():
        want = plain(X)
        close(rfp.fpn(rfp.body(X)), want)  # the first pass
        close(rfp(X), want)  # the second pass: same ResNet, no feedback yet, weight 1/2 each


def test_the_passes_are_fused_with_the_learned_weight(tmp_path):
    plain, rfp = pair(seeded_weights(tmp_path), rfp_steps=2)
    with torch.no_grad():
        for m in rfp.rfp_bodies[0].layer4.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.mul_(1.5)
        first = plain(X)
        second = rfp.fpn(rfp.rfp_bodies[0](X))  # zero feedback: the plain second ResNet
        close(rfp(X), {k: 0.5 * first[k] + 0.5 * second[k] for k in first})
        assert not torch.allclose(second["3"], first["3"])


def test_feedback_enters_res3_to_res5_and_trains_the_aspp(tmp_path):
    plain, rfp = pair(seeded_weights(tmp_path), rfp_steps=2)
    body = rfp.rfp_bodies[0]
    assert not hasattr(body.layer1[0], "rfp_conv") and not hasattr(body.layer2[1], "rfp_conv")
    for name in ("layer2", "layer3", "layer4"):
        nn.init.normal_(getattr(body, name)[0].rfp_conv.weight, std=0.01)
    out = rfp(X)
    assert not torch.allclose(out["0"], plain(X)["0"])
    sum(v.sum() for v in out.values()).backward()
    assert rfp.rfp_aspp.branches[2].weight.grad.abs().sum() > 0
    assert rfp.rfp_aspp.image_pool.weight.grad.abs().sum() > 0


def test_imagenet_resnet50_weights_load_into_the_detectors_backbone(tmp_path):
    """SAC (deformable) + RFP on R50 from a torchvision ResNet-50 state dict computes what the
    plain ResNet-50 FPN computes."""
    plain, detectors = pair(seeded_weights(tmp_path, resnet50), "r50_fpn", sac=True,
                            sac_deformable=True, rfp_steps=2)
    with torch.no_grad():
        close(detectors(X), plain(X), tol=1e-4)


@pytest.mark.parametrize("model", ["faster", "cascade"])
def test_the_switches_work_under_faster_and_cascade_rcnn(model):
    from rcnn_cli.modeling.build import build_detector
    from tests.conftest import compose_cfg

    cfg = compose_cfg("train", [f"model={model}", "backbone.sac=true", "backbone.rfp_steps=2",
                                "backbone.fpn_channels=32", "dataset.image_size=64"])
    detector = build_detector(cfg, num_classes=3).train()
    target = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 34.0]]), "labels": torch.tensor([1])}
    losses = detector([X[0]], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert detector.backbone.rfp_bodies[0].layer3[0].conv2.weight_diff.grad is not None


def test_the_switches_need_a_resnet_fpn_backbone():
    with pytest.raises(ConfigError, match="need a ResNet-FPN backbone"):
        build_backbone("r50_c4", None, 5, "bn", 64, sac=True)
    with pytest.raises(ConfigError, match="backbone.rfp_steps=0"):
        build_backbone("r18_fpn", None, 5, "bn", 64, rfp_steps=0)


def test_rcnn_predict_speed_switches_keep_the_detectors_backbone_exact(tmp_path):
    from rcnn_cli.engine.fast_inference import prepare

    _, detectors = pair(seeded_weights(tmp_path), sac=True, sac_deformable=True, rfp_steps=2)
    with torch.no_grad():
        for m in detectors.modules():  # the SAC paths and the feedback away from their start
            if isinstance(m, nn.Conv2d) and m.bias is not None and m.out_channels == 1:
                nn.init.constant_(m.bias, 0.3)
        want = detectors(X)
        prepare(nn.ModuleDict({"backbone": detectors}), fold_bn=True, channels_last=True,
                compile=False)
        close(detectors(X), want, tol=1e-4)
