"""Anchors (Faster R-CNN §3.1.1; FPN §4.1): sizes per feature map x aspect ratios."""

from __future__ import annotations

import logging

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from rcnn_cli.errors import ConfigError

log = logging.getLogger("rcnn_cli")


def build_anchor_generator(name: str, sizes: list[list[int]], aspect_ratios: list[float],
                           feature_names: list[str], backbone: str,
                           level_aspect_ratios: list[list[float]] | None = None
                           ) -> AnchorGenerator:
    """``level_aspect_ratios`` (one list per level, fitted by ``anchors=auto``) replace the
    shared ``aspect_ratios``."""
    if name == "auto" and not sizes:
        raise ConfigError("anchors=auto is fitted by the joint trainer (rcnn-train with "
                          "schedule=joint); choose fixed anchors for this program")
    if len(sizes) != len(feature_names):
        raise ConfigError(
            f"anchors={name} defines {len(sizes)} feature map(s) but backbone={backbone} "
            f"returns {len(feature_names)}; pick anchors that match the backbone")
    if any(len(s) == 0 for s in sizes) or not aspect_ratios:
        raise ConfigError(f"anchors={name}: every level needs at least one size and one ratio")
    if any(r <= 0 for r in aspect_ratios) or any(x <= 0 for s in sizes for x in s):
        raise ConfigError(f"anchors={name}: sizes and aspect ratios must be positive")
    per_level = level_aspect_ratios or [aspect_ratios] * len(sizes)
    return AnchorGenerator(
        sizes=tuple(tuple(int(x) for x in s) for s in sizes),
        aspect_ratios=tuple(tuple(float(r) for r in ratios) for ratios in per_level),
    )


# --- anchor statistics and fitted anchors (YOLOv2 §2 "Dimension Clusters": k-means with
# d(box, centroid) = 1 - IoU of the shapes, both centred at the origin) ---


def anchor_shapes(sizes: list[int], aspect_ratios: list[float]) -> torch.Tensor:
    """(w, h) of the anchors of one level, as ``AnchorGenerator`` makes them (ratio = h / w)."""
    s = torch.tensor(sizes, dtype=torch.float64)[:, None]
    r = torch.tensor(aspect_ratios, dtype=torch.float64)[None, :].sqrt()
    return torch.stack([(s / r).flatten(), (s * r).flatten()], 1)


def shape_iou(wh: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """[N, M] IoU of box shapes and anchor shapes with aligned centres."""
    inter = torch.minimum(wh[:, None, 0], shapes[None, :, 0]) * torch.minimum(
        wh[:, None, 1], shapes[None, :, 1])
    area = wh[:, 0:1] * wh[:, 1:2]
    return inter / (area + (shapes[:, 0] * shapes[:, 1])[None, :] - inter)


def uncovered_share(wh: torch.Tensor, shapes: torch.Tensor, iou: float) -> float:
    """Share of boxes whose best anchor shape has IoU < ``iou`` (the RPN's positive IoU)."""
    if len(wh) == 0:
        return 0.0
    return float((shape_iou(wh, shapes).max(1).values < iou).double().mean())


def kmeans_shapes(wh: torch.Tensor, k: int, seed: int, iters: int = 100) -> torch.Tensor:
    """k cluster shapes (medians of their members) under d = 1 - IoU, sorted by area."""
    g = torch.Generator().manual_seed(seed)
    # k-means++ seeding (Arthur & Vassilvitskii 2007) under the same distance
    centres = wh[torch.randint(len(wh), (1,), generator=g)]
    while len(centres) < k:
        d = (1 - shape_iou(wh, centres).max(1).values).clamp_min(0) ** 2
        pick = torch.multinomial(d + 1e-12, 1, generator=g)
        centres = torch.cat([centres, wh[pick]])
    for _ in range(iters):
        assign = shape_iou(wh, centres).argmax(1)
        new = torch.stack([wh[assign == j].median(0).values if (assign == j).any()
                           else centres[j] for j in range(len(centres))])
        if torch.equal(new, centres):
            break
        centres = new
    return centres[(centres[:, 0] * centres[:, 1]).argsort()]


def fit_anchors(wh: torch.Tensor, levels: int, per_level: int,
                seed: int) -> tuple[list[list[int]], list[list[float]]]:
    """``levels x per_level`` shape clusters, smallest to largest: level l gets the geometric
    mean size of its ``per_level`` clusters and their aspect ratios (h / w)."""
    k = levels * per_level
    if len(wh) < k:
        raise ConfigError(f"anchors=auto: {len(wh)} training boxes cannot fit {k} anchor shapes "
                          f"(anchors.levels x len(anchors.aspect_ratios)); use fixed anchors")
    centres = kmeans_shapes(wh.to(torch.float64), k, seed)
    sizes, ratios = [], []
    for group in centres.split(per_level):
        sizes.append([max(1, round(float((group[:, 0] * group[:, 1]).sqrt().log().mean().exp())))])
        ratios.append([round(float(h / w), 3) for w, h in group.tolist()])
    return sizes, ratios


def input_box_shapes(coco_gt: dict, min_size: int, max_size: int) -> torch.Tensor:
    """(w, h) of the non-crowd boxes at the model's input scale (shorter side ``min_size``,
    longer side at most ``max_size``)."""
    dims = {img["id"]: (img["width"], img["height"]) for img in coco_gt["images"]}
    out = []
    for a in coco_gt["annotations"]:
        if a.get("iscrowd", 0):
            continue
        w, h = dims[a["image_id"]]
        scale = min(min_size / min(w, h), max_size / max(w, h))
        out.append((a["bbox"][2] * scale, a["bbox"][3] * scale))
    wh = torch.tensor(out, dtype=torch.float64).reshape(-1, 2)
    return wh[(wh > 0).all(1)]


def resolve_auto_anchors(cfg, raw) -> None:
    """``anchors=auto``: fit sizes and per-level ratios to the training boxes, write them into
    ``cfg.anchors`` (so the run config, checkpoints and exports rebuild the same model) and
    log them."""
    a = cfg.anchors
    if a.name != "auto":
        return
    wh = input_box_shapes(raw.coco_gt(), cfg.dataset.min_size, cfg.dataset.max_size)
    sizes, ratios = fit_anchors(wh, int(a.levels), len(a.aspect_ratios), int(cfg.seed))
    a.sizes, a.level_aspect_ratios = sizes, ratios
    shapes = torch.cat([anchor_shapes(s, r) for s, r in zip(sizes, ratios)])
    log.info("anchors=auto: sizes %s, aspect ratios (h/w) per level %s; %.1f%% of training "
             "boxes have no anchor with IoU >= %.2f", sizes, ratios,
             100 * uncovered_share(wh, shapes, cfg.sampler.rpn.fg_iou_thresh),
             cfg.sampler.rpn.fg_iou_thresh)
