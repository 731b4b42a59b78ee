"""Training step: rcnn-train's Trainer vs a bare torchvision loop, side by side in one process.

Three runs share the initial weights and the batches: ``bare`` (torchvision's ``FasterRCNN``
built from its own parts + a plain AdamW/clip/LambdaLR loop, torchvision's RoIAlign), ``ours``
(``Trainer.step`` + ``after_step``, ``pooler.kernel=torchvision``: the framework overhead) and
``ours+speed`` (``pooler.kernel=auto``). Steps are interleaved, rotating the order, so machine
load hits all three alike. Prints a markdown table: median step time, ratios, and the largest
relative loss difference to ``ours`` over the steps (the speed work must not change the loss
curve; ``bare`` differs from both because rcnn-train seeds the fg/bg sampling per image,
``rcnn_cli.modeling.seeded_sampler``).

    python scripts/bench_train_step.py --steps 50 --threads 2 [--override backbone=r50_fpn]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.data.loader import train_loader
from rcnn_cli.engine.optim import lr_factor
from rcnn_cli.engine.trainer import Trainer

ARCH = {"r18_fpn": "resnet18", "r50_fpn": "resnet50"}


def bare_torchvision_model(cfg, num_classes: int) -> FasterRCNN:
    """The same detector written directly against torchvision (no rcnn_cli code)."""
    b, m, s, p, d = cfg.backbone, cfg.model, cfg.sampler, cfg.pooler, cfg.dataset
    trunk = getattr(resnet, ARCH[b.name])(weights=None, norm_layer=torch.nn.BatchNorm2d)
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


class BareLoop:
    def __init__(self, cfg, num_classes: int, init_state: dict):
        self.model = bare_torchvision_model(cfg, num_classes)
        self.model.load_state_dict(init_state)
        self.model.train()
        sc = cfg.schedule
        self.clip = sc.clip_grad_norm
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=sc.lr,
                                     betas=(sc.momentum, 0.999), weight_decay=sc.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda it: lr_factor(
            it, sc.max_iter, sc.warmup_iters, sc.warmup_factor, sc.decay.value,
            list(sc.decay_steps), sc.gamma))

    def step(self, images, targets) -> float:
        losses = self.model(images, targets)
        total = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        return float(total.detach())


class OursLoop:
    def __init__(self, cfg, run_dir: Path):
        run_dir.mkdir(parents=True)
        self.trainer = Trainer(cfg, run_dir)
        self.window: dict[str, list[float]] = defaultdict(list)

    def step(self, images, targets) -> float:
        values = self.trainer.step([(images, targets)])
        self.trainer.iteration += 1
        for k, v in values.items():
            self.window[k].append(v)
        self.trainer.after_step(self.window, None)
        return values["total_loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3, help="untimed leading steps")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    total = args.steps + args.warmup
    common = ["log.tensorboard=false", "schedule.eval_period=0",
              f"schedule.checkpoint_period={10 * total}", f"schedule.max_iter={10 * total}",
              f"threads={args.threads}", *args.override]
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        cfg_tv = compose("train", common + ["pooler.kernel=torchvision"])
        cfg_fast = compose("train", common + ["pooler.kernel=auto"])
    with tempfile.TemporaryDirectory() as tmp:
        ours = OursLoop(cfg_tv, Path(tmp) / "tv")
        fast = OursLoop(cfg_fast, Path(tmp) / "fast")
        init = ours.trainer.model.state_dict()
        fast.trainer.model.load_state_dict(init)
        bare = BareLoop(cfg_tv, len(ours.trainer.classes), init)
        data = ours.trainer.train_set
        batches = list(train_loader(data, cfg_tv.schedule.batch_size, 0, 0, total, 0))
        runs = {"bare torchvision": bare, "rcnn-train (kernel=torchvision)": ours,
                "rcnn-train (kernel=auto)": fast}
        times: dict[str, list[float]] = {k: [] for k in runs}
        losses: dict[str, list[float]] = {k: [] for k in runs}
        names = list(runs)
        for i, (images, targets) in enumerate(batches):
            for name in names[i % 3:] + names[:i % 3]:
                torch.manual_seed(i)  # the same fg/bg samples in every run
                t0 = time.perf_counter()
                losses[name].append(runs[name].step(images, targets))
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    report(times, losses, args, cfg_tv)


def report(times: dict, losses: dict, args, cfg) -> None:
    base = statistics.median(times["bare torchvision"])
    ref = losses["rcnn-train (kernel=torchvision)"]
    print(f"backbone={cfg.backbone.name}, batch {cfg.schedule.batch_size}, "
          f"{cfg.dataset.image_size} px, threads {args.threads}, {args.steps} timed steps "
          f"(+{args.warmup} untimed), torch {torch.__version__}")
    print("| loop | median step (s) | bare / this | max rel. loss diff vs kernel=torchvision |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        diff = max(abs(a - b) / abs(b) for a, b in zip(losses[name], ref))
        print(f"| {name} | {med:.4f} | {base / med:.3f} | {diff:.2e} |")


if __name__ == "__main__":
    main()
