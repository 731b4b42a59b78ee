"""Time to accuracy: rcnn-train's default job against the bare torchvision loop, same wall time.

Per seed:

1. ``rcnn-train`` (the ``make train`` job; extra Hydra overrides apply) runs as a user runs it.
   Its budget B is the wall time of its training loop: the sum of its logged step windows
   (``step_time`` x iterations, data wait included; its evaluations and start-up excluded).
2. The bare torchvision loop (``rcnn_cli.benchmark.peers``: torchvision's ``FasterRCNN`` built
   from its own parts and the reference AdamW / clip / LambdaLR step, fp32) trains the same
   model from the same seeded initial weights on the same data pipeline for the same B seconds.
   Its first ten steps measure its speed and set its schedule length, so that its learning
   rate decays to the end within B, as a user of the reference scripts would choose epochs.
3. Both are evaluated on the validation split by the same evaluator.

    python benchmarks/time_to_accuracy.py --seeds 0 1 --out outputs/time_to_accuracy [k=v ...]

Writes ``<out>/records.json`` (one record per seed; a finished seed is skipped on a re-run) and
prints a markdown table with the per-seed values and the margin.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.benchmark.peers import BareTrainer
from rcnn_cli.data.loader import eval_loader, train_loader
from rcnn_cli.engine.trainer import Trainer
from rcnn_cli.evaluation.inference import predict
from rcnn_cli.io import atomic_write_json

CALIBRATION_STEPS = 10
SMOKE = ["schedule.max_iter=6", "schedule.warmup_iters=2", "schedule.eval_period=0",
         "schedule.checkpoint_period=6", "dataset.train_size=8", "dataset.val_size=4",
         "dataset.image_size=64", "log.period=2"]


def training_seconds(metrics_jsonl: Path) -> tuple[float, int]:
    """(seconds, iterations) of the training loop from the logged windows of a run."""
    seconds, last = 0.0, 0
    for line in metrics_jsonl.read_text().splitlines():
        row = json.loads(line)
        if row.get("step_time") is None:
            continue
        seconds += row["step_time"] * (row["iteration"] - last)
        last = row["iteration"]
    return seconds, last


def run_ours(seed: int, overrides: list[str], run_dir: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rcnn_cli.train", *overrides, f"seed={seed}",
                    "log.tensorboard=false", f"hydra.run.dir={run_dir}"], check=True, env=env)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds, iterations = training_seconds(run_dir / "metrics.jsonl")
    return {"AP": metrics["bbox/AP"], "AP50": metrics["bbox/AP50"], "train_s": seconds,
            "iterations": iterations, "wall_s": wall}


def compose_cfg(overrides: list[str]):
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        return compose("train", overrides)


def planned_steps(budget_s: float, spent_s: float, step_s: float) -> int:
    """Steps of the bare loop's schedule: what is left of the budget at the calibrated rate."""
    return max(1, math.floor((budget_s - spent_s) / step_s))


def run_bare(seed: int, overrides: list[str], budget_s: float, run_dir: Path) -> dict:
    """The bare loop for ``budget_s`` seconds from rcnn-train's initial weights and data."""
    cfg = compose_cfg([*overrides, f"seed={seed}", "log.tensorboard=false"])
    run_dir.mkdir(parents=True, exist_ok=True)
    ours = Trainer.from_config(cfg, run_dir)  # seeded as rcnn-train: same weights, same data
    init = {k: v.clone() for k, v in ours.model.state_dict().items()}
    classes, batch = len(ours.classes), cfg.schedule.batch_size
    bare = BareTrainer(cfg, classes, init)  # its LR lambda reads cfg.schedule.max_iter
    cap = CALIBRATION_STEPS + 100 * cfg.schedule.max_iter
    batches = train_loader(ours.train_set, batch, cfg.seed, 0, cap, cfg.dataset.num_workers)
    start, marks, steps = time.perf_counter(), [], cap
    for done, (images, targets) in enumerate(batches):
        if done >= steps or time.perf_counter() - start >= budget_s:
            break
        bare.step(images, targets, {})
        marks.append(time.perf_counter())
        if len(marks) == CALIBRATION_STEPS:
            step_s = statistics.mean(b - a for a, b in zip(marks[2:], marks[3:]))
            steps = CALIBRATION_STEPS + planned_steps(budget_s, marks[-1] - start, step_s)
            cfg.schedule.max_iter = steps
    done = len(marks)
    seconds = time.perf_counter() - start
    dets = predict(bare.model, eval_loader(ours.val_set, cfg.eval.batch_size,
                                           cfg.dataset.num_workers),
                   torch.device("cpu"), list(ours.category_ids))
    metrics = ours.evaluator.evaluate(dets)
    return {"AP": metrics["bbox/AP"], "AP50": metrics["bbox/AP50"], "train_s": seconds,
            "iterations": done, "planned": steps}


def table(records: list[dict]) -> str:
    lines = ["| seed | budget s | rcnn-train iterations | bare iterations | rcnn-train AP50 | "
             "bare AP50 | margin AP50 | rcnn-train AP | bare AP |", "|" + "---|" * 9]
    for r in records:
        o, b = r["ours"], r["bare"]
        lines.append(f"| {r['seed']} | {o['train_s']:.0f} | {o['iterations']} | "
                     f"{b['iterations']} | {o['AP50']:.3f} | {b['AP50']:.3f} | "
                     f"{o['AP50'] - b['AP50']:+.3f} | {o['AP']:.3f} | {b['AP']:.3f} |")
    if len(records) > 1:
        margins = [r["ours"]["AP50"] - r["bare"]["AP50"] for r in records]
        lines.append(f"\nAP50 margin over {len(records)} seeds: mean {statistics.mean(margins):+.3f}"
                     f", min {min(margins):+.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("outputs/time_to_accuracy"))
    parser.add_argument("--smoke", action="store_true", help="a few steps at a tiny size")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both loops")
    args = parser.parse_args()
    overrides = [*args.overrides, *(SMOKE if args.smoke else [])]
    path = args.out / "records.json"
    records = json.loads(path.read_text()) if path.exists() else []
    for seed in args.seeds:
        if any(r["seed"] == seed and r["overrides"] == overrides for r in records):
            continue
        ours = run_ours(seed, overrides, args.out / f"rcnn_train_seed{seed}")
        bare = run_bare(seed, overrides, ours["train_s"], args.out / f"bare_seed{seed}")
        records.append({"seed": seed, "overrides": overrides, "ours": ours, "bare": bare})
        atomic_write_json(path, records)
    print(table([r for r in records if r["overrides"] == overrides and r["seed"] in args.seeds]))


if __name__ == "__main__":
    main()
