"""Faster, Cascade and Mask R-CNN from scratch on shapes, same budget.

Targets: Mask R-CNN segm AP50 >= 0.7; Cascade R-CNN box AP75 >= Faster R-CNN box AP75.
Every model uses the default recipe (``experiment=shapes_cpu``: light ResNet-18 FPN, AdamW,
the same iterations, batch and data); only ``model=`` changes. Usage::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/family_same_budget.py \
        --out outputs/bench/family [--max-iter 1200] [--models faster,cascade,mask] [k=v ...]

Each model's numbers go to ``<out>/<model>/bench_result.json``, so the models can also run
as separate processes (one model in ``--models`` each, same ``--out``); ``--report`` then prints the
table and the verdict from whatever results are there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_module

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.benchmark import FP32_PLAIN_STEP
from rcnn_cli.engine.train import train
from rcnn_cli.io import atomic_write_json

KEYS = ["bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP", "segm/AP50", "segm/AP75"]


def run_model(model: str, max_iter: int, extra: list[str], out: Path) -> dict:
    overrides = [f"model={model}", f"schedule.max_iter={max_iter}", "log.tensorboard=false",
                 *FP32_PLAIN_STEP, *extra]
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        cfg = compose("train", overrides=overrides)
    start = time.perf_counter()
    metrics = train(cfg, out / model)
    return {"model": model, "overrides": overrides, "seconds": time.perf_counter() - start,
            **{k: metrics.get(k) for k in KEYS}}


def verdict(rows: dict[str, dict]) -> list[str]:
    lines = []
    if "mask" in rows:
        ap = rows["mask"]["segm/AP50"] or 0.0
        lines.append(f"mask segm/AP50 = {ap:.4f} (target >= 0.7): "
                     f"{'reached' if ap >= 0.7 else 'NOT reached'}")
    if "cascade" in rows and "faster" in rows:
        c, f = rows["cascade"]["bbox/AP75"] or 0.0, rows["faster"]["bbox/AP75"] or 0.0
        lines.append(f"cascade bbox/AP75 = {c:.4f} vs faster {f:.4f} (target cascade >= faster): "
                     f"{'reached' if c >= f else 'NOT reached'}")
    return lines


def report(out: Path) -> None:
    rows = {p.parent.name: json.loads(p.read_text())
            for p in sorted(out.glob("*/bench_result.json"))}
    print("| model | iterations | bbox AP | bbox AP50 | bbox AP75 | segm AP50 | minutes |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        cells = [f"{r[k]:.4f}" if r[k] is not None else "n/a"
                 for k in ("bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP50")]
        print(f"| {name} | {r['max_iter']} | {' | '.join(cells)} | {r['seconds'] / 60:.1f} |")
    print("\n".join(verdict(rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-iter", type=int, default=1200)
    parser.add_argument("--models", default="faster,cascade,mask",
                        help="comma-separated (the Hydra overrides are the positional arguments)")
    parser.add_argument("--report", action="store_true", help="only print the results in --out")
    parser.add_argument("extra", nargs="*", help="more Hydra overrides for every model")
    args = parser.parse_args()
    if not args.report:
        for model in args.models.split(","):
            row = run_model(model, args.max_iter, args.extra, args.out)
            atomic_write_json(args.out / model / "bench_result.json",
                              {**row, "max_iter": args.max_iter})
    report(args.out)


if __name__ == "__main__":
    main()
