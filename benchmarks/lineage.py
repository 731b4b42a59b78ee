"""The R-CNN lineage on one dataset, each system at a budget where it learns: R-CNN, SPPNet,
Fast R-CNN (selective search), Faster R-CNN (joint and 4-step), FPN, Mask R-CNN, Cascade R-CNN,
Cascade Mask R-CNN, HTC and DetectoRS.

Every system is trained and evaluated through the package's public functions, as the CLIs do
(``rcnn_cli.engine.train.train``, whose final evaluation gives the COCO box AP / AP50 / AP75 /
APs and, for mask systems, mask AP; the evaluator's ``evaluate_checkpoint`` when a training
reports none), then timed per test image, split as in Faster R-CNN's Table 5:

- proposals: selective search run on the test image (not the cache read) for systems on
  external proposals; the RPN's forward for the others;
- CNN: the detector's ``backbone`` (R-CNN: the CNN on every warped region; DetectoRS: both
  passes of the recursive feature pyramid);
- region-wise: ``roi_heads`` (RoI pooling, fc layers, classifier, box regression, NMS; the
  mask branch, the cascade stages and HTC's semantic branch included);
- other: the rest of the forward (resizing, normalisation, mapping boxes back).
Times are exclusive: a hooked module running inside another is charged to itself only. All
runs are trained first, then timed together, interleaved image by image, so that a change in
the machine's load affects every system alike.

Each row has its own budget (``System.iters``: training iterations on each dataset, stated in
the table), scaled by ``--budget-scale``; ``--seeds`` trains every system once per seed (the
table shows the mean, a second table each seed). Under the table, the papers' claims are
checked one by one on this data (``claims``), with the numbers.

Usage (one process runs the systems one after another; a finished run is reused on a re-run
unless --fresh or its config changed, a key added to the schemas since counting as its
default; a stopped one continues from its newest checkpoint or
finished stage, and its training time is the sum of its starts, each up to what it saved;
two processes may share an --out with different --seeds, and a last one with all the seeds
then times them together):
    python benchmarks/lineage.py --out outputs/lineage_shapes --dataset shapes --seeds 0 1 \
        --backbone-weights alexnet=FILE --backbone-weights r18_fpn=FILE \
        [--systems R-CNN,FPN] [--budget-scale 0.5] [--baseline OTHER/lineage.json] \
        [--plot docs/images/lineage_shapes.png] [--time-images 20] [override ...]
Overrides apply to every system after the dataset's settings and the row's budget. Writes
OUT/lineage.md and OUT/lineage.json, and one normal run directory per system and seed under
OUT/<system>/seed<k>/.
"""

from __future__ import annotations

import argparse
import copy
import io
import itertools
import json
import logging
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.benchmark import FP32_PLAIN_STEP
from rcnn_cli.config import validate
from rcnn_cli.engine import faults
from rcnn_cli.engine.resume import saved_config_differences
from rcnn_cli.engine.runtime import config_dict
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger("rcnn_cli")


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
# used AlexNet / ZF / CaffeNet-size nets), from the "ImageNet stand-in" (scripts/
# pretrain_backbone.py --arch alexnet; --backbone-weights alexnet=FILE for all four). R-CNN warps
# each region to the paper's 227 px with 16 px of context (the recipe's 64 px makes its
# per-region conv artificially cheap). The rows on one stride-16 map see the images at the
# dataset's ``single_map`` size (shapes: SPPNet's 320 px, so that the 13-64 px objects span
# several cells) and fine-tune with SGD at SPPNet's recipe (lr 0.01, weight decay 5e-4, 4 images).
# FPN and the rows after it run the project's default recipe (ResNet-18 FPN, experiment=
# shapes_cpu; the mask rows the HTC ladder's, experiment=shapes_masks_ladder: 128-wide mask
# heads), pre-trained with --backbone-weights r18_fpn=FILE. No ResNet R-CNN exists (model=rcnn
# takes AlexNet or VGG16), so the lineage has two trunks.
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
# measured runs of docs/benchmarks.md: SPPNet's recipe reached AP50 0.53 at 400 steps, the
# default recipe 0.92 at 1200 (0.90 on BCCD at 300), 4-step got within 0.05 AP50 of joint once
# fast1 had the largest share (3:9:2:2); HTC keeps Cascade Mask R-CNN's 1200 so that the two
# compare at one schedule, DetectoRS (~5 s per iteration on the 2-core CPU) gets 600.
SYSTEMS: list[System] = [
    System("R-CNN", ("experiment=rcnn_alexnet", "model.warp_size=227", "model.context=16"),
           {"shapes": 200, "bccd": 200}),
    System("SPPNet", ("experiment=sppnet_alexnet",), {"shapes": 400, "bccd": 400}),
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
                         "backbone.rfp_steps=2"), {"shapes": 600, "bccd": 300}),
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
# The papers' test-time order, slowest first (R-CNN -> SPPNet -> Fast -> Faster R-CNN).
PAPER_ORDER = ["R-CNN", "SPPNet", "Fast R-CNN (SS)", "Faster R-CNN"]
PARTS = ("proposals", "cnn", "region", "other")
HOOKED = {"backbone": "cnn", "rpn": "proposals", "roi_heads": "region"}
PROGRESS = "lineage_progress.json"  # an unfinished run's config, starts and kept seconds
METRICS = {"AP": "bbox/AP", "AP50": "bbox/AP50", "AP75": "bbox/AP75", "APs": "bbox/APs",
           "mask AP": "segm/AP"}


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


