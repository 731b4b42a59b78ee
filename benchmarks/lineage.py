"""The R-CNN lineage on one dataset with one budget: R-CNN, SPPNet, Fast R-CNN (selective
search), Faster R-CNN (joint and 4-step), FPN, Mask R-CNN and Cascade R-CNN.

Every system is trained and evaluated through the package's public functions, as the CLIs do
(``rcnn_cli.engine.train.train``, whose final evaluation gives AP / AP50; the evaluator's
``evaluate_checkpoint`` when a training reports none), then timed per test image, split as in
Faster R-CNN's Table 5:

- proposals: selective search run on the test image (not the cache read) for systems on
  external proposals; the RPN's forward for the others;
- CNN: the detector's ``backbone`` (R-CNN: the CNN on every warped region);
- region-wise: ``roi_heads`` (RoI pooling, fc layers, classifier, box regression, NMS; the
  mask branch and the cascade stages included);
- other: the rest of the forward (resizing, normalisation, mapping boxes back).
Times are exclusive: a hooked module running inside another is charged to itself only. All
systems are trained first, then timed together, interleaved image by image, so that a change in
the machine's load affects every system alike.

Usage (one process runs the systems one after another; a finished system is reused on a
re-run unless --fresh or its config changed; an unfinished one is trained again from the start):
    python benchmarks/lineage.py --out outputs/lineage [--systems R-CNN,FPN] [--time-images 8] \
        [--backbone-weights alexnet=FILE --backbone-weights vgg16=FILE ...] [override ...]
Overrides apply to every system after the default budget (``DEFAULT_BUDGET``, shapes), so
``schedule.max_iter=200`` changes the budget of all; --no-default-budget drops it (another
dataset: ``dataset=voc dataset.root=... schedule.max_iter=...``). Writes OUT/lineage.md and OUT/lineage.json,
and one normal run directory per system under OUT/<system>/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.config import validate
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import atomic_write_json, atomic_write_text

log = logging.getLogger("rcnn_cli")

# (label, overrides). R-CNN -> SPPNet -> Fast -> Faster R-CNN share one trunk, AlexNet (the
# papers' own comparisons used AlexNet / ZF / CaffeNet-size nets), from the "ImageNet stand-in"
# (scripts/pretrain_backbone.py --arch alexnet; --backbone-weights alexnet=FILE). R-CNN warps
# each region to the paper's 227 px with 16 px of context (issue 8b's shapes recipe uses 64 px,
# which makes its per-region conv artificially cheap); fine-tuning at 227 px costs ~16x more per
# region than at 64, so R-CNN fine-tunes for fewer iterations than the budget (stated in the
# report). SPPNet, Fast and Faster R-CNN see the images at SPPNet's 320 px (issue 8b's recipe: the
# 13-64 px objects then span several stride-16 cells). FPN, Mask R-CNN and Cascade R-CNN run the
# project's default recipe (ResNet-18 FPN at 128 px, experiment=shapes_cpu; pre-trained with
# --backbone-weights r18_fpn=FILE). A system's own overrides win over the budget.
SINGLE_MAP = ["backbone=alexnet", "pooler=roi_pool", "dataset.min_size=320",
              "dataset.max_size=320"]
RPN_320 = ["anchors=paper_small", "anchors.sizes=[[32,64,128]]"]  # objects: 32-160 px at 320
ON_FPN = ["backbone=r18_fpn", "anchors=fpn_small", "pooler=roi_align"]
SYSTEMS: list[tuple[str, list[str]]] = [
    ("R-CNN", ["experiment=rcnn_alexnet_shapes", "model.warp_size=227", "model.context=16",
               "schedule.max_iter=10"]),
    ("SPPNet", ["experiment=sppnet_alexnet_shapes"]),
    ("Fast R-CNN (SS)", ["model=fast", *SINGLE_MAP, "sampler=fast_rcnn",
                         "proposals=selective_search"]),
    ("Faster R-CNN", ["model=faster", *SINGLE_MAP, *RPN_320, "sampler=paper"]),
    ("Faster R-CNN 4-step", ["model=faster", *SINGLE_MAP, *RPN_320, "sampler=paper",
                             "schedule=alternating"]),
    ("FPN", ["model=faster", *ON_FPN]),
    ("Mask R-CNN", ["model=mask", *ON_FPN, "model.mask_head.layers=[64,64,64,64]",
                    "model.mask_head.dim_reduced=64"]),
    ("Cascade R-CNN", ["model=cascade", *ON_FPN]),
]
# One budget for all, sized for ~30-40 min for all eight systems on this 2-core CPU under
# load: 60 shapes images seen 4x (60 iterations x 4), 30 val images (AP), --time-images of them
# timed. R-CNN fine-tunes 10 iterations: at 227 px one step of 4 x 32 regions took ~20 s here.
DEFAULT_BUDGET = ["dataset=shapes", "dataset.train_size=60", "dataset.val_size=30",
                  "schedule.max_iter=60", "schedule.batch_size=4", "schedule.warmup_iters=6",
                  "schedule.eval_period=0", "schedule.checkpoint_period=60",
                  "log.tensorboard=false"]
# The papers' test-time order, slowest first (issue 8: each ratio stated).
PAPER_ORDER = ["R-CNN", "SPPNet", "Fast R-CNN (SS)", "Faster R-CNN"]
PARTS = ("proposals", "cnn", "region", "other")
HOOKED = {"backbone": "cnn", "rpn": "proposals", "roi_heads": "region"}


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def effective_overrides(overrides: list[str]) -> list[str]:
    """The overrides that take effect (the last value of each key), in first-seen order."""
    last = {}
    for item in overrides:
        last[item.split("=", 1)[0]] = item
    return list(last.values())


def select_systems(names: str | None) -> list[tuple[str, list[str]]]:
    if not names:
        return list(SYSTEMS)
    known = {slug(label): (label, o) for label, o in SYSTEMS}
    chosen = []
    for name in names.split(","):
        if slug(name) not in known:
            raise ConfigError(f"lineage: unknown system {name.strip()!r}; known: "
                              f"{', '.join(label for label, _ in SYSTEMS)}")
        chosen.append(known[slug(name)])
    return chosen


def compose_system(label: str, overrides: list[str], budget: list[str],
                   extra: list[str] = ()) -> DictConfig:
    """The system's training config: the budget, then the system's own overrides (a declared
    deviation such as R-CNN's fewer fine-tuning iterations wins over the budget), then the
    user's ``extra`` overrides. A system this checkout lacks (e.g. ``model=rcnn`` before issue
    8b is merged) or a budget it does not accept is a ConfigError naming the system."""
    try:
        with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
            cfg = compose("train", overrides=[*budget, *overrides, *extra])
        validate(cfg)
    except Exception as e:  # Hydra's composition errors have no common public base
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"lineage: system {label!r} ({' '.join(overrides)}) cannot be set "
                          f"up in this checkout: {first}") from e
    return cfg


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
        self.timer.remove()
        return {"images": self.timed, "threads": torch.get_num_threads(),
                **{f"{k}_ms": 1000 * v / max(self.timed, 1) for k, v in self.sums.items()}}


def time_systems(ckpts: dict[str, Path], images: int, warmup: int = 2) -> dict[str, dict]:
    """Test time of every system, interleaved image by image (system 1 on image 0, system 2
    on image 0, ...) so that a change in machine load hits all of them alike; ``warmup``
    untimed passes on image 0 first. A system that cannot be timed gets ``{"error": ...}``."""
    timers, results = {}, {}
    for label, ckpt in ckpts.items():
        try:
            timers[label] = SystemTimer(ckpt, images)
            for _ in range(warmup):
                timers[label].run(0)
        except Exception as e:  # noqa: BLE001 - reported in the table, the others go on
            log.exception("lineage: %s cannot be timed", label)
            results[label] = {"error": f"{type(e).__name__}: {e}"}
            timers.pop(label, None)
    for index in range(max((len(t.items) for t in timers.values()), default=0)):
        for timer in timers.values():
            if index < len(timer.items):
                timer.time_image(index)
    return {**results, **{label: timer.result() for label, timer in timers.items()}}


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


def run_system(label: str, overrides: list[str], cfg: DictConfig, out: Path,
               fresh: bool) -> dict:
    """Train one system (its wall time includes rcnn-train's final evaluation on the val
    images, which gives AP / AP50; rcnn-eval's ``evaluate_checkpoint`` if it has none); reuse
    a finished record."""
    from rcnn_cli.engine.evaluator import evaluate_checkpoint
    from rcnn_cli.engine.train import train

    run_dir = out / slug(label)
    record_path = run_dir / "lineage_record.json"
    if record_path.exists() and not fresh:
        record = json.loads(record_path.read_text())
        if record.get("config") == OmegaConf.to_container(cfg, resolve=False, enum_to_str=True):
            log.info("lineage: %s: reusing %s", label, record_path)
            return record
    if run_dir.exists():  # an unfinished or outdated run: train afresh so its time is whole
        log.info("lineage: %s: removing the unfinished run %s", label, run_dir)
        shutil.rmtree(run_dir)
    proposal_cache_s = None
    if cfg.proposals.name == "selective_search":
        proposal_cache_s = warm_proposal_cache(cfg)
    start = time.perf_counter()
    metrics = train(cfg, run_dir)
    train_s = time.perf_counter() - start
    ckpt = run_dir / "checkpoints" / "last.pt"
    ap_source = "rcnn-train's final evaluation"
    if "bbox/AP" not in metrics:  # no final evaluation in training: rcnn-eval's path
        with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
            eval_cfg = compose("eval", overrides=[f"ckpt={ckpt}"])
        metrics = evaluate_checkpoint(eval_cfg, run_dir / "eval")
        ap_source = "rcnn-eval"
    record = {"label": label, "overrides": overrides, "run_dir": str(run_dir),
              "proposals": cfg.proposals.name, "backbone": cfg.backbone.name,
              "train_s": train_s, "proposal_cache_s": proposal_cache_s,
              "AP": metrics.get("bbox/AP"), "AP50": metrics.get("bbox/AP50"),
              "ap_source": ap_source,
              "iteration": metrics.get("iteration"), "ckpt": str(ckpt),
              "config": OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)}
    atomic_write_json(record_path, record)
    return record


def _ms(value) -> str:
    return "" if value is None else f"{value:.1f}"


def _ap(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_table(records: list[dict]) -> str:
    """Markdown: one row per system, test times in ms per image split into parts."""
    lines = ["| system | train | proposals ms/img | CNN ms/img | region-wise ms/img | "
             "other ms/img | total ms/img | AP | AP50 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if "error" not in r and "test" not in r:
            lines.append(f"| {r['label']} | {r['train_s'] / 60:.1f} min |" + " |" * 5
                         + f" {_ap(r['AP'])} | {_ap(r['AP50'])} |")
            continue
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'].splitlines()[0][:120]} |"
                         + " |" * 7)
            continue
        t = r["test"]
        lines.append(f"| {r['label']} | {r['train_s'] / 60:.1f} min | {_ms(t['proposals_ms'])} | "
                     f"{_ms(t['cnn_ms'])} | {_ms(t['region_ms'])} | {_ms(t['other_ms'])} | "
                     f"{_ms(t['total_ms'])} | {_ap(r['AP'])} | {_ap(r['AP50'])} |")
    return "\n".join(lines)


def order_report(records: list[dict], order: list[str] = PAPER_ORDER) -> list[str]:
    """The papers' order of test time per image, checked pair by pair, each ratio stated."""
    total = {r["label"]: r["test"]["total_ms"] for r in records if "test" in r}
    present = [label for label in order if label in total]
    lines = []
    for slower, faster in zip(present, present[1:]):
        ratio = total[slower] / total[faster] if total[faster] > 0 else float("inf")
        verdict = "as the papers report" if ratio > 1 else "NOT as the papers report"
        lines.append(f"- {slower} / {faster}: {ratio:.2f}x per test image ({verdict})")
    missing = [label for label in order if label not in total]
    if missing:
        lines.append(f"- not in this table: {', '.join(missing)}")
    return lines


def cache_notes(records: list[dict]) -> list[str]:
    """Selective search over the training and val images, computed once into the cache before
    the first system on external proposals trains (not part of its training time)."""
    spent = [(r["label"], r["proposal_cache_s"]) for r in records
             if r.get("proposal_cache_s") is not None]
    return ["- selective search cache (train + val, not in the train column): "
            + ", ".join(f"{label} {seconds:.1f} s" for label, seconds in spent)] if spent else []


def setup_notes(records: list[dict]) -> list[str]:
    """Each system's own overrides (on top of the budget in the header)."""
    return ["", "Systems (their own overrides on top of the budget):", ""] + [
        f"- {r['label']}: `{' '.join(r['overrides'])}`" for r in records]


def write_report(records: list[dict], out: Path, header: str) -> str:
    text = "\n".join([header, "", format_table(records), "", *order_report(records),
                      *cache_notes(records), *setup_notes(records), ""])
    atomic_write_text(out / "lineage.md", text)
    atomic_write_json(out / "lineage.json", [{k: v for k, v in r.items() if k != "config"}
                                             for r in records])
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--systems", help="comma-separated labels (default: all)")
    ap.add_argument("--time-images", type=int, default=8, help="val images timed per system")
    ap.add_argument("--backbone-weights", action="append", default=[], metavar="BACKBONE=FILE",
                    help="backbone.weights for every system on that backbone (repeatable)")
    ap.add_argument("--fresh", action="store_true", help="re-run finished systems")
    ap.add_argument("--no-default-budget", action="store_true",
                    help="only the given overrides (e.g. for dataset=voc, whose keys differ)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every system")
    args = ap.parse_args(argv)
    weights = dict(item.split("=", 1) for item in args.backbone_weights)
    default = [] if args.no_default_budget else DEFAULT_BUDGET
    budget = effective_overrides([*default, *args.overrides])  # as shown in the report
    try:  # compose everything first: a missing system fails before hours of training
        systems = select_systems(args.systems)
        cfgs = [compose_system(label, o, default, args.overrides) for label, o in systems]
        unused = set(weights) - {cfg.backbone.name for cfg in cfgs}
        if unused:
            raise ConfigError(f"lineage: --backbone-weights {', '.join(sorted(unused))}: no "
                              "selected system uses that backbone")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for cfg in cfgs:
        if cfg.backbone.name in weights:
            cfg.backbone.weights = weights[cfg.backbone.name]
        if cfg.proposals.name == "selective_search":  # one cache for all, inside --out
            cfg.proposals.cache_dir = str(args.out / "proposal_cache")
    records = []
    for cfg, (label, o) in zip(cfgs, systems):
        try:
            records.append(run_system(label, o, cfg, args.out, args.fresh))
        except Exception as e:  # noqa: BLE001 - one failed system must not lose the others
            log.exception("lineage: %s failed", label)
            records.append({"label": label, "overrides": o, "error": f"{type(e).__name__}: {e}"})
        write_report(records, args.out, f"Lineage on `{' '.join(budget)}`: "
                     f"{len(records)}/{len(systems)} systems trained, test times follow")
    trained = {r["label"]: Path(r["ckpt"]) for r in records if "error" not in r}
    for label, test in time_systems(trained, args.time_images).items():
        record = next(r for r in records if r["label"] == label)
        if "error" in test:
            record["error"] = f"timing: {test['error']}"
        else:
            record["test"] = test
    header = (f"Lineage on `{' '.join(budget)}`; train = rcnn-train wall time (its final "
              "evaluation included); test time per image: mean over "
              f"{args.time_images} val images, batch 1, {torch.get_num_threads()} thread(s), "
              "the systems interleaved image by image")
    print(write_report(records, args.out, header))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
