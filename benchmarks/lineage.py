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
Times are exclusive: a hooked module running inside another is charged to itself only. Each
run is timed alone right after its training; when every run's checkpoint is on this machine,
they are timed again together, interleaved image by image, so that a change in the machine's
load affects every system alike (see "Kept runs" below).

Each row has its own budget (``System.iters`` in ``rcnn_cli/benchmark/lineage/systems.py``:
training iterations on each dataset, stated in the table), scaled by ``--budget-scale``;
``--seeds`` trains every system once per seed (the table shows the mean, a second table each
seed). Under the table, the papers' claims are checked one by one on this data (``claims``),
with the numbers.

Usage (one process runs the systems one after another; a finished run is reused on a re-run
unless --fresh or its config changed, a key added to the schemas since counting as its default;
a stopped one continues from its newest checkpoint or finished stage, and its training time is
the sum of its starts, each up to what it saved; ``--jobs 2`` trains two runs at a time, each
in a child process on one thread with its console in OUT/logs/, and then times them all
together in the parent; each record says whether the CPU was shared while it trained or was
timed):
    python benchmarks/lineage.py --out outputs/lineage_shapes --dataset shapes --seeds 0 1 \
        --backbone-weights alexnet=FILE --backbone-weights r18_fpn=FILE \
        [--systems R-CNN,FPN] [--budget-scale 0.5] [--baseline OTHER/lineage.json] \
        [--plot docs/images/lineage_shapes.png] [--time-images 20] [--jobs 2] [override ...]
Overrides apply to every system after the dataset's settings and the row's budget. Writes
OUT/lineage.md and OUT/lineage.json, and one normal run directory per system and seed under
OUT/<system>/seed<k>/.

Kept runs: a finished run's record (metrics, config, the CPU, and its test time measured alone
right after its training) is also kept in ``--keep`` (default
``benchmarks/results/lineage/<dataset>_x<budget scale>/``, committed), and a run kept with the
same config is not trained again on another machine: the table can be filled over several
sessions whose run directories do not survive. Only when every run's checkpoint is on this
machine are they timed again together, interleaved; otherwise each keeps its own timing, and
the report names the CPU of each row (test times compare only on one CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from rcnn_cli.benchmark.lineage.claims import claims
from rcnn_cli.benchmark.lineage.jobs import plan_children, run_side_by_side
from rcnn_cli.benchmark.lineage.report import (
    METRICS,
    cache_notes,
    failure_notes,
    format_seed_table,
    format_table,
    machine_notes,
    plot_png,
    setup_notes,
    summarize,
)
from rcnn_cli.benchmark.lineage.systems import (
    DATASETS,
    Dataset,
    System,
    budget_text,
    compose_system,
    mask_refusal,
    select_systems,
    slug,
)
from rcnn_cli.benchmark.lineage.timing import machine_load, time_systems
from rcnn_cli.engine import faults
from rcnn_cli.engine.resume import saved_config_differences
from rcnn_cli.engine.runtime import config_dict, cpu_model
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger("rcnn_cli")

PROGRESS = "lineage_progress.json"  # an unfinished run's config, starts and kept seconds
KEEP = Path(__file__).resolve().parent / "results" / "lineage"


def run_dir_record(out: Path, label: str, seed: int) -> Path:
    return out / slug(label) / f"seed{seed}" / "lineage_record.json"


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
    """Whether a stored run's config is ``cfg``'s, every key included but the folder of the
    selective search cache (inside ``--out``: its content depends only on the images and the
    search's settings); a key the stored config lacks (added to the schemas since) counts as
    its schema default."""
    return saved is not None and not saved_config_differences(
        saved, cfg, may_change=("proposals.cache_dir",))


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

    record_path = run_dir_record(out, label, seed)
    run_dir = record_path.parent
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
    train_load = {"load": machine_load(15), "threads": torch.get_num_threads()}
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
              "train_load": train_load,
              "starts": starts, "cpu": cpu_model(), "config": config}
    atomic_write_json(record_path, record)
    return record


def kept_path(keep: Path, label: str, seed: int) -> Path:
    return keep / f"{slug(label)}_seed{seed}.json"


def run_kept(label: str, seed: int, overrides: list[str], cfg: DictConfig, out: Path,
             keep: Path, fresh: bool, images: int) -> dict:
    """``run_system``, unless a run with the same config is kept; a new record is timed alone
    (``images`` val images) on the machine it trained on and kept with that CPU's name (one
    that could not be timed is not kept: it runs again)."""
    path = kept_path(keep, label, seed)
    if path.is_file() and not fresh:
        record = json.loads(path.read_text())
        if same_config(record.get("config"), cfg):
            log.info("lineage: %s seed %d: kept in %s", label, seed, path)
            return record
    record = run_system(label, seed, overrides, cfg, out, fresh)
    if "test" not in record:
        [test] = time_systems({(label, seed): Path(record["ckpt"])}, images).values()
        record.update({"test": test, "timed": "alone"} if "error" not in test
                      else {"error": f"timing: {test['error']}"})
    record.setdefault("cpu", cpu_model())
    atomic_write_json(run_dir_record(out, label, seed), record)
    if "error" not in record:
        atomic_write_json(path, record)
    return record


