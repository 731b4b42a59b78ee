"""The small-data recipe against the plain one on BCCD, at the same budget, scored on a held-out split.

Every run trains on BCCD's ``train`` split (205 images), evaluates (AP and the validation loss)
on ``val`` (87) every ``--eval-period`` iterations, keeps ``best.pt`` by val AP, and is then
scored by ``rcnn-eval`` on ``test`` (72 images, never seen by training or selection) with its
``best.pt`` (also with flip TTA) and its ``last.pt``. Runs go ``--jobs`` at a time, one thread
each, so the runs of a pair share the machine alike and their wall times compare.

    python benchmarks/small_data_bccd.py --variants plain +ema +photometric ... --seeds 0 \
        --inits finetuned --weights CKPT --out outputs/small_data_bccd     # the item ablation
    python benchmarks/small_data_bccd.py --variants plain small_data --seeds 0 1 \
        --inits scratch finetuned --weights CKPT --out outputs/small_data_bccd  # the comparison
    python benchmarks/small_data_bccd.py --report --out outputs/small_data_bccd

``CKPT``: the shapes checkpoint of ``make train`` (the source of the fine-tuned runs). Finished
runs are skipped (``<out>/<run>/record.json``) and a run trained but not yet scored is only
scored, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from rcnn_cli.benchmark import FP32_PLAIN_STEP
from rcnn_cli.io import atomic_write_json

SPLITS = ["dataset.train_split=train", "dataset.val_split=val"]
DATA = ["dataset=voc", "dataset.min_size=320", "dataset.max_size=427"]
COMMON = ["schedule.batch_size=4", "threads=1", "dataset.num_workers=1",
          "log.tensorboard=false", *FP32_PLAIN_STEP]
VARIANTS = {  # name: overrides (the plain recipe is experiment=shapes_cpu, the default's)
    "plain": ["experiment=shapes_cpu"],
    "small_data": ["experiment=small_data"],
    "+ema": ["experiment=shapes_cpu", "schedule.ema.decay=0.99", "schedule.ema.warmup=20"],
    "+ema999": ["experiment=shapes_cpu", "schedule.ema.decay=0.999", "schedule.ema.warmup=100"],
    "+photometric": ["experiment=shapes_cpu", "dataset.photometric_distort=0.5"],
    "+scale_jitter": ["experiment=shapes_cpu", "dataset.scale_jitter=[0.8,1.25]"],
    "+lsj": ["experiment=shapes_cpu", "dataset.scale_jitter=[0.5,1.5]",
             "dataset.scale_jitter_crop=true"],
    "+iou_crop": ["experiment=shapes_cpu", "dataset.iou_crop=true"],
    "+repeat_factor": ["experiment=shapes_cpu", "dataset.repeat_factor_threshold=0.8"],
    "+anchors_auto": ["experiment=shapes_cpu", "anchors=auto"],
    "+vflip": ["experiment=shapes_cpu", "dataset.vflip_prob=0.5"],
}
TTA_SCORES = {"test_best_flip": "flip", "test_best_flips": "flips"}  # record key: eval.tta
TTA_KEYS = ("test_best", "test_last", *TTA_SCORES)
CLASSES = ["Platelets", "RBC", "WBC"]
LOG_STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]")
SMOKE = ["schedule.warmup_iters=2", "log.period=2", "dataset.min_size=96", "dataset.max_size=128"]


def train_command(variant: str, init: str, seed: int, args: argparse.Namespace,
                  run_dir: Path) -> list[str]:
    extra = VARIANTS[variant] + ([f"model.weights={args.weights}"] if init == "finetuned" else [])
    if not any(x.startswith("anchors=") for x in extra):
        extra.append("anchors=fpn_small")  # the shapes checkpoint's anchors
    return [sys.executable, "-m", "rcnn_cli.train", *DATA, f"dataset.root={args.root}", *SPLITS,
            *COMMON, *extra, f"seed={seed}", f"schedule.max_iter={args.max_iter}",
            f"schedule.eval_period={args.eval_period}",
            f"schedule.checkpoint_period={args.max_iter}", *(SMOKE if args.smoke else []),
            f"hydra.run.dir={run_dir}"]


def test_command(ckpt: Path, args: argparse.Namespace, out_dir: Path,
                 tta: str = "none") -> list[str]:
    size = SMOKE[2:] if args.smoke else []
    return [sys.executable, "-m", "rcnn_cli.evaluate", f"ckpt={ckpt}", *DATA,
            f"dataset.root={args.root}", "dataset.train_split=train", "dataset.val_split=test",
            "dataset.num_workers=1", *size, "threads=1", f"eval.tta={tta}",
            f"hydra.run.dir={out_dir}"]


def curve(run_dir: Path) -> list[dict]:
    """The evaluations during training: iteration, val AP, val AP50 and validation loss."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"iteration": r["iteration"], "val_AP": r.get("bbox/AP"),
             "val_AP50": r.get("bbox/AP50"), "val_loss": r.get("val/total_loss")}
            for r in rows if "bbox/AP" in r]


