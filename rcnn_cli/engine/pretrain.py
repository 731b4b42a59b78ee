"""Supervised pre-training of a classifier trunk, the stand-in for ImageNet weights here.

R-CNN §2.3 ("Supervised pre-training"), Fast R-CNN §2.2 and Faster R-CNN §3.2 all start from a
CNN pre-trained as an image classifier. No weights can be downloaded in this environment, so
this trains torchvision's own classifier (``resnet18``, ``alexnet``, ``vgg16_bn``, ...) to tell the
shapes apart on object-centred crops of a shapes split drawn with *another seed* than the
detection data, plus background crops, and saves its state dict. The file is what
``backbone.weights=<file>`` loads (the classifier layer is dropped there, as for ImageNet).
Measured: ``resnet18`` (1000 iterations, AdamW) reaches 0.96 held-out crop accuracy and
``alexnet`` (600) 0.78-0.83, but AdamW's weight decay 0.05 leaves 213 of AlexNet's 256 conv5
channels dead, which starves SPPNet's whole-image features; ``--optimizer sgd`` (lr 0.01, weight
decay 5e-4, 800 iterations, context 1.2-3x) keeps 254 alive at 0.68 accuracy. ``vgg16_bn`` with
SGD (500 iterations x 32 crops of 48 px) reaches 0.56; plain ``vgg16`` stayed at chance (80 SGD,
400 AdamW iterations).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import models
from torchvision.ops import box_iou, roi_align

from rcnn_cli.data.shapes import CLASSES, ShapesDataset
from rcnn_cli.engine.optim import build_optimizer
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import atomic_torch_save

log = logging.getLogger("rcnn_cli")

ARCHS = ("resnet18", "resnet50", "alexnet", "vgg16", "vgg16_bn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PretrainParams:
    arch: str = "resnet18"
    iters: int = 600
    batch_size: int = 64
    crop_size: int = 64
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9), ImageNet AlexNet/VGG's recipe
    lr: float = 1e-3
    weight_decay: float = 0.05
    context_min: float = 1.1  # crop side / object side, drawn per object in this range
    context_max: float = 1.5
    images: int = 4000  # shapes images the crops come from
    image_size: int = 128
    seed: int = 1000  # not the detection data's seed (0): no image is shared
    background_fraction: float = 0.25
    held_out: int = 2000  # crops (from 200 held-out images) of the reported held-out accuracy


def crop_boxes(target_boxes: np.ndarray, rng: np.random.Generator, n_bg: int, size: int,
               context: tuple[float, float] = (1.1, 1.5)) -> tuple[np.ndarray, np.ndarray]:
    """Jittered object boxes (``context`` x the object's size, +-10 % shift) and background
    boxes whose IoU with every object is < 0.3. Returns (boxes [N, 4], is_object [N])."""
    b = target_boxes.astype(np.float32)
    wh = b[:, 2:] - b[:, :2]
    centre = (b[:, :2] + b[:, 2:]) / 2 + rng.uniform(-0.1, 0.1, wh.shape) * wh
    half = wh * rng.uniform(*context, (len(b), 1)) / 2
    objects = np.concatenate([centre - half, centre + half], 1)
    bg = []
    for _ in range(20 * n_bg):
        if len(bg) == n_bg:
            break
        s = rng.uniform(0.1, 0.5) * size
        x, y = rng.uniform(0, size - s, 2)
        cand = np.array([[x, y, x + s, y + s]], np.float32)
        if box_iou(torch.from_numpy(cand), torch.from_numpy(b)).max() < 0.3:
            bg.append(cand[0])
    bg = np.array(bg, np.float32).reshape(-1, 4)
    boxes = np.concatenate([objects, bg]).astype(np.float32)
    return boxes, np.r_[np.ones(len(objects), bool), np.zeros(len(bg), bool)]


def sample_batch(ds: ShapesDataset, rng: np.random.Generator, p: PretrainParams):
    """``batch_size`` crops (label 0 = background, k = CLASSES[k-1]), normalised like the
    detectors' input (ImageNet mean/std)."""
    crops, labels = [], []
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    while sum(len(c) for c in crops) < p.batch_size:
        image, target = ds.raw(int(rng.integers(len(ds))))
        n_bg = max(1, round(len(target["labels"]) * p.background_fraction
                            / (1 - p.background_fraction)))
        boxes, is_obj = crop_boxes(target["boxes"], rng, n_bg, p.image_size,
                                   (p.context_min, p.context_max))
        pixels = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
        crops.append(roi_align(pixels[None], [torch.from_numpy(boxes)], p.crop_size,
                               sampling_ratio=2, aligned=True))
        labels.append(np.r_[target["labels"], np.zeros(int((~is_obj).sum()), np.int64)])
    x = torch.cat(crops)[:p.batch_size]
    y = torch.from_numpy(np.concatenate(labels)[:p.batch_size]).long()
    if rng.random() < 0.5:
        x = x.flip(-1)
    return x, y


def build_classifier(arch: str, num_classes: int) -> torch.nn.Module:
    if arch not in ARCHS:
        raise ConfigError(f"pretrain arch={arch} is not supported; available: {', '.join(ARCHS)}")
    return getattr(models, arch)(weights=None, num_classes=num_classes)


def check_params(p: PretrainParams) -> None:
    if p.iters < 20:  # the one-cycle warm-up (10 %) needs at least two steps
        raise ConfigError(f"pretrain iters={p.iters}: need at least 20")
    if p.held_out < 1:
        raise ConfigError(f"pretrain held_out={p.held_out}: need at least 1 crop")
    if p.optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"pretrain optimizer={p.optimizer}: use adamw or sgd")
    if not 1.0 <= p.context_min <= p.context_max:
        raise ConfigError(f"pretrain context {p.context_min}-{p.context_max}: need "
                          "1 <= context_min <= context_max")


def pretrain(p: PretrainParams, out: str | Path, progress=None) -> dict:
    """Train ``p.arch`` on shape crops and write its state dict to ``out`` (atomically).

    Returns the final training loss/accuracy and the accuracy on ``p.held_out`` held-out crops."""
    check_params(p)
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    ds = ShapesDataset("train", p.images, p.image_size, seed=p.seed)
    held_out = ShapesDataset("val", 200, p.image_size, seed=p.seed)
    net = build_classifier(p.arch, len(CLASSES) + 1)
    opt = build_optimizer(net, p.optimizer, p.lr, 0.9, p.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, p.lr, total_steps=p.iters, pct_start=0.1)
    start, hist = time.perf_counter(), []
    net.train()
    for it in range(p.iters):
        x, y = sample_batch(ds, rng, p)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
        if progress is not None:
            progress(it + 1, hist[-1])
    last = np.array(hist[-50:])
    result = {"arch": p.arch, "iters": p.iters, "train_loss": float(last[:, 0].mean()),
              "train_acc": float(last[:, 1].mean()),
              "held_out_acc": held_out_accuracy(net, held_out, p),
              "seconds": time.perf_counter() - start}
    atomic_torch_save(Path(out), net.state_dict())
    return result


@torch.no_grad()
def held_out_accuracy(net: torch.nn.Module, ds: ShapesDataset, p: PretrainParams) -> float:
    net.eval()
    rng = np.random.default_rng(p.seed + 1)
    right = total = 0
    while total < p.held_out:
        x, y = sample_batch(ds, rng, p)
        right += int((net(x).argmax(1) == y).sum())
        total += len(y)
    net.train()
    return right / total