def write_report(records: list[dict], out: Path, header: str, info: dict,
                 min_ap50: float | None = None, baseline: dict | None = None) -> str:
    """OUT/lineage.md (the tables, the claims, the notes) and OUT/lineage.json (``info``, the
    runs, the rows and the claims)."""
    rows, checked = summarize(records), claims(records, min_ap50, baseline)
    text = "\n".join([header, "", format_table(rows), "", "The papers' claims on this data:", "",
                      *checked, "", "Each seed:", "", format_seed_table(records), "",
                      *machine_notes(records), *cache_notes(records), *failure_notes(records),
                      *setup_notes(records), ""])
    atomic_write_text(out / "lineage.md", text)
    runs = [{k: v for k, v in r.items() if k != "config"} for r in records]
    atomic_write_json(out / "lineage.json", {**info, "runs": runs, "rows": rows,
                                             "claims": checked})
    return text


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


def train_all(runs, out: Path, keep: Path, fresh: bool, images: int,
              report: Callable[[list[dict]], None], failed: dict | None = None) -> list[dict]:
    """Train (or reuse) every run in turn; a refused system (no masks in the data) or a failed
    run is recorded and the others go on; the report is rewritten after each run. ``failed``:
    the runs that failed side by side, by (label, seed), recorded without training again."""
    records, failed = [], failed or {}
    for system, seed, cfg, refusal in runs:
        base = {"label": system.label, "seed": seed, "overrides": list(system.overrides)}
        if refusal is not None:
            records.append({**base, "refused": refusal})
        elif (system.label, seed) in failed:
            records.append({**base, "error": failed[system.label, seed]})
        else:
            try:
                records.append(run_kept(system.label, seed, list(system.overrides), cfg, out,
                                        keep, fresh, images))
            except faults.Interrupted:
                raise  # SIGTERM / Ctrl-C stop the table; a re-run continues from the finished
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                log.exception("lineage: %s seed %d failed", system.label, seed)
                records.append({**base, "error": f"{type(e).__name__}: {e}"})
        report(records)
    return records


def time_all(records: list[dict], images: int, keep: Path) -> None:
    """Every finished run timed together, interleaved, when all their checkpoints are on this
    machine; the result (or the failure) into its record, kept. Otherwise (runs kept from
    other machines) each keeps the timing of its own machine."""
    trained = {(r["label"], r["seed"]): Path(r["ckpt"]) for r in records
               if "error" not in r and "refused" not in r}
    if not all(ckpt.is_file() for ckpt in trained.values()):
        log.info("lineage: runs kept from other machines: each keeps its own test time")
        return
    for key, test in time_systems(trained, images).items():
        record = next(r for r in records if (r["label"], r["seed"]) == key)
        if "error" in test:
            record["error"] = f"timing: {test['error']}"
        else:
            record.update({"test": test, "timed": "together", "cpu": cpu_model()})
            atomic_write_json(kept_path(keep, *key), record)


def describe(args, data: Dataset) -> tuple[str, dict]:
    """The report's header and the JSON's description of the table."""
    weights = ", ".join(args.backbone_weights) or "none (every trunk from scratch)"
    shared = " ".join([*data.overrides, *args.overrides])
    header = (f"Lineage on {data.name} (`{shared}`), budget x{args.budget_scale}, seeds "
              f"{' '.join(map(str, args.seeds))}; pre-trained trunks: {weights}. train = "
              "rcnn-train wall time (its final evaluation included), mean over seeds; test time "
              f"per image: mean over {args.time_images} val images and the seeds, batch 1, "
              f"{torch.get_num_threads()} thread(s); the CPU and the way each run was timed "
              "are listed under the table")
    info = {"dataset": data.name, "budget_scale": args.budget_scale, "seeds": args.seeds,
            "shared_overrides": shared.split(), "backbone_weights": args.backbone_weights,
            "time_images": args.time_images, "threads": torch.get_num_threads()}
    return header, info


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    ap.add_argument("--jobs", type=int, default=1, help="runs trained side by side, one child "
                    "process and one thread each; then all timed together here")
    ap.add_argument("--keep", type=Path, help="where finished runs are kept (default: "
                    "benchmarks/results/lineage/<dataset>_x<budget scale>)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every system")
    args = ap.parse_args(argv)
    if args.budget_scale <= 0:
        ap.error("--budget-scale must be > 0")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    args.seeds = args.seeds or list(DATASETS[args.dataset].seeds)
    args.keep = args.keep or KEEP / f"{args.dataset}_x{args.budget_scale:g}"
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
        failed = (run_side_by_side(plan_children(Path(__file__).resolve(), args, runs),
                                   args.jobs) if args.jobs > 1 else {})
        records = train_all(runs, args.out, args.keep, args.fresh and args.jobs == 1,
                            args.time_images, lambda rs: report(
            rs, f"{header}\n\n{len(rs)}/{len(runs)} runs trained, test times follow"), failed)
    except faults.Interrupted as e:
        print(f"interrupted: {e}\nThe same command continues from the finished runs.",
              file=sys.stderr)
        return e.exit_code
    time_all(records, args.time_images, args.keep)
    print(report(records))
    if args.plot is not None:
        atomic_write_bytes(args.plot, plot_png(summarize(records), f"{data.name}: "
                           f"AP vs test time per image ({torch.get_num_threads()} thread(s))"))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
