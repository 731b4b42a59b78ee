"""The HTC / DetectoRS ablation ladder on shapes with masks: box AP, mask AP and s/iter.

Seven rungs, one recipe and budget (``experiment=shapes_masks_ladder``), each at every seed: the
five of docs/htc_detectors.md, then HTC and DetectoRS again with group norm in the backbone
(``backbone.norm=gn``: statistics of each image, none carried from training to test):

    python benchmarks/htc_ladder.py --seeds 0 1 --out outputs/htc_ladder --jobs 2
    python benchmarks/htc_ladder.py --smoke  # a few iterations per rung: the program runs
    python benchmarks/htc_ladder.py --rungs htc detectors --seeds 0  # some rungs only
    python benchmarks/htc_ladder.py --time-iters 30  # s/iter of each rung alone on the machine
    python benchmarks/htc_ladder.py --table  # the table of the kept records, nothing trained

Resumable: each run lives in ``<out>/<rung>_seed<S>/`` (rcnn-train's run directory) and ends
with its ``record.json``; a run with a record is not run again (one recorded with other
overrides is refused: use another ``--out``). A finished run's record, with its config and
CPU, is also kept in ``--keep`` (default ``benchmarks/results/htc_ladder/``, committed), so
that the ladder outlives the machine it ran on: a run kept with the config the ladder would
train now is not trained again (one kept with another config is trained again and replaces
it). A run stopped mid-training (Ctrl-C, a killed job) checkpoints every ``--checkpoint-every``
iterations and continues from its newest checkpoint (``resume=<run dir>``); one stopped before
its first checkpoint starts afresh.
``--jobs N`` trains N runs side by side, one thread each (``OMP_NUM_THREADS=1 threads=1
dataset.num_workers=1``; each run's console goes to its ``console.log``), costliest rungs first.

s/iter is the mean training step time (data wait included) over the logging windows, the first
window of each start or resumed start left out (it holds the start-up). With ``--jobs`` it is a
one-thread time on a shared machine. ``--time-iters N`` measures s/iter again with nothing
beside it: each rung trains N fresh iterations alone (``--time-threads``, default one thread)
into ``<out>/timing/`` and ``<keep>/timing.json``; the table shows both columns. Writes
``<out>/ladder.json`` (the records of the requested runs) and prints a markdown table of the
means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.engine.resume import saved_config_differences
from rcnn_cli.engine.runtime import config_dict, cpu_model
from rcnn_cli.io import atomic_write_json

DETECTORS = ["model=detectors", "backbone.sac=true", "backbone.sac_deformable=true",
             "backbone.rfp_steps=2"]
RUNGS = {  # id: (row name, overrides)
    "cascade_mask_last": ("Cascade Mask R-CNN (last-stage mask)", ["model=cascade_mask"]),
    "cascade_mask_stages": ("Cascade Mask R-CNN (per-stage masks)",
                            ["model=cascade_mask", "model.cascade.stage_masks=true"]),
    "htc_no_semantic": ("HTC without semantic", ["model=htc", "model.htc.semantic=false"]),
    "htc": ("HTC", ["model=htc"]),
    "detectors": ("DetectoRS (HTC + RFP + SAC)", DETECTORS),
    # the last two again with group norm in the backbone: batch-independent statistics
    "htc_gn": ("HTC, GN backbone", ["model=htc", "backbone.norm=gn"]),
    "detectors_gn": ("DetectoRS, GN backbone", [*DETECTORS, "backbone.norm=gn"]),
}
SMOKE_DATA = ["dataset.train_size=8", "dataset.image_size=64"]
SMOKE = ["schedule.max_iter=4", "schedule.warmup_iters=2", "dataset.val_size=4", "log.period=2",
         *SMOKE_DATA]
ONE_THREAD = ["threads=1", "dataset.num_workers=1"]
TIME_WINDOW = 5  # iterations per logged window of a timing run
RECIPE = "experiment=shapes_masks_ladder"
KEEP = Path(__file__).resolve().parent / "results" / "htc_ladder"
RECORD = "record.json"
STARTS = "starts.json"  # per run: the metrics.jsonl line at which each start began
TIMING = "timing.json"  # per rung: s/iter trained alone (--time-iters)
# keys that change how a run executes, not what it learns: a kept run may differ in them
EXECUTION = ("schedule.checkpoint_period", "schedule.keep_checkpoints", "dataset.num_workers",
             "threads", "log.", "resume")


def segments(run_dir: Path) -> list[list[dict]]:
    """metrics.jsonl split at the starts ``mark_start`` noted (one segment without marks)."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    marks = json.loads((run_dir / STARTS).read_text()) if (run_dir / STARTS).is_file() else [0]
    return [lines[a:b] for a, b in zip(marks, [*marks[1:], len(lines)])]


