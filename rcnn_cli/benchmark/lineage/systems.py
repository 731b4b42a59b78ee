"""The lineage's rows and datasets: each system's overrides and budget, composed into one
training config per run (the dataset's settings < the system's own < its budget < the user's)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.benchmark import FP32_PLAIN_STEP
from rcnn_cli.config import validate
from rcnn_cli.errors import ConfigError


@dataclass(frozen=True)
class System:
    """One row of the table: ``overrides`` choose the architecture and its recipe; ``iters`` is
    the row's budget in training iterations per dataset (R-CNN / SPPNet: fine-tuning steps, then
    their feature, SVM and ridge stages; the 4-step row: its four training stages together, in
    the proportions ``split``)."""

    label: str
    overrides: tuple[str, ...]
    iters: Mapping[str, int]
    split: tuple[int, ...] = ()


# R-CNN -> SPPNet -> Fast -> Faster R-CNN share one trunk, AlexNet (the papers' own comparisons
# used AlexNet / ZF / CaffeNet-size nets), from the "ImageNet stand-in"
# (scripts/pretrain_backbone.py --arch alexnet; --backbone-weights alexnet=FILE for all four).
# R-CNN warps each region to the size its CNN was pre-trained at, as the paper does (§2.1: 227 px,
# AlexNet's ImageNet input): the stand-in's 64 px crops, with 5 px of context (the paper's 16/227).
# At 227 px the stand-in's fc6 meets a 6x6 conv5 map it never saw (at 64 px conv5 is 1x1, which
# AlexNet's adaptive pool copies to 6x6): in 200 fine-tuning steps the loss stayed near the class
# prior's 0.84 (0.93 at lr 0.001, 0.89 at lr 0.01). It fine-tunes at the stand-in's pre-training lr
# 0.01 (64 px warps, 200 steps: loss 0.56 against 0.64 at the paper's 0.001, on the 128 px images;
# 0.64 on the 320 px ones as well), and its SVMs' negative cache holds every margin violator (~60k
# per class on 1000 shapes images with fc7 of that quality; a cache of 20000 stopped the mining
# with most of them left out: AP50 0.08 against 0.45). The rows on one stride-16 map see the images
# at the dataset's ``single_map`` size (shapes: SPPNet's 320 px, so that the 13-64 px objects span
# several cells) and fine-tune with SGD at SPPNet's recipe (lr 0.01, weight decay 5e-4, 4 images).
# FPN and the rows after it run the project's default recipe (ResNet-18 FPN, experiment=shapes_cpu;
# the mask rows the HTC ladder's, experiment=shapes_masks_ladder: 128-wide mask heads), pre-trained
# with --backbone-weights r18_fpn=FILE. No ResNet R-CNN exists (model=rcnn takes AlexNet or VGG16),
# so the lineage has two trunks.
SINGLE_MAP = ("backbone=alexnet", "pooler=roi_pool", "schedule.batch_size=4", "schedule.lr=0.01",
              "schedule.weight_decay=0.0005")
# The RPN rows on one map keep 300 proposals per test image, as Faster R-CNN's timings (Table 5)
# do; the default 1000 would put ~3x the fc6 work into their region-wise time.
RPN_SINGLE = ("anchors=paper_small", "anchors.sizes=[[32,64,128]]", "sampler=paper",
              "model.rpn.post_nms_top_n_test=300")
ON_FPN = ("backbone=r18_fpn", "anchors=fpn_small", "pooler=roi_align")
BOXES_FPN = ("experiment=shapes_cpu", *ON_FPN)
MASKS_FPN = ("experiment=shapes_masks_ladder", *ON_FPN)
FOUR_STEP = ("rpn1", "fast1", "rpn2", "fast2")
# Budgets: iterations on shapes (the recipe's batch: 4 images for the AlexNet rows, 8 for the
# FPN rows; 1000 training images) and on BCCD (batch 4; 292 training images). Sized from the
# measured runs of docs/benchmarks.md: R-CNN 600 fine-tuning steps of 128 regions (at 200 its loss
# was still falling); SPPNet's recipe reached AP50 0.53 at 400 steps on 300
# images (5.3 epochs) but 0.30 / 0.27 at 400 on the lineage's 1000 (1.6 epochs), so it gets 1200
# (4.8); the default recipe 0.92 at 1200 (0.90 on BCCD at 300), 4-step got within 0.05 AP50 of
# joint once fast1 had the largest share (3:9:2:2); HTC keeps Cascade Mask R-CNN's 1200 so that
# the two compare at one schedule, DetectoRS (~5 s per iteration on the 2-core CPU) gets 600.
SYSTEMS: list[System] = [
    System("R-CNN", ("experiment=rcnn_alexnet", "schedule.lr=0.01", "model.svm.max_cache=100000"),
           {"shapes": 600, "bccd": 300}),
    System("SPPNet", ("experiment=sppnet_alexnet",), {"shapes": 1200, "bccd": 400}),
    System("Fast R-CNN (SS)", ("model=fast", *SINGLE_MAP, "sampler=fast_rcnn",
                               "proposals=selective_search"), {"shapes": 2000, "bccd": 1200}),
    System("Faster R-CNN", ("model=faster", *SINGLE_MAP, *RPN_SINGLE),
           {"shapes": 2000, "bccd": 1200}),
    System("Faster R-CNN 4-step", ("model=faster", *SINGLE_MAP, *RPN_SINGLE,
                                   "schedule=alternating"),
           {"shapes": 2000, "bccd": 1200}, split=(3, 9, 2, 2)),
    System("FPN", ("model=faster", *BOXES_FPN), {"shapes": 1200, "bccd": 600}),
    System("Mask R-CNN", ("model=mask", *MASKS_FPN), {"shapes": 1200, "bccd": 600}),
    System("Cascade R-CNN", ("model=cascade", *BOXES_FPN), {"shapes": 1200, "bccd": 600}),
    System("Cascade Mask R-CNN", ("model=cascade_mask", *MASKS_FPN),
           {"shapes": 1200, "bccd": 600}),
    System("HTC", ("model=htc", *MASKS_FPN), {"shapes": 1200, "bccd": 600}),
    System("DetectoRS", ("model=detectors", *MASKS_FPN, "backbone.sac=true",
                         "backbone.sac_deformable=true", "backbone.rfp_steps=2"),
           {"shapes": 600, "bccd": 300}),
]


@dataclass(frozen=True)
class Dataset:
    """What every row shares on one dataset: ``overrides`` (data, val set, run settings), the
    image size of the rows on one stride-16 map (``single_map``, by ``backbone.name``), the
    selective-search settings of the rows on external proposals, the default seeds and, where
    set, the AP50 every run must reach to count as having learned."""

    name: str
    overrides: tuple[str, ...]
    single_map: tuple[str, ...] = ()
    selective_search: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    min_ap50: float | None = None


RUN = ("schedule.eval_period=0", "log.tensorboard=false")
DATASETS = {
    # 1000 training images for every row (R-CNN's features stage then sees ~85k regions), the
    # 200 val images of every shapes benchmark.
    "shapes": Dataset("shapes", ("dataset=shapes", "dataset.train_size=1000",
                                 "dataset.val_size=200", *RUN),
                      single_map=("dataset.min_size=320", "dataset.max_size=320"),
                      seeds=(0, 1), min_ap50=0.5),
    # BCCD (Pascal VOC layout, 3 classes, 292 trainval / 72 test images of 640 x 480) at the
    # 320 x 427 of the fine-tuning benchmark for every row, batch 4; selective search on the
    # half-size image (0.8 s and ~540 boxes instead of 5.5 s and ~1500), at most 500 boxes.
    "bccd": Dataset("bccd", ("dataset=voc", "dataset.root=../shared/data/BCCD",
                             "dataset.train_split=trainval", "dataset.val_split=test",
                             "dataset.min_size=320", "dataset.max_size=427",
                             "schedule.batch_size=4", *RUN),
                    selective_search=("proposals.scale=0.5", "proposals.max_proposals=500")),
}

def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def select_systems(names: str | None) -> list[System]:
    if not names:
        return list(SYSTEMS)
    known = {slug(s.label): s for s in SYSTEMS}
    chosen = []
    for name in names.split(","):
        if slug(name) not in known:
            raise ConfigError(f"lineage: unknown system {name.strip()!r}; known: "
                              f"{', '.join(s.label for s in SYSTEMS)}")
        chosen.append(known[slug(name)])
    return chosen


def split_iterations(total: int, weights: tuple[int, ...]) -> list[int]:
    """``total`` iterations in the proportions ``weights`` (cumulative rounding, so that they
    add up to ``total``), at least one each."""
    bounds = [round(total * sum(weights[:k]) / sum(weights)) for k in range(len(weights) + 1)]
    return [max(1, hi - lo) for lo, hi in zip(bounds, bounds[1:])]


def budget_overrides(system: System, dataset: str, scale: float) -> list[str]:
    """The row's budget: its iterations on ``dataset`` times ``scale`` (at least 1), one
    checkpoint at the end; the 4-step row's stages in its proportions."""
    iters = max(1, round(system.iters[dataset] * scale))
    out = [f"schedule.max_iter={iters}", f"schedule.checkpoint_period={iters}", *FP32_PLAIN_STEP]
    if system.split:
        out += [f"schedule.stages.{stage}.max_iter={n}"
                for stage, n in zip(FOUR_STEP, split_iterations(iters, system.split))]
    return out


