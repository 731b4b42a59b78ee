"""The GPU check in one command: everything the CUDA path promises, measured in one short run.

On one GPU (about 6 minutes on an H100):
- training steps of rcnn-cli and of the bare torchvision loop (``rcnn_cli.benchmark.peers``)
  on the same weights and batches, for the default model (R18-FPN) and R50-FPN at 800 px,
  batch 2 and 8, in fp32 / fp16 (with a loss scaler) / bf16: median step, images/s, peak GPU
  memory, and what ``schedule.amp=auto`` picks on this device;
- inference images/s of rcnn-predict's path with the speed switches on and off;
- ``torchrun --nproc_per_node=1`` with NCCL: a short ``rcnn-train`` run end to end.
One JSON record goes to ``--out``; a markdown table is printed at the end.

``--dry-run`` runs the same code on the CPU at tiny sizes (gloo instead of NCCL): what CI runs.

    python benchmarks/gpu_check.py                      # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run            # anywhere, tiny
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.benchmark.peers import BareTrainer
from rcnn_cli.benchmark.records import append_record
from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import train_loader
from rcnn_cli.engine import fast_inference, runtime
from rcnn_cli.engine.trainer import Trainer
from rcnn_cli.modeling.build import build_detector

MODELS = {"r18_fpn (default)": [], "r50_fpn": ["backbone=r50_fpn"]}
PRECISIONS = {"fp32": "none", "fp16": "fp16", "bf16": "bf16"}


def compose_cfg(overrides: list[str]):
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        return compose("train", overrides)


def plan(dry_run: bool) -> dict:
    """Sizes, batches, steps and device of a real run, or of the CPU dry run."""
    if dry_run:
        return {"device": "cpu", "size": 64, "batches": [2], "steps": 1, "warmup": 1,
                "precisions": ["fp32", "bf16"], "infer_images": 2, "backend": "gloo",
                "ddp_iters": 2, "images": (4, 2)}
    return {"device": "cuda", "size": 800, "batches": [2, 8], "steps": 10, "warmup": 3,
            "precisions": list(PRECISIONS), "infer_images": 32, "backend": "nccl",
            "ddp_iters": 4, "images": (16, 8)}


def base_overrides(p: dict, run_iters: int) -> list[str]:
    s = p["size"]
    return [f"device={p['device']}", "log.tensorboard=false", "log.images_every=0",
            "schedule.eval_period=0", f"schedule.max_iter={run_iters}",
            # rows differ by precision alone, as the bare loop's
            "schedule.fused_optimizer=false", "schedule.channels_last=false",
            f"schedule.checkpoint_period={run_iters}", f"dataset.train_size={p['images'][0]}",
            f"dataset.val_size={p['images'][1]}", f"dataset.image_size={s}", f"dataset.min_size={s}",
            f"dataset.max_size={max(s, round(s * 1333 / 800))}", "dataset.num_workers=0"]


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def timed_steps(step, batches: list, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds per step after ``warmup`` steps, and the peak memory (MiB) of the run."""
    reset_peak(device)
    times = []
    for i, (images, targets) in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step(images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), peak_mib(device)


def to_device(batch, device):
    images, targets = batch
    return ([im.to(device) for im in images],
            [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
             for t in targets])