def mark_start(run_dir: Path) -> None:
    """Note the line at which this start's metrics begin."""
    metrics = run_dir / "metrics.jsonl"
    line = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    marks = [0] if line else []  # a run begun without marks began at line 0
    if (run_dir / STARTS).is_file():
        marks = json.loads((run_dir / STARTS).read_text())
    atomic_write_json(run_dir / STARTS, [*marks, line])


def step_time(run_dir: Path) -> float | None:
    """Mean ``step_time`` over the logged windows: each start's first window left out (it holds
    the start-up), a window logged again after a resume counted once (its latest value)."""
    windows = {}
    for segment in segments(run_dir):
        rows = [r for r in segment if r.get("step_time") is not None]
        windows.update((r["iteration"], r["step_time"]) for r in rows[1:])
    return statistics.mean(windows.values()) if windows else None


def resume_args(run_dir: Path) -> list[str]:
    """``resume=<run_dir>`` when it has a checkpoint; otherwise the partial run (if any) is
    cleared, so that its metrics do not mix with the new start's."""
    if (run_dir / "checkpoints" / "index.json").is_file():
        return [f"resume={run_dir}"]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return []


def train_command(overrides: list[str], seed: int, run_dir: Path, checkpoint_every: int,
                  one_thread: bool, resume: list[str]) -> list[str]:
    """rcnn-train (``python -m rcnn_cli.train``) on the ladder recipe; the checkpoint period,
    threads and ``resume`` only change how the run executes (rcnn-train's resume check lets
    them differ between starts)."""
    return [sys.executable, "-m", "rcnn_cli.train", RECIPE, *overrides, f"seed={seed}",
            "log.tensorboard=false", f"hydra.run.dir={run_dir}",
            f"schedule.checkpoint_period={checkpoint_every}", "schedule.keep_checkpoints=1",
            *(ONE_THREAD if one_thread else []), *resume]


def finished(run_dir: Path, overrides: list[str]) -> dict | None:
    """The run's record, if it finished with these overrides; another run's is refused."""
    path = run_dir / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record["overrides"] != overrides:
        raise SystemExit(f"{run_dir} holds a run with other overrides ({record['overrides']}, "
                         f"not {overrides}): choose another --out")
    return record


def planned_config(overrides: list[str], seed: int) -> DictConfig:
    """The config rcnn-train composes for this run (what a kept record must match)."""
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        return compose("train", overrides=[RECIPE, *overrides, f"seed={seed}"])


def kept_path(keep: Path, rung: str, seed: int) -> Path:
    return keep / f"{rung}_seed{seed}.json"


def kept(keep: Path, rung: str, seed: int, cfg: DictConfig) -> dict | None:
    """The kept record of this run if it trained with ``cfg`` (``EXECUTION`` keys may differ:
    the budget, recipe, model and seed may not); None otherwise."""
    path = kept_path(keep, rung, seed)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    diff = saved_config_differences(record["config"], cfg, may_change=EXECUTION)
    if diff:
        print(f"{path}: kept with another config, trained again:\n  " + "\n  ".join(diff),
              flush=True)
        return None
    return record


def keep_record(keep: Path, record: dict, cfg: DictConfig) -> dict:
    """The finished run's record with its config (and this machine's CPU, for one finished
    by an earlier version of this program) into ``keep``."""
    record = {"cpu": cpu_model(), **record, "config": config_dict(cfg)}
    keep.mkdir(parents=True, exist_ok=True)
    atomic_write_json(kept_path(keep, record["rung"], record["seed"]), record)
    return record