class PartTimer:
    """Exclusive wall time per named submodule, from forward pre/post hooks.

    A stack of open calls: when a call ends, its time minus the time of the hooked calls it
    contained is added to its part, and its whole time to its caller's "children" total.
    """

    def __init__(self, modules: dict[str, torch.nn.Module],
                 clock: Callable[[], float] = time.perf_counter):
        self.clock, self.totals = clock, dict.fromkeys(modules, 0.0)
        self._stack: list[list] = []
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._leave(name)))

    def _enter(self, name: str):
        def hook(_module, _args):
            self._stack.append([name, self.clock(), 0.0])
        return hook

    def _leave(self, name: str):
        def hook(_module, _args, _output):
            opened, start, children = self._stack.pop()
            assert opened == name, f"hook order: closed {name} while {opened} was open"
            elapsed = self.clock() - start
            self.totals[name] += elapsed - children
            if self._stack:
                self._stack[-1][2] += elapsed
        return hook

    def reset(self) -> None:
        self.totals = dict.fromkeys(self.totals, 0.0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def split_times(forward_s: float, module_s: dict[str, float], ss_s: float | None) -> dict:
    """Seconds of one image -> the table's parts. ``ss_s``: selective search time for systems
    on external proposals (None for the RPN systems, whose ``rpn`` forward is the proposals)."""
    parts = dict.fromkeys(PARTS, 0.0)
    for name, seconds in module_s.items():
        parts[HOOKED[name]] += seconds
    parts["other"] = max(forward_s - sum(module_s.values()), 0.0)
    if ss_s is not None:
        parts["proposals"] += ss_s
    parts["total"] = sum(parts[p] for p in PARTS)
    return parts


class SystemTimer:
    """One trained system's per-image test time over the first ``images`` val images, batch 1,
    split into parts; ``time_image`` runs one image so that systems can be interleaved."""

    def __init__(self, ckpt_path: Path, images: int):
        from rcnn_cli.data.build import build_dataset
        from rcnn_cli.data.loader import eval_loader
        from rcnn_cli.data.proposal_cache import attach_proposals, selective_search_params
        from rcnn_cli.engine.evaluator import build_trained_model, load_trained
        from rcnn_cli.modeling.build import uses_masks

        self.device = torch.device("cpu")
        ckpt, cfg = load_trained(str(ckpt_path))
        self.model = build_trained_model(ckpt, cfg, self.device)
        self.view = build_dataset(cfg.dataset, "val", train=False,
                                  with_masks=uses_masks(cfg.model.name))
        attach_proposals(cfg, "val", self.view)
        self.ss_params = (selective_search_params(cfg.proposals)
                          if cfg.proposals.name == "selective_search" else None)
        self.items = list(itertools.islice(eval_loader(self.view, 1, 0), images))
        self.timer = PartTimer({n: getattr(self.model, n) for n in HOOKED
                                if hasattr(self.model, n)})
        self.sums, self.timed = dict.fromkeys((*PARTS, "total"), 0.0), 0

    def run(self, index: int) -> dict:
        """Seconds per part for image ``index`` (selective search on its pixels included)."""
        from rcnn_cli.evaluation.inference import external_proposals
        from rcnn_cli.modeling.proposals import selective_search

        batch, targets = self.items[index]
        ss_s = None
        if self.ss_params is not None:
            pixels, _ = self.view.raw.raw(index)
            start = time.perf_counter()
            selective_search(pixels, **self.ss_params)
            ss_s = time.perf_counter() - start
        self.timer.reset()
        with torch.inference_mode():
            start = time.perf_counter()
            self.model([img.to(self.device) for img in batch],
                       **external_proposals(targets, self.device))
            forward_s = time.perf_counter() - start
        return split_times(forward_s, self.timer.totals, ss_s)

    def time_image(self, index: int) -> None:
        parts = self.run(index)
        for key in self.sums:
            self.sums[key] += parts[key]
        self.timed += 1

    def result(self) -> dict:
        from rcnn_cli.modeling.backbones import count_parameters

        self.timer.remove()
        return {"images": self.timed, "threads": torch.get_num_threads(),
                "params": count_parameters(self.model)[0],
                **{f"{k}_ms": 1000 * v / max(self.timed, 1) for k, v in self.sums.items()}}


def time_systems(ckpts: dict, images: int, warmup: int = 2) -> dict:
    """Test time of every run, interleaved image by image (run 1 on image 0, run 2 on image 0,
    ...) so that a change in machine load hits all of them alike; ``warmup`` untimed passes on
    image 0 first. A run that cannot be timed gets ``{"error": ...}``."""
    timers, results = {}, {}
    for key, ckpt in ckpts.items():
        try:
            timers[key] = SystemTimer(ckpt, images)
            for _ in range(warmup):
                timers[key].run(0)
        except Exception as e:  # noqa: BLE001 - reported in the table, the others go on
            log.exception("lineage: %s cannot be timed", key)
            results[key] = {"error": f"{type(e).__name__}: {e}"}
            timers.pop(key, None)
    for index in range(max((len(t.items) for t in timers.values()), default=0)):
        for timer in timers.values():
            if index < len(timer.items):
                timer.time_image(index)
    return {**results, **{key: timer.result() for key, timer in timers.items()}}


def warm_proposal_cache(cfg: DictConfig) -> float:
    """Selective search over the train and val splits into the cache (once for all systems on
    external proposals), so that their training time does not include it; returns seconds."""
    from rcnn_cli.data.build import build_dataset
    from rcnn_cli.data.proposal_cache import load_proposals

    start = time.perf_counter()
    for split in ("train", "val"):
        view = build_dataset(cfg.dataset, split, train=split == "train")
        load_proposals(cfg.proposals, cfg.dataset, split, view.raw)
    return time.perf_counter() - start


def same_config(saved: dict | None, cfg: DictConfig) -> bool:
    """Whether a stored run's config is ``cfg``'s, every key included; a key the stored config
    lacks (added to the schemas since) counts as its schema default."""
    return saved is not None and not saved_config_differences(saved, cfg, may_change=())


def metric(metrics: dict, key: str) -> float | None:
    """A COCO statistic, None where the evaluator has none (-1: e.g. no small object)."""
    value = metrics.get(key)
    return None if value is None or value < 0 else float(value)


def stopped_progress(run_dir: Path, cfg: DictConfig) -> dict | None:
    """A stopped run that can continue: its ``PROGRESS`` with ``kept_s`` brought up to date,
    the training seconds its starts kept. Each start counts up to its newest checkpoint or
    stage manifest (what it did after that is trained again). None: no progress file, another
    config, or nothing saved to continue from."""
    try:
        progress = json.loads((run_dir / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    saved = [p.stat().st_mtime for p in run_dir.rglob("*")
             if p.suffix == ".pt" or p.name == "manifest.json"]
    if not saved or not same_config(progress.get("config"), cfg):
        return None
    return {**progress, "kept_s": progress["kept_s"] + max(0.0, max(saved) - progress["started"])}


def run_system(label: str, seed: int, overrides: list[str], cfg: DictConfig, out: Path,
               fresh: bool) -> dict:
    """Train one system at one seed (its wall time includes rcnn-train's final evaluation on
    the val images; rcnn-eval's ``evaluate_checkpoint`` if it has none); reuse a finished
    record whose config is the same."""
    from rcnn_cli.engine.evaluator import evaluate_checkpoint
    from rcnn_cli.engine.train import train

    run_dir = out / slug(label) / f"seed{seed}"
    record_path = run_dir / "lineage_record.json"
    config = config_dict(cfg)
    if record_path.exists() and not fresh:
        record = json.loads(record_path.read_text())
        if same_config(record.get("config"), cfg):
            log.info("lineage: %s seed %d: reusing %s", label, seed, record_path)
            return record
    progress = None if fresh else stopped_progress(run_dir, cfg)
    if run_dir.exists() and progress is None:  # outdated, or stopped before saving anything
        log.info("lineage: %s seed %d: removing the unfinished run %s", label, seed, run_dir)
        shutil.rmtree(run_dir)
    proposal_cache_s = None
    if cfg.proposals.name == "selective_search":
        proposal_cache_s = warm_proposal_cache(cfg)
    train_cfg, kept_s, starts = cfg, 0.0, 1
    if progress is not None:
        kept_s, starts = progress["kept_s"], progress["starts"] + 1
        log.info("lineage: %s seed %d: continuing %s (start %d; %.0f s of training kept)",
                 label, seed, run_dir, starts, kept_s)
        train_cfg = copy.deepcopy(cfg)
        train_cfg.resume = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / PROGRESS, {"config": config, "kept_s": kept_s,
                                           "starts": starts, "started": time.time()})
    start = time.perf_counter()
    metrics = train(train_cfg, run_dir)
    train_s = kept_s + time.perf_counter() - start
    ckpt = run_dir / "checkpoints" / "last.pt"
    ap_source = "rcnn-train's final evaluation"
    if "bbox/AP" not in metrics:  # no final evaluation in training: rcnn-eval's path
        with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
            eval_cfg = compose("eval", overrides=[f"ckpt={ckpt}"])
        metrics = evaluate_checkpoint(eval_cfg, run_dir / "eval")
        ap_source = "rcnn-eval"
    record = {"label": label, "seed": seed, "overrides": overrides, "budget": budget_text(cfg),
              "run_dir": str(run_dir), "proposals": cfg.proposals.name,
              "backbone": cfg.backbone.name, "train_s": train_s,
              "proposal_cache_s": proposal_cache_s,
              **{name: metric(metrics, key) for name, key in METRICS.items()},
              "ap_source": ap_source, "iteration": metrics.get("iteration"), "ckpt": str(ckpt),
              "starts": starts, "config": config}
    atomic_write_json(record_path, record)
    return record


# --- the table --------------------------------------------------------------------------


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def summarize(records: list[dict]) -> list[dict]:
    """One row per system (in the records' order): the mean over its finished runs of every
    metric, the training time and each test-time part; ``seeds`` lists the runs averaged. A
    system none of whose runs finished keeps the reason (refused, or the first failure)."""
    rows = {}
    for r in records:
        rows.setdefault(r["label"], []).append(r)
    out = []
    for label, runs in rows.items():
        done = [r for r in runs if "error" not in r and "refused" not in r]
        row = {"label": label, "overrides": runs[0]["overrides"],
               "seeds": [r["seed"] for r in done]}
        if not done:
            row.update({k: runs[0][k] for k in ("refused", "error") if k in runs[0]})
            out.append(row)
            continue
        row["budget"] = done[0]["budget"]
        row.update({k: mean([r.get(k) for r in done]) for k in ("train_s", *METRICS)})
        timed = [r["test"] for r in done if "test" in r]
        if timed:
            row["test"] = {k: mean([t[k] for t in timed])
                           for k in ("params", *(f"{p}_ms" for p in (*PARTS, "total")))}
        out.append(row)
    return out


def _ms(value) -> str:
    return "" if value is None else f"{value:.1f}"


def _ap(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _params(value) -> str:
    return "" if value is None else f"{value / 1e6:.1f} M"


COLUMNS = ("system", "budget (it x img)", "params", "train", "proposals ms/img", "CNN ms/img",
           "region-wise ms/img", "other ms/img", "total ms/img", *METRICS)


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per system (means over seeds), test times in ms per image split into
    parts, the parameters of the trained model, its training wall time and the COCO metrics."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    for row in rows:
        reason = ("refused: " + row["refused"] if "refused" in row
                  else "failed: " + row["error"] if "error" in row else None)
        if reason is not None:
            lines.append(f"| {row['label']} | {reason.splitlines()[0][:160]} |"
                         + " |" * (len(COLUMNS) - 2))
            continue
        t = row.get("test", {})
        cells = [row["label"], row["budget"], _params(t.get("params")),
                 f"{row['train_s'] / 60:.1f} min",
                 *(_ms(t.get(f"{p}_ms")) for p in (*PARTS, "total")),
                 *(_ap(row[m]) for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_seed_table(records: list[dict]) -> str:
    """Markdown: every run (system x seed) with its metrics, training and total test time."""
    lines = ["| system | seed | train | total ms/img | " + " | ".join(METRICS) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(METRICS)]
    for r in records:
        if "error" in r or "refused" in r:
            continue
        total = r.get("test", {}).get("total_ms")
        lines.append(f"| {r['label']} | {r['seed']} | {r['train_s'] / 60:.1f} min | "
                     f"{_ms(total)} | " + " | ".join(_ap(r[m]) for m in METRICS) + " |")
    return "\n".join(lines)


# --- the papers' claims -------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "holds" if ok else "does not hold"


def missing(rows: dict[str, dict], labels: list[str], key: str) -> list[str]:
    return [label for label in labels if rows.get(label, {}).get(key) is None]


def unchecked(rows: dict[str, dict], labels: list[str], key: str, claim: str) -> str | None:
    """The claim's line when a row it needs has no ``key``; None when it can be checked."""
    absent = missing(rows, labels, key)
    return f"- {claim}: not checkable here (no {key} for {', '.join(absent)})" if absent else None


def at_least(rows: dict[str, dict], better: str, than: str, key: str, what: str) -> str:
    """``better``'s mean ``key`` >= ``than``'s (a paper's "each step is more accurate")."""
    claim = f"{better} >= {than} in {what}"
    if absent := unchecked(rows, [better, than], key, claim):
        return absent
    a, b = rows[better][key], rows[than][key]
    return f"- {claim}: {verdict(a >= b)} ({a:.3f} vs {b:.3f})"


def within(rows: dict[str, dict], a: str, b: str, key: str, tolerance: float) -> str:
    """|a - b| <= tolerance (Faster R-CNN §3.2: 4-step and joint training reach the same)."""
    claim = f"{a} within {tolerance} {key} of {b}"
    if absent := unchecked(rows, [a, b], key, claim):
        return absent
    x, y = rows[a][key], rows[b][key]
    return f"- {claim}: {verdict(abs(x - y) <= tolerance)} ({x:.3f} vs {y:.3f}, gap {abs(x - y):.3f})"


def time_falls(rows: dict[str, dict], order: list[str] = PAPER_ORDER) -> list[str]:
    """Test time per image falls at each step from R-CNN to Faster R-CNN (SPPNet: conv once
    per image; Fast R-CNN: one fine-tuned network; Faster R-CNN: proposals from the shared
    map), each ratio stated."""
    total = {label: row["test"]["total_ms"] for label, row in rows.items() if "test" in row}
    present = [label for label in order if label in total]
    claim = "test time falls from R-CNN to Faster R-CNN"
    if len(present) < 2:
        return [f"- {claim}: not checkable here (timed: {', '.join(present) or 'none'})"]
    ratios = [(a, b, total[a] / total[b] if total[b] > 0 else float("inf"))
              for a, b in zip(present, present[1:])]
    chain = " -> ".join(f"{label} {total[label]:.1f}" for label in present)
    lines = [f"- {claim}: {verdict(all(r > 1 for *_, r in ratios))} ({chain} ms/img)"]
    lines += [f"  - {a} / {b}: {r:.2f}x per test image" for a, b, r in ratios]
    absent = [label for label in order if label not in total]
    if absent:
        lines.append(f"  - not in this table: {', '.join(absent)}")
    return lines


def learned(records: list[dict], min_ap50: float | None, baseline: dict | None) -> list[str]:
    """Each row learned, none is a placeholder: every run's AP50 >= ``min_ap50`` (shapes), and
    each row's mean AP50 >= the same system's at a smaller budget (``baseline``, a lineage.json
    of this table at --budget-scale < this one's)."""
    lines = []
    done = [r for r in records if r.get("AP50") is not None]
    if min_ap50 is not None:
        low = [f"{r['label']} seed {r['seed']} {r['AP50']:.3f}" for r in done
               if r["AP50"] < min_ap50]
        lowest = min(done, key=lambda r: r["AP50"], default=None)
        numbers = ("below: " + ", ".join(low) if low else "lowest: " + (
            f"{lowest['label']} seed {lowest['seed']} {lowest['AP50']:.3f}" if lowest else "none"))
        lines.append(f"- every run's AP50 >= {min_ap50}: {verdict(not low and bool(done))} "
                     f"({numbers})")
    if baseline is None:
        return lines
    small = {row["label"]: row.get("AP50") for row in baseline["rows"]}
    scale = baseline["budget_scale"]
    pairs = []
    for row in summarize(records):
        if row.get("AP50") is None or small.get(row["label"]) is None:
            continue
        pairs.append((row["label"], row["AP50"], small[row["label"]]))
    worse = [f"{label} {a:.3f} < {b:.3f}" for label, a, b in pairs if a < b]
    numbers = "; ".join(worse) if worse else ", ".join(f"{lb} {a:.3f} vs {b:.3f}"
                                                       for lb, a, b in pairs)
    lines.append(f"- every row's AP50 at budget x{baseline['this_scale']} >= the same system's "
                 f"at x{scale}: {verdict(not worse and bool(pairs))} "
                 f"({numbers or 'no row in both'})")
    return lines


def claims(records: list[dict], min_ap50: float | None = None,
           baseline: dict | None = None) -> list[str]:
    """The papers' qualitative claims, each stated as holding or not with the numbers."""
    rows = {row["label"]: row for row in summarize(records)}
    return [*time_falls(rows),
            at_least(rows, "Fast R-CNN (SS)", "R-CNN", "AP", "AP"),
            at_least(rows, "Faster R-CNN", "Fast R-CNN (SS)", "AP", "AP"),
            within(rows, "Faster R-CNN 4-step", "Faster R-CNN", "AP50", 0.05),
            at_least(rows, "FPN", "Faster R-CNN", "APs", "APs (small objects; Faster R-CNN: "
                     "one stride-16 map)"),
            at_least(rows, "Cascade R-CNN", "FPN", "AP75", "AP75"),
            at_least(rows, "HTC", "Mask R-CNN", "mask AP", "mask AP"),
            at_least(rows, "HTC", "Cascade Mask R-CNN", "mask AP", "mask AP"),
            *learned(records, min_ap50, baseline)]


# --- the report -----------------------------------------------------------------------------


def cache_notes(records: list[dict]) -> list[str]:
    """Selective search over the training and val images, computed once into the cache before
    the first system on external proposals trains (not part of its training time)."""
    spent = [(r["label"], r["seed"], r["proposal_cache_s"]) for r in records
             if r.get("proposal_cache_s") is not None]
    return ["- selective search cache (train + val, not in the train column): "
            + ", ".join(f"{label} seed {seed} {s:.1f} s" for label, seed, s in spent)
            ] if spent else []


def failure_notes(records: list[dict]) -> list[str]:
    return [f"- {r['label']} seed {r['seed']}: {'refused' if 'refused' in r else 'failed'}: "
            f"{(r.get('refused') or r['error']).splitlines()[0]}"
            for r in records if "error" in r or "refused" in r]


def setup_notes(records: list[dict]) -> list[str]:
    """Each system's own overrides (on top of the dataset's settings in the header)."""
    seen = {}
    for r in records:
        seen.setdefault(r["label"], r["overrides"])
    return ["", "Systems (their own overrides on top of the dataset's settings; the budget "
            "column sets schedule.max_iter):", ""] + [
        f"- {label}: `{' '.join(o)}`" for label, o in seen.items()]


def write_report(records: list[dict], out: Path, header: str, info: dict,
                 min_ap50: float | None = None, baseline: dict | None = None) -> str:
    """OUT/lineage.md (the tables, the claims, the notes) and OUT/lineage.json (``info``, the
    runs, the rows and the claims)."""
    rows, checked = summarize(records), claims(records, min_ap50, baseline)
    text = "\n".join([header, "", format_table(rows), "", "The papers' claims on this data:", "",
                      *checked, "", "Each seed:", "", format_seed_table(records), "",
                      *cache_notes(records), *failure_notes(records), *setup_notes(records),
                      ""])
    atomic_write_text(out / "lineage.md", text)
    runs = [{k: v for k, v in r.items() if k != "config"} for r in records]
    atomic_write_json(out / "lineage.json", {**info, "runs": runs, "rows": rows,
                                             "claims": checked})
    return text


def plot_png(rows: list[dict], title: str) -> bytes:
    """AP against total test time per image, one labelled point per system, log time axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for row in rows:
        if row.get("AP") is None or "test" not in row:
            continue
        ax.scatter(row["test"]["total_ms"], row["AP"], s=30)
        ax.annotate(row["label"], (row["test"]["total_ms"], row["AP"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("test time per image (ms, log scale)")
    ax.set_ylabel("box AP (COCO, mean over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


# --- the program ----------------------------------------------------------------------------


def load_baseline(path: Path | None, dataset: str, scale: float) -> dict | None:
    """A lineage.json of this table on the same dataset at a smaller budget."""
    if path is None:
        return None
    base = json.loads(path.read_text())
    if base.get("dataset") != dataset or not base.get("budget_scale", 1.0) < scale:
        raise ConfigError(f"lineage: --baseline {path}: dataset {base.get('dataset')} at budget "
                          f"x{base.get('budget_scale')}; needs dataset {dataset} at a budget "
                          f"below x{scale}")
    return {**base, "this_scale": scale}


def plan(args, data: Dataset) -> list[tuple[System, int, DictConfig, str | None]]:
    """Every run's config (composed once per system, then one copy per seed) and the reason
    its system is refused on this data, if it is; all before anything trains, so that a missing
    system or a bad override fails in seconds, not hours later."""
    weights = dict(item.split("=", 1) for item in args.backbone_weights)
    systems = [(s, compose_system(s, data, args.budget_scale, args.seeds[0], args.overrides))
               for s in select_systems(args.systems)]
    unused = set(weights) - {cfg.backbone.name for _, cfg in systems}
    if unused:
        raise ConfigError(f"lineage: --backbone-weights {', '.join(sorted(unused))}: no "
                          "selected system uses that backbone")
    runs = []
    for system, cfg in systems:
        if cfg.backbone.name in weights:
            cfg.backbone.weights = weights[cfg.backbone.name]
        if cfg.proposals.name == "selective_search":  # one cache for all, inside --out
            cfg.proposals.cache_dir = str(args.out / "proposal_cache")
        refusal = mask_refusal(cfg)
        for seed in args.seeds:
            run_cfg = copy.deepcopy(cfg)
            run_cfg.seed = seed
            runs.append((system, seed, run_cfg, refusal))
    return runs


def train_all(runs, out: Path, fresh: bool, report: Callable[[list[dict]], None]) -> list[dict]:
    """Train (or reuse) every run in turn; a refused system (no masks in the data) or a failed
    run is recorded and the others go on; the report is rewritten after each run."""
    records = []
    for system, seed, cfg, refusal in runs:
        base = {"label": system.label, "seed": seed, "overrides": list(system.overrides)}
        if refusal is not None:
            records.append({**base, "refused": refusal})
        else:
            try:
                records.append(run_system(system.label, seed, list(system.overrides), cfg, out,
                                          fresh))
            except faults.Interrupted:
                raise  # SIGTERM / Ctrl-C stop the table; a re-run continues from the finished
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                log.exception("lineage: %s seed %d failed", system.label, seed)
                records.append({**base, "error": f"{type(e).__name__}: {e}"})
        report(records)
    return records


def time_all(records: list[dict], images: int) -> None:
    """Every finished run timed together; the result (or the failure) into its record."""
    trained = {(r["label"], r["seed"]): Path(r["ckpt"]) for r in records
               if "error" not in r and "refused" not in r}
    for key, test in time_systems(trained, images).items():
        record = next(r for r in records if (r["label"], r["seed"]) == key)
        if "error" in test:
            record["error"] = f"timing: {test['error']}"
        else:
            record["test"] = test


def describe(args, data: Dataset) -> tuple[str, dict]:
    """The report's header and the JSON's description of the table."""
    weights = ", ".join(args.backbone_weights) or "none (every trunk from scratch)"
    shared = " ".join([*data.overrides, *args.overrides])
    header = (f"Lineage on {data.name} (`{shared}`), budget x{args.budget_scale}, seeds "
              f"{' '.join(map(str, args.seeds))}; pre-trained trunks: {weights}. train = "
              "rcnn-train wall time (its final evaluation included), mean over seeds; test time "
              f"per image: mean over {args.time_images} val images and the seeds, batch 1, "
              f"{torch.get_num_threads()} thread(s), every run interleaved image by image")
    info = {"dataset": data.name, "budget_scale": args.budget_scale, "seeds": args.seeds,
            "shared_overrides": shared.split(), "backbone_weights": args.backbone_weights,
            "time_images": args.time_images, "threads": torch.get_num_threads()}
    return header, info


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="shapes")
    ap.add_argument("--systems", help="comma-separated labels (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", help="one run per system per seed "
                    "(default: shapes 0 1, bccd 0)")
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="every row's iterations times this (0.5: half the budget)")
    ap.add_argument("--baseline", type=Path, help="lineage.json of this table at a smaller "
                    "--budget-scale: each row's AP50 must be >= its")
    ap.add_argument("--plot", type=Path, help="PNG: AP vs test time per image")
    ap.add_argument("--time-images", type=int, default=20, help="val images timed per run")
    ap.add_argument("--backbone-weights", action="append", default=[], metavar="BACKBONE=FILE",
                    help="backbone.weights for every system on that backbone (repeatable)")
    ap.add_argument("--fresh", action="store_true", help="re-run finished systems")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every system")
    args = ap.parse_args(argv)
    if args.budget_scale <= 0:
        ap.error("--budget-scale must be > 0")
    args.seeds = args.seeds or list(DATASETS[args.dataset].seeds)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = DATASETS[args.dataset]
    try:  # compose everything first: a missing system fails before hours of training
        baseline = load_baseline(args.baseline, data.name, args.budget_scale)
        runs = plan(args, data)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    header, info = describe(args, data)

    def report(records: list[dict], head: str = header) -> str:
        return write_report(records, args.out, head, info, data.min_ap50, baseline)

    try:
        records = train_all(runs, args.out, args.fresh, lambda rs: report(
            rs, f"{header}\n\n{len(rs)}/{len(runs)} runs trained, test times follow"))
    except faults.Interrupted as e:
        print(f"interrupted: {e}\nThe same command continues from the finished runs.",
              file=sys.stderr)
        return e.exit_code
    time_all(records, args.time_images)
    print(report(records))
    if args.plot is not None:
        atomic_write_bytes(args.plot, plot_png(summarize(records), f"{data.name}: "
                           f"AP vs test time per image ({torch.get_num_threads()} thread(s))"))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