def train_rows(p: dict, tmp: Path) -> list[dict]:
    rows = []
    for model, extra in MODELS.items():
        for batch in p["batches"]:
            for precision in p["precisions"]:
                over = base_overrides(p, 1000) + extra + [
                    f"schedule.batch_size={batch}", f"schedule.amp={PRECISIONS[precision]}"]
                rows.append(train_row(compose_cfg(over), model, batch, precision, p, tmp))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def train_row(cfg, model: str, batch: int, precision: str, p: dict, tmp: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    ours = Trainer.from_config(cfg, run_dir)
    device = ours.device
    n = p["steps"] + p["warmup"]
    batches = [to_device(b, device) for b in
               train_loader(ours.train_set, batch, 0, 0, n, 0)]
    init = {k: v.detach().cpu().clone() for k, v in ours.model.state_dict().items()}
    classes, amp = len(ours.classes), ours.amp

    def ours_step(images, targets):
        ours.step([(images, targets)])
        ours.iteration += 1

    ours_s, ours_mem = timed_steps(ours_step, batches, p["warmup"], device)
    ours = None  # free its GPU memory before the peer's peak is measured
    if device.type == "cuda":
        torch.cuda.empty_cache()
    bare = BareTrainer(cfg, classes, init, device, amp)
    bare_s, bare_mem = timed_steps(lambda im, tg: bare.step(im, tg, {}), batches,
                                   p["warmup"], device)
    return {"section": "train", "model": model, "batch": batch, "precision": precision,
            "size": p["size"], "ours_step_s": ours_s, "bare_step_s": bare_s,
            "ours_images_per_s": batch / ours_s, "speedup_vs_bare": bare_s / ours_s,
            "ours_peak_mib": ours_mem, "bare_peak_mib": bare_mem}


def infer_rows(p: dict) -> list[dict]:
    rows = []
    device = torch.device(p["device"])
    for model, extra in MODELS.items():
        cfg = compose_cfg(base_overrides(p, 1000) + extra)
        cfg.dataset.val_size = p["infer_images"]
        val = build_dataset(cfg.dataset, "val", train=False)
        images = [val[i][0].as_subclass(torch.Tensor).to(device) for i in range(len(val))]
        torch.manual_seed(0)
        base = build_detector(cfg, 3).to(device).eval()
        for switches in ("on", "off"):
            on = switches == "on"
            model_s = fast_inference.prepare(copy.deepcopy(base), fold_bn=on, channels_last=on,
                                             compile=False)
            fast_inference.detect(model_s, images[:2], 2)  # warm-up
            reset_peak(device)
            seconds = _timed(lambda m=model_s, ims=images: fast_inference.detect(m, ims, 4),
                             device)
            rows.append({"section": "infer", "model": model, "speed_switches": switches,
                         "size": p["size"], "images_per_s": len(images) / seconds,
                         "peak_mib": peak_mib(device)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def ddp_row(p: dict, tmp: Path) -> dict:
    """``torchrun --nproc_per_node=1`` of a short rcnn-train run (NCCL on CUDA, gloo dry)."""
    train = shutil.which("rcnn-train") or str(Path(sys.executable).parent / "rcnn-train")
    over = base_overrides(p, p["ddp_iters"]) + [f"dist.backend={p['backend']}", "schedule.batch_size=2",
                                   f"hydra.run.dir={tmp / 'ddp'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=1", train, *over]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    row = {"section": "ddp", "backend": p["backend"], "returncode": done.returncode,
           "wall_s": time.perf_counter() - t0,
           "metrics_written": (tmp / "ddp" / "metrics.json").is_file()}
    if done.returncode != 0:
        row["stderr_tail"] = done.stderr[-2000:]
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| section | model / backend | batch | precision / switches | rcnn-cli | bare "
             "torchvision | speed-up | peak MiB (ours / bare) |", "|---" * 8 + "|"]
    for r in rows:
        if r["section"] == "train":
            lines.append(f"| train | {r['model']} | {r['batch']} | {r['precision']} | "
                         f"{r['ours_images_per_s']:.2f} img/s | "
                         f"{r['batch'] / r['bare_step_s']:.2f} img/s | "
                         f"{r['speedup_vs_bare']:.3f} | {_mib(r['ours_peak_mib'])} / "
                         f"{_mib(r['bare_peak_mib'])} |")
        elif r["section"] == "infer":
            lines.append(f"| infer | {r['model']} | 4 | switches {r['speed_switches']} | "
                         f"{r['images_per_s']:.2f} img/s | | | {_mib(r['peak_mib'])} |")
        else:
            lines.append(f"| torchrun x1 | {r['backend']} | 2 | | exit {r['returncode']}, "
                         f"{r['wall_s']:.0f} s | | | |")
    return "\n".join(lines)


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (what CI runs)")
    ap.add_argument("--out", default="outputs/bench/gpu_check.json")
    ap.add_argument("--skip", action="append", default=[], choices=["train", "infer", "ddp"])
    args = ap.parse_args(argv)
    p = plan(args.dry_run)
    if p["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run, or on a GPU machine")
    device = torch.device(p["device"])
    amp, why = runtime.choose_amp(device if device.type == "cpu" else torch.device("cuda", 0))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "train" not in args.skip:
            rows += train_rows(p, Path(tmp))
        if "infer" not in args.skip:
            rows += infer_rows(p)
        if "ddp" not in args.skip:
            rows.append(ddp_row(p, Path(tmp)))
    record = {"benchmark": "gpu_check", "dry_run": args.dry_run,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(0) if device.type == "cuda"
              else platform.processor() or platform.machine(),
              "torch": torch.__version__, "amp_auto": amp, "amp_auto_reason": why,
              "rows": rows}
    append_record(Path(args.out), record)
    print(f"schedule.amp=auto on this device: {amp} ({why})")
    print(table(rows))
    return record


if __name__ == "__main__":
    main()
