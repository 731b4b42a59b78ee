"""The peer: the same detector and training loop written directly against torchvision.

``bare_faster_rcnn`` builds torchvision's ``FasterRCNN`` from its own parts with a config's
settings (no rcnn_cli code), so a state dict of ours loads into it; ``BareTrainer`` is the plain
AdamW / clip / LambdaLR loop of torchvision's reference scripts; ``bare_detect`` is their
evaluation loop (one image per call, ``torch.inference_mode``).
"""

from __future__ import annotations

import torch
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from rcnn_cli.benchmark.clocks import phase
from rcnn_cli.engine.optim import lr_factor
from rcnn_cli.errors import ConfigError

ARCH = {"r18_fpn": "resnet18", "r50_fpn": "resnet50"}
NORMS = {"bn": torch.nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}


def bare_faster_rcnn(cfg, num_classes: int) -> FasterRCNN:
    """``model=faster`` with a ResNet-FPN backbone, written against torchvision alone."""
    b, m, s, p, d = cfg.backbone, cfg.model, cfg.sampler, cfg.pooler, cfg.dataset
    if m.name != "faster" or b.name not in ARCH:
        raise ConfigError(f"the bare torchvision peer covers model=faster with backbone="
                          f"{'|'.join(ARCH)}; got model={m.name} backbone={b.name}")
    norm_name = getattr(b.norm, "value", b.norm)
    if norm_name not in NORMS:
        raise ConfigError(f"the bare torchvision peer covers backbone.norm={'|'.join(NORMS)}; "
                          f"got {norm_name}")
    trunk = getattr(resnet, ARCH[b.name])(weights=None, norm_layer=NORMS[norm_name])
    c = trunk.inplanes
    backbone = BackboneWithFPN(trunk, {f"layer{k}": str(k - 1) for k in range(1, 5)},
                               [c // 8, c // 4, c // 2, c], b.fpn_channels, LastLevelMaxPool())
    anchors = AnchorGenerator(tuple(tuple(x) for x in cfg.anchors.sizes),
                              (tuple(cfg.anchors.aspect_ratios),) * len(cfg.anchors.sizes))
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], p.output_size, p.sampling_ratio,
                              canonical_scale=p.canonical_scale,
                              canonical_level=p.canonical_level)
    rep = m.box_head.representation_size
    return FasterRCNN(
        backbone, None, min_size=d.min_size, max_size=d.max_size,
        image_mean=list(m.image_mean), image_std=list(m.image_std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=m.rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=m.rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=m.rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=m.rpn.post_nms_top_n_test,
        rpn_nms_thresh=m.rpn.nms_thresh, rpn_fg_iou_thresh=s.rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=s.rpn.bg_iou_thresh, rpn_batch_size_per_image=s.rpn.batch_size_per_image,
        rpn_positive_fraction=s.rpn.positive_fraction, rpn_score_thresh=m.rpn.score_thresh,
        box_roi_pool=pool, box_head=TwoMLPHead(b.fpn_channels * p.output_size ** 2, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes + 1),
        box_score_thresh=m.box_head.score_thresh, box_nms_thresh=m.box_head.nms_thresh,
        box_detections_per_img=m.box_head.detections_per_img,
        box_fg_iou_thresh=s.roi.fg_iou_thresh, box_bg_iou_thresh=s.roi.bg_iou_thresh,
        box_batch_size_per_image=s.roi.batch_size_per_image,
        box_positive_fraction=s.roi.positive_fraction,
        bbox_reg_weights=tuple(m.box_head.box_coder_weights))


class BareTrainer:
    """torchvision's reference training step: forward, sum, backward, clip, AdamW, LambdaLR;
    on ``device``, under autocast when ``amp`` is a dtype (fp16 with a GradScaler)."""

    def __init__(self, cfg, num_classes: int, init_state: dict,
                 device: torch.device | None = None, amp: torch.dtype | None = None):
        self.model = bare_faster_rcnn(cfg, num_classes)
        self.model.load_state_dict(init_state)
        self.device, self.amp = device or torch.device("cpu"), amp
        self.model.to(self.device).train()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)
        sc = cfg.schedule
        self.clip = sc.clip_grad_norm
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=sc.lr,
                                     betas=(sc.momentum, 0.999), weight_decay=sc.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda it: lr_factor(
            it, sc.max_iter, sc.warmup_iters, sc.warmup_factor, sc.decay.value,
            list(sc.decay_steps), sc.gamma))

    def step(self, images, targets, times: dict) -> float:
        with phase(times, "forward"), torch.autocast(self.device.type, dtype=self.amp,
                                                     enabled=self.amp is not None):
            total = sum(self.model(images, targets).values())
        with phase(times, "backward"):
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        with phase(times, "optimizer"):
            if self.clip:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
        return float(total.detach())


@torch.inference_mode()
def bare_detect(model, images: list[torch.Tensor]) -> list[dict]:
    """torchvision's reference evaluation loop: one image per forward."""
    return [model([img])[0] for img in images]