def test_scores(run_dir: Path, name: str, args: argparse.Namespace, tta: str = "none") -> dict:
    out = run_dir / (f"test_{name}" + ("" if tta == "none" else f"_{tta}"))
    subprocess.run(test_command(run_dir / "checkpoints" / f"{name}.pt", args, out, tta),
                   check=True, env=ENV, stdout=subprocess.DEVNULL)
    m = json.loads((out / "metrics.json").read_text())
    return {"AP": m["bbox/AP"], "AP50": m["bbox/AP50"], "AP75": m["bbox/AP75"],
            **{c: m.get(f"bbox/AP-{c}") for c in CLASSES}, "iteration": m["iteration"]}


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_dir_of(key: tuple[str, str, int], out: Path) -> Path:
    variant, init, seed = key
    return out / f"{variant}_{init}_seed{seed}"


def start(key: tuple[str, str, int], args: argparse.Namespace):
    variant, init, seed = key
    run_dir = run_dir_of(key, args.out)
    log = open(args.out / f"{run_dir.name}.log", "w")  # noqa: SIM115 (closed in finish)
    proc = subprocess.Popen(train_command(variant, init, seed, args, run_dir), env=ENV,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, run_dir, log, time.perf_counter()


def exit_walls(running: list[tuple], poll_s: float = 0.5) -> list[float]:
    """Each started run's wall time, taken when that run exits: the runs of a batch end in any
    order, and the first to be scored must not add its scoring to the other's time."""
    walls: dict[int, float] = {}
    while len(walls) < len(running):
        for i, (_, proc, _, _, started) in enumerate(running):
            if i not in walls and proc.poll() is not None:
                walls[i] = time.perf_counter() - started
        time.sleep(poll_s)
    return [walls[i] for i in range(len(running))]


def finish(key, proc, run_dir: Path, log, wall: float, args) -> None:
    code = proc.wait()
    log.close()
    if code != 0:
        raise SystemExit(f"{run_dir.name}: rcnn-train exited with {code}; see {log.name}")
    score(key, run_dir, wall, args)


def score(key, run_dir: Path, wall: float | None, args) -> None:
    """The run's record: its evaluation curve and its checkpoints' scores on the test split."""
    variant, init, seed = key
    record = {"variant": variant, "init": init, "seed": seed, "overrides": VARIANTS[variant],
              "train_wall_s": wall, "curve": curve(run_dir),
              "test_best": test_scores(run_dir, "best", args),
              "test_last": test_scores(run_dir, "last", args),
              **{key: test_scores(run_dir, "best", args, tta) for key, tta in TTA_SCORES.items()}}
    atomic_write_json(run_dir / "record.json", record)


def backfill_tta(out: Path, args: argparse.Namespace) -> None:
    """Adds the TTA test scores to records written before they were measured."""
    for path in sorted(out.glob("*/record.json")):
        record = json.loads(path.read_text())
        missing = {key: tta for key, tta in TTA_SCORES.items() if key not in record}
        for key, tta in missing.items():
            record[key] = test_scores(path.parent, "best", args, tta)
        if missing:
            atomic_write_json(path, record)


def run_all(keys: list[tuple[str, str, int]], args: argparse.Namespace) -> None:
    todo = [k for k in keys if not (run_dir_of(k, args.out) / "record.json").exists()]
    args.out.mkdir(parents=True, exist_ok=True)
    for key in [k for k in todo if (run_dir_of(k, args.out) / "metrics.json").exists()]:
        score(key, run_dir_of(key, args.out), None, args)  # trained, unscored
        todo.remove(key)
    while todo:
        batch, todo = todo[:args.jobs], todo[args.jobs:]
        running = [(k, *start(k, args)) for k in batch]
        for job, wall in zip(running, exit_walls(running)):
            finish(*job[:4], wall, args)


def step_time(run_dir: Path) -> float | None:
    """Mean training step time after the first logging window (start-up)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    times = [r["step_time"] for r in rows if r.get("step_time") is not None][1:]
    return statistics.mean(times) if times else None


def log_wall(run_dir: Path) -> float | None:
    """rcnn-train's own wall time: from the first to the last timestamp of its train.log."""
    try:
        lines = (run_dir / "train.log").read_text().splitlines()
    except OSError:
        return None
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
              for m in map(LOG_STAMP.match, lines) if m]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else None


def records(out: Path) -> list[dict]:
    return [{**json.loads(p.read_text()), "s_per_iter": step_time(p.parent),
             "log_wall_s": log_wall(p.parent)} for p in sorted(out.glob("*/record.json"))]