def compose_overrides(label: str, overrides: list[str]) -> DictConfig:
    """The training config of ``overrides``; a system this checkout lacks or a budget it does
    not accept is a ConfigError naming the system."""
    try:
        with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
            cfg = compose("train", overrides=overrides)
        validate(cfg)
    except Exception as e:  # Hydra's composition errors have no common public base
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"lineage: system {label!r} cannot be set up in this checkout: "
                          f"{first}") from e
    return cfg


def compose_system(system: System, data: Dataset, scale: float = 1.0, seed: int = 0,
                   extra: list[str] = ()) -> DictConfig:
    """The config of one run: the dataset's settings, then what they hold for this kind of
    system (the single-map image size for AlexNet, the selective-search settings), then the
    system's own overrides, its budget, the seed and the user's ``extra`` overrides."""
    own = [*system.overrides, *budget_overrides(system, data.name, scale), f"seed={seed}"]
    cfg = compose_overrides(system.label, [*data.overrides, *own, *extra])
    derived = [*(data.single_map if cfg.backbone.name == "alexnet" else ()),
               *(data.selective_search if cfg.proposals.name == "selective_search" else ())]
    if derived:
        cfg = compose_overrides(system.label, [*data.overrides, *derived, *own, *extra])
    return cfg


def mask_refusal(cfg: DictConfig) -> str | None:
    """Why a system with a mask branch cannot train on this dataset (e.g. VOC has no instance
    masks; HTC's semantic maps are drawn from them too), in the data layer's own words."""
    from rcnn_cli.data.build import build_raw_dataset
    from rcnn_cli.modeling.build import uses_masks

    if not uses_masks(cfg.model.name):
        return None
    try:
        build_raw_dataset(cfg.dataset, "val", with_masks=True)
    except ConfigError as e:
        return str(e)
    return None


def budget_text(cfg: DictConfig) -> str:
    """The row's budget as run: iterations x images per batch (4-step: per stage)."""
    text = f"{cfg.schedule.max_iter} x {cfg.schedule.batch_size}"
    if cfg.schedule.name == "alternating":
        from rcnn_cli.engine.stages.alternating import stage_iterations

        text += " (" + "/".join(str(n) for n in stage_iterations(cfg.schedule).values()) + ")"
    return text

