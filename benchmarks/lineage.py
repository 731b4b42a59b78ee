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
import json
import sys
from pathlib import Path

import torch

from rcnn_cli.benchmark.lineage.claims import claims
from rcnn_cli.benchmark.lineage.jobs import plan_children, run_side_by_side
from rcnn_cli.benchmark.lineage.report import (
    cache_notes,
    failure_notes,
    format_seed_table,
    format_table,
    machine_notes,
    plot_png,
    setup_notes,
    summarize,
)
from rcnn_cli.benchmark.lineage.runs import plan, time_all, train_all, warm_caches
from rcnn_cli.benchmark.lineage.systems import DATASETS, Dataset
from rcnn_cli.engine import faults
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import atomic_write_bytes, atomic_write_json, atomic_write_text

KEEP = Path(__file__).resolve().parent / "results" / "lineage"


def write_report(records: list[dict], out: Path, header: str, info: dict,
                 min_ap50: float | None = None, baseline: dict | None = None) -> str:
    """OUT/lineage.md (the tables, the claims, the notes) and OUT/lineage.json (``info``, the
    runs, the rows and the claims)."""
    rows, checked = summarize(records), claims(records, min_ap50, baseline)
    text = "\n".join([header, "", format_table(rows), "", "The papers' claims on this data:", "",
                      *checked, "", "Each seed:", "", format_seed_table(records), "",
                      *machine_notes(records), *cache_notes(records, info.get("proposal_cache_s")),
                      *failure_notes(records), *setup_notes(records), ""])
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
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # a --jobs run
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
        if args.child:  # one run of a --jobs table: its parent writes the table
            return ""
        return write_report(records, args.out, head, info, data.min_ap50, baseline)

    try:
        if args.jobs > 1:  # made once here, not by two children at once
            info["proposal_cache_s"] = warm_caches(runs)
        failed = (run_side_by_side(plan_children(Path(__file__).resolve(), args, runs),
                                   args.jobs) if args.jobs > 1 else {})
        records = train_all(runs, args.out, args.keep, args.fresh and args.jobs == 1,
                            args.time_images, lambda rs: report(
            rs, f"{header}\n\n{len(rs)}/{len(runs)} runs trained, test times follow"), failed)
    except faults.Interrupted as e:
        print(f"interrupted: {e}\nThe same command continues from the finished runs.",
              file=sys.stderr)
        return e.exit_code
    if args.child:  # trained, timed alone and kept: the parent times every run together
        return 1 if any("error" in r for r in records) else 0
    time_all(records, args.time_images, args.keep)
    print(report(records))
    if args.plot is not None:
        atomic_write_bytes(args.plot, plot_png(summarize(records), f"{data.name}: "
                           f"AP vs test time per image ({torch.get_num_threads()} thread(s))"))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