def run(rung: str, overrides: list[str], seed: int, cfg: DictConfig, out: Path, keep: Path,
        checkpoint_every: int, one_thread: bool) -> dict:
    """One rung at one seed (``cfg``: its ``planned_config``): skipped when kept or when it
    has a record (then kept), resumed when it has a checkpoint."""
    record = kept(keep, rung, seed, cfg)
    if record is not None:
        print(f"{kept_path(keep, rung, seed)}: kept, skipped", flush=True)
        return record
    run_dir = out / f"{rung}_seed{seed}"
    record = finished(run_dir, overrides)
    if record is not None:
        print(f"{run_dir}: finished before, skipped", flush=True)
        return keep_record(keep, record, cfg)
    resume = resume_args(run_dir)
    command = train_command(overrides, seed, run_dir, checkpoint_every, one_thread, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_start(run_dir)
    if one_thread:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(run_dir / "console.log", "a") as log:
            subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    else:
        subprocess.run(command, check=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = {"rung": rung, "overrides": overrides, "seed": seed, "run_dir": str(run_dir),
              "box_AP": metrics.get("bbox/AP"), "mask_AP": metrics.get("segm/AP"),
              "s_per_iter": step_time(run_dir), "starts": len(segments(run_dir)),
              "threads": 1 if one_thread else None, "cpu": cpu_model()}
    atomic_write_json(run_dir / RECORD, record)
    return keep_record(keep, record, cfg)


def mean(records: list[dict], key: str) -> str:
    values = [r[key] for r in records if r[key] is not None]
    return f"{statistics.mean(values):.3f}" if values else "-"


def table(records: list[dict], timing: dict | None = None) -> str:
    """The means per rung; ``timing`` (rung: s/iter alone) adds its column."""
    timing = timing or {}
    rows = ["| rung | box AP | mask AP | s/iter (training) | s/iter (alone) | seeds |",
            "|---|---|---|---|---|---|"]
    for rung, (name, _) in RUNGS.items():
        rs = [r for r in records if r["rung"] == rung]
        if rs or rung in timing:
            alone = f"{timing[rung]['s_per_iter']:.3f}" if rung in timing else "-"
            rows.append(f"| {name} | {mean(rs, 'box_AP')} | {mean(rs, 'mask_AP')} | "
                        f"{mean(rs, 's_per_iter')} | {alone} | {len(rs)} |")
    return "\n".join(rows)


def time_rung(rung: str, overrides: list[str], out: Path, iters: int, threads: int) -> dict:
    """s/iter of one rung trained alone: ``iters`` fresh iterations at seed 0, logged every
    ``TIME_WINDOW``; the first window (start-up) is left out. The warm-up is shortened and the
    final evaluation is on 4 images: neither is timed."""
    run_dir = out / "timing" / rung
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [*train_command(overrides, 0, run_dir, iters, False, []),
               f"schedule.max_iter={iters}", "schedule.warmup_iters=1", "dataset.val_size=4",
               f"log.period={TIME_WINDOW}", f"threads={threads}", "dataset.num_workers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run_dir.mkdir(parents=True)
    with open(run_dir / "console.log", "w") as log:
        subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    return {"s_per_iter": step_time(run_dir), "iters": iters, "threads": threads}


def time_all(rungs: list[str], out: Path, keep: Path, iters: int, threads: int,
             extra: list[str]) -> dict:
    """Every rung timed alone, one after another; ``<keep>/timing.json`` rewritten after each."""
    timing = load_timing(keep)
    for rung in rungs:
        timing[rung] = {**time_rung(rung, RUNGS[rung][1] + extra, out, iters, threads),
                        "cpu": cpu_model()}
        keep.mkdir(parents=True, exist_ok=True)
        atomic_write_json(keep / TIMING, timing)
        print(f"{rung}: {timing[rung]['s_per_iter']:.3f} s/iter alone", flush=True)
    return timing


def collect(keep: Path, plan: list[tuple[str, list[str], int]]) -> list[dict]:
    """The kept records of the planned runs, in plan order."""
    paths = (kept_path(keep, rung, seed) for rung, _, seed in plan)
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def collect_any(keep: Path, seeds: list[int]) -> list[dict]:
    """The kept records of every rung at these seeds, whatever their config."""
    paths = (kept_path(keep, rung, seed) for rung in RUNGS for seed in seeds)
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def load_timing(keep: Path) -> dict:
    path = keep / TIMING
    return json.loads(path.read_text()) if path.is_file() else {}


def run_all(plan: list[tuple[str, list[str], int]], out: Path, keep: Path, jobs: int,
            checkpoint_every: int) -> list[str]:
    """Every planned run, ``jobs`` at a time; ``ladder.json`` rewritten as each one ends.
    Returns the failures (the other runs go on)."""
    failures, lock = [], threading.Lock()
    configs = {(rung, seed): planned_config(ov, seed) for rung, ov, seed in plan}

    def one(item):
        rung, overrides, seed = item
        try:
            run(rung, overrides, seed, configs[rung, seed], out, keep, checkpoint_every,
                one_thread=jobs > 1)
        except (subprocess.CalledProcessError, OSError) as e:
            failures.append(f"{rung} seed {seed}: {e}")
        with lock:
            atomic_write_json(out / "ladder.json", collect(keep, plan))

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        list(pool.map(one, plan))
    except KeyboardInterrupt:  # the running trainings got it too: they checkpoint and stop
        pool.shutdown(cancel_futures=True)
        raise
    pool.shutdown()
    return failures


def run_order(rungs: list[str], seeds: list[int], jobs: int) -> list[tuple[str, int]]:
    """One run at a time: seed by seed (a whole ladder per seed comes first). Side by side:
    the costliest rungs first (``RUNGS`` is in about rising step time), so that the jobs end
    together instead of one DetectoRS run finishing alone."""
    if jobs == 1:
        return [(rung, seed) for seed in seeds for rung in rungs]
    return [(rung, seed) for rung in sorted(rungs, key=list(RUNGS).index, reverse=True)
            for seed in seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("outputs/htc_ladder"))
    parser.add_argument("--rungs", nargs="+", choices=list(RUNGS), default=list(RUNGS))
    parser.add_argument("--smoke", action="store_true", help="a few iterations per rung")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs side by side, one thread each (default 1: all threads)")
    parser.add_argument("--checkpoint-every", type=int, default=200,
                        help="iterations between checkpoints (a stopped run resumes there)")
    parser.add_argument("--time-iters", type=int, default=0,
                        help="time each rung alone for this many iterations (no ladder runs)")
    parser.add_argument("--time-threads", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None,
                        help=f"where finished runs' records are kept (default {KEEP}; "
                             "<out>/kept with --smoke)")
    parser.add_argument("--table", action="store_true",
                        help="print the table of the kept records and timing, train nothing")
    args = parser.parse_args()
    keep = args.keep or (args.out / "kept" if args.smoke else KEEP)
    if min(args.jobs, args.checkpoint_every, args.time_threads) < 1:
        parser.error("--jobs, --checkpoint-every and --time-threads must be >= 1")
    if args.time_iters < 0 or 0 < args.time_iters < 2 * TIME_WINDOW:
        parser.error(f"--time-iters must be >= {2 * TIME_WINDOW} (two logged windows), or 0")
    if args.table:
        print(table(collect_any(keep, args.seeds), load_timing(keep)))
        return
    if args.time_iters:
        timing = time_all(args.rungs, args.out, keep, args.time_iters, args.time_threads,
                          SMOKE_DATA if args.smoke else [])
        print(table(collect_any(keep, args.seeds), timing))
        return
    plan = [(rung, RUNGS[rung][1] + (SMOKE if args.smoke else []), seed)
            for rung, seed in run_order(args.rungs, args.seeds, args.jobs)]
    for rung, overrides, seed in plan:  # refuse a foreign record before any training
        finished(args.out / f"{rung}_seed{seed}", overrides)
    failures = run_all(plan, args.out, keep, args.jobs, args.checkpoint_every)
    print(table(collect(keep, plan), load_timing(keep)))
    if failures:
        raise SystemExit("failed (re-run to resume them):\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