def fmt(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({' / '.join(f'{v:.3f}' for v in values)})"


def fmt_wall(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.mean(values):.0f}" if values else "-"


def best_score(record: dict) -> float | None:
    """The run's best test AP over its checkpoints and TTA modes (chosen on test: generous)."""
    scores = [record[k].get("AP") for k in TTA_KEYS if k in record]
    return max((v for v in scores if v is not None), default=None)


def margins(recs: list[dict], base: str = "plain", preset: str = "small_data") -> list[str]:
    """``preset`` minus ``base`` in test AP (best.pt, and best.pt with four-flip TTA against
    ``base``'s best of its plain and TTA scores), per init over the seeds both have run."""
    lines = []
    for init in ("scratch", "finetuned"):
        runs = {(r["variant"], r["seed"]): r for r in recs if r["init"] == init}
        seeds = sorted(s for v, s in runs if v == preset and (base, s) in runs)
        if not seeds:
            continue
        plain = [runs[base, s]["test_best"]["AP"] for s in seeds]
        ours = [runs[preset, s]["test_best"]["AP"] for s in seeds]
        tta = [runs[preset, s].get("test_best_flips", {}).get("AP") for s in seeds]
        best_base = [best_score(runs[base, s]) for s in seeds]
        delta = [o - p for o, p in zip(ours, plain)]
        line = (f"- {init}: {preset} - {base}, test AP: {statistics.mean(delta):+.3f} "
                f"(seed {', '.join(f'{s}: {d:+.3f}' for s, d in zip(seeds, delta))})")
        if None not in tta + best_base:
            line += (f"; {preset} with 4-flip TTA - {base}'s best score: "
                     f"{statistics.mean(t - b for t, b in zip(tta, best_base)):+.3f}")
        lines.append(line)
    return ["", *lines] if lines else []


def report(out: Path) -> str:
    """One row per (variant, init): test metrics of best.pt (per seed in brackets)."""
    recs = records(out)
    head = ["variant", "init", "seeds", "test AP", "AP50", "AP75", *CLASSES,
            "AP (last.pt)", "AP (flip TTA)", "AP (4-flip TTA)", "best val AP", "s/iter",
            "train wall s (train.log)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = sorted({(r["variant"], r["init"]) for r in recs},
                    key=lambda g: (g[1], list(VARIANTS).index(g[0])))
    for variant, init in groups:
        rs = [r for r in recs if (r["variant"], r["init"]) == (variant, init)]
        cells = [fmt([r["test_best"][k] for r in rs]) for k in ("AP", "AP50", "AP75", *CLASSES)]
        cells += [fmt([r["test_last"]["AP"] for r in rs]),
                  fmt([r.get("test_best_flip", {}).get("AP") for r in rs]),
                  fmt([r.get("test_best_flips", {}).get("AP") for r in rs]),
                  fmt([max(c["val_AP"] for c in r["curve"]) for r in rs]),
                  fmt([r["s_per_iter"] for r in rs]),
                  fmt_wall([r["log_wall_s"] or r["train_wall_s"] for r in rs])]
        lines.append(f"| {variant} | {init} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += margins(recs)
    lines += [f"- {r['variant']} {r['init']} seed {r['seed']} is reused: {r['reused_from']}"
              for r in recs if r.get("reused_from")]
    lines += ["", "Validation loss at each evaluation (seed order):", ""]
    for r in recs:
        points = ", ".join(f"{c['iteration']}: {c['val_loss']:.3f}" for c in r["curve"]
                           if c["val_loss"] is not None)
        lines.append(f"- {r['variant']} {r['init']} seed {r['seed']}: {points}")
    return "\n".join(lines)


def parse_run(text: str, parser: argparse.ArgumentParser) -> tuple[str, str, int]:
    variant, _, rest = text.partition(":")
    init, _, seed = rest.partition(":")
    if variant not in VARIANTS or init not in ("scratch", "finetuned") or not seed.isdigit():
        parser.error(f"--runs {text}: expected VARIANT:scratch|finetuned:SEED, VARIANT one of "
                     f"{', '.join(VARIANTS)}")
    return variant, init, int(seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data/BCCD")
    parser.add_argument("--weights", help="checkpoint for --inits finetuned")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["plain",
                                                                               "small_data"])
    parser.add_argument("--inits", nargs="+", choices=["scratch", "finetuned"],
                        default=["scratch", "finetuned"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs", nargs="+", metavar="VARIANT:INIT:SEED",
                        help="these runs instead of the grid of --variants x --inits x --seeds")
    parser.add_argument("--max-iter", type=int, default=240)
    parser.add_argument("--eval-period", type=int, default=80)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--out", type=Path, default=Path("outputs/small_data_bccd"))
    parser.add_argument("--smoke", action="store_true", help="tiny images, for the test")
    parser.add_argument("--report", action="store_true", help="only print the table of --out")
    parser.add_argument("--backfill-tta", action="store_true",
                        help="only add the TTA test scores to finished runs without them")
    args = parser.parse_args()
    if args.backfill_tta:
        backfill_tta(args.out, args)
    elif not args.report:
        if not (Path(args.root) / "ImageSets").is_dir():
            parser.error(f"--root {args.root}: no Pascal VOC dataset there")
        keys = [(v, i, s) for i in args.inits for s in args.seeds for v in args.variants]
        if args.runs:
            keys = [parse_run(x, parser) for x in args.runs]
        if any(k[1] == "finetuned" for k in keys) and not args.weights:
            parser.error("a finetuned run needs --weights CKPT")
        run_all(keys, args)
    print(report(args.out))


if __name__ == "__main__":
    main()
