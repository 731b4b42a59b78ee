"""The HTC / DetectoRS ablation ladder on shapes with masks: box AP, mask AP and s/iter.

Five rungs, one recipe and budget (``experiment=shapes_masks_ladder``), each at every seed:

    python benchmarks/htc_ladder.py --seeds 0 1 --out outputs/htc_ladder
    python benchmarks/htc_ladder.py --smoke  # a few iterations per rung: the program runs
    python benchmarks/htc_ladder.py --rungs htc detectors --seeds 0  # some rungs only

s/iter is the mean training step time (data wait included) after the first logging window.
Writes ``<out>/ladder.json`` (one record per run) and prints a markdown table of the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from rcnn_cli.io import atomic_write_json

RUNGS = {  # id: (row name, overrides)
    "cascade_mask_last": ("Cascade Mask R-CNN (last-stage mask)", ["model=cascade_mask"]),
    "cascade_mask_stages": ("Cascade Mask R-CNN (per-stage masks)",
                            ["model=cascade_mask", "model.cascade.stage_masks=true"]),
    "htc_no_semantic": ("HTC without semantic", ["model=htc", "model.htc.semantic=false"]),
    "htc": ("HTC", ["model=htc"]),
    "detectors": ("DetectoRS (HTC + RFP + SAC)",
                  ["model=detectors", "backbone.sac=true", "backbone.sac_deformable=true",
                   "backbone.rfp_steps=2"]),
}
SMOKE = ["schedule.max_iter=4", "schedule.checkpoint_period=4", "schedule.warmup_iters=2",
         "dataset.train_size=8", "dataset.val_size=4", "dataset.image_size=64", "log.period=2"]


def step_time(run_dir: Path) -> float | None:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [x["step_time"] for x in lines if x.get("step_time") is not None]
    times = times[1:] or times  # the first window holds the start-up
    return statistics.mean(times) if times else None


def run(rung: str, overrides: list[str], seed: int, out: Path) -> dict:
    """One rung at one seed through rcnn-train (``python -m rcnn_cli.train``)."""
    run_dir = out / f"{rung}_seed{seed}"
    subprocess.run([sys.executable, "-m", "rcnn_cli.train", "experiment=shapes_masks_ladder",
                    *overrides, f"seed={seed}", "log.tensorboard=false",
                    f"hydra.run.dir={run_dir}"], check=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"rung": rung, "overrides": overrides, "seed": seed, "run_dir": str(run_dir),
            "box_AP": metrics.get("bbox/AP"), "mask_AP": metrics.get("segm/AP"),
            "s_per_iter": step_time(run_dir)}


def mean(records: list[dict], key: str) -> str:
    values = [r[key] for r in records if r[key] is not None]
    return f"{statistics.mean(values):.3f}" if values else "-"


def table(records: list[dict]) -> str:
    rows = ["| rung | box AP | mask AP | s/iter | seeds |", "|---|---|---|---|---|"]
    for rung, (name, _) in RUNGS.items():
        rs = [r for r in records if r["rung"] == rung]
        if rs:
            rows.append(f"| {name} | {mean(rs, 'box_AP')} | {mean(rs, 'mask_AP')} | "
                        f"{mean(rs, 's_per_iter')} | {len(rs)} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("outputs/htc_ladder"))
    parser.add_argument("--rungs", nargs="+", choices=list(RUNGS), default=list(RUNGS))
    parser.add_argument("--smoke", action="store_true", help="a few iterations per rung")
    args = parser.parse_args()
    records = []
    for seed in args.seeds:
        for rung in args.rungs:
            overrides = RUNGS[rung][1] + (SMOKE if args.smoke else [])
            records.append(run(rung, overrides, seed, args.out))
            atomic_write_json(args.out / "ladder.json", records)
    print(table(records))


if __name__ == "__main__":
    main()
