"""rcnn-cli against the bare torchvision loop: training steps and inference, side by side.

``train``: three loops over the same initial weights and batches, steps interleaved with the
order rotated so machine load hits all alike: ``bare torchvision`` (torchvision's
``FasterRCNN`` from its own parts + the reference AdamW/clip/LambdaLR step), ``rcnn-train``
with the speed work off (``pooler.kernel=torchvision``: the framework overhead) and on
(``--speed`` overrides, by default ``pooler.kernel=auto``). Per loop: median step, the split
data / forward / backward / optimizer, the forward split backbone / RPN / RoI heads /
post-processing, peak memory, achieved GFLOP/s, and the largest relative loss difference to the
speed-off loop (the speed work must keep the loss curve).

``infer``: torchvision's reference evaluation loop (``torch.inference_mode``, one image per
forward) against rcnn-predict's detection path (``rcnn_cli.engine.fast_inference``) on the same
weights and images, alternating image batches; images/s, latency, the same splits, and the
largest box difference / label mismatches between the two.

``--sizes`` repeats either for several image sizes (shorter side; a scaling curve), ``--proposals``
(infer) for several RPN post-NMS proposal counts. Every record is appended to ``--json``.

    python benchmarks/vs_torchvision.py train --steps 50 --threads 2
    python benchmarks/vs_torchvision.py infer --images 20 --override backbone=r50_fpn --sizes 800
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.benchmark import FP32_PLAIN_STEP
from rcnn_cli.benchmark.clocks import PARTS, PartClock, phase
from rcnn_cli.benchmark.flops import count_flops, measured_peak
from rcnn_cli.benchmark.memory import PeakMemory, track_allocations
from rcnn_cli.benchmark.peers import BareTrainer, bare_detect, bare_faster_rcnn
from rcnn_cli.benchmark.records import append_record
from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import train_loader
from rcnn_cli.engine import fast_inference
from rcnn_cli.engine.evaluator import load_trained
from rcnn_cli.engine.trainer import Trainer
from rcnn_cli.modeling.build import build_detector

BARE, OFF, ON = "bare torchvision", "rcnn-cli (speed off)", "rcnn-cli (speed on)"


class OursTrainer:
    """``Trainer.step`` + ``after_step`` as ``rcnn-train`` runs them, with phase clocks."""

    def __init__(self, cfg, run_dir: Path):
        run_dir.mkdir(parents=True)
        self.trainer = Trainer.from_config(cfg, run_dir)
        self.model = self.trainer.model
        self.window: dict[str, list[float]] = defaultdict(list)
        self.times: dict = {}
        for name, label in (("forward", "forward"), ("apply_gradients", "optimizer")):
            original = getattr(self.trainer, name)
            setattr(self.trainer, name, self._timed(original, label))

    def _timed(self, fn, label: str):
        def run(*args, **kwargs):
            with phase(self.times, label):
                return fn(*args, **kwargs)
        return run

    def step(self, images, targets, times: dict) -> float:
        self.times = times
        t0 = time.perf_counter()
        values = self.trainer.step([(images, targets)])
        self.trainer.iteration += 1
        for k, v in values.items():
            self.window[k].append(v)
        self.trainer.after_step(self.window, None)
        times["backward"] = (time.perf_counter() - t0 - times.get("forward", 0.0)
                             - times.get("optimizer", 0.0))
        return values["total_loss"]


def compose_cfg(overrides: list[str]):
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        return compose("train", overrides)


def size_overrides(size: int | None) -> list[str]:
    if size is None:
        return []
    return [f"dataset.image_size={size}", f"dataset.min_size={size}",
            f"dataset.max_size={max(size, round(size * 1333 / 800))}"]


def data_seconds(trainer: Trainer, batch: int, workers: int, n: int) -> float:
    """Median wait for the next batch of the training loader alone (``workers`` processes)."""
    loader = iter(train_loader(trainer.train_set, batch, 0, 0, n + 2, workers))
    next(loader)
    waits = []
    for _ in range(n):
        t0 = time.perf_counter()
        next(loader)
        waits.append(time.perf_counter() - t0)
    return statistics.median(waits)


def run_train(args, size: int | None) -> dict:
    # fp32, the plain optimizer step and NCHW in both of our loops whatever the recipe picks:
    # the speed switches that change the numbers are opted into with --speed
    base = ["log.tensorboard=false", "schedule.eval_period=0", f"threads={args.threads}",
            *FP32_PLAIN_STEP,
            f"schedule.checkpoint_period={100 * args.steps}",
            f"schedule.max_iter={100 * args.steps}", *size_overrides(size), *args.override]
    cfg_off = compose_cfg(base + ["pooler.kernel=torchvision"])
    cfg_on = compose_cfg(base + (args.speed or ["pooler.kernel=auto"]))
    with tempfile.TemporaryDirectory() as tmp:
        off = OursTrainer(cfg_off, Path(tmp) / "off")
        on = OursTrainer(cfg_on, Path(tmp) / "on")
        init = off.model.state_dict()
        on.model.load_state_dict(init)
        bare = BareTrainer(cfg_off, len(off.trainer.classes), init)
        loops = {BARE: bare, OFF: off, ON: on}
        total = args.steps + args.warmup
        batches = list(train_loader(off.trainer.train_set, cfg_off.schedule.batch_size, 0, 0,
                                    total, 0))
        data = data_seconds(off.trainer, cfg_off.schedule.batch_size,
                            cfg_off.dataset.num_workers, min(args.steps, 20))
        stats = interleave(loops, batches, args.warmup, torch.device("cpu"), train=True)
        flops = count_flops(lambda: bare.step(*batches[0], {}))
    return summarise(stats, flops, args, cfg_off, extra={"data_s": data})


def interleave(loops: dict, batches: list, warmup: int, device, train: bool) -> dict:
    """Run every batch through every loop, rotating the order; collect per-step seconds,
    phases, parts, peak memory and outputs."""
    stats = {name: defaultdict(list) for name in loops}
    clocks = {name: PartClock(loop.model, device) for name, loop in loops.items()}
    names = list(loops)
    for i, batch in enumerate(batches):
        for name in names[i % len(names):] + names[:i % len(names)]:
            torch.manual_seed(i)
            times: dict = {}
            t0 = time.perf_counter()
            out = loops[name].step(*batch, times) if train else loops[name].detect(batch, times)
            seconds = time.perf_counter() - t0
            parts = clocks[name].take()
            stats[name]["out"].append(out)
            if i < warmup:
                continue
            stats[name]["step"].append(seconds)
            for k, v in {**times, **parts}.items():
                stats[name][k].append(v)
    for c in clocks.values():
        c.close()
    track_allocations()  # after the timing: it slows allocation
    for name, loop in loops.items():
        for i, batch in enumerate(batches[:2]):
            torch.manual_seed(i)
            with PeakMemory(device) as mem:
                loop.step(*batch, {}) if train else loop.detect(batch, {})
            stats[name]["mem"].append(mem.peak_mib)
    return stats


def median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(stats: dict, flops: int, args, cfg, extra: dict) -> dict:
    rows = {}
    for name, s in stats.items():
        step = median(s["step"])
        rows[name] = {"step_s": step, "peak_mem_mib": max((m for m in s["mem"] if m is not None),
                                                          default=None),
                      "gflops_per_s": flops / step / 1e9,
                      **{f"{k}_s": median(s[k]) for k in ("forward", "backward", "optimizer")
                         if s.get(k)},
                      **{f"{k}_s": median(s[k]) for k in PARTS}}
    ref = stats[OFF]["out"]
    for name, s in stats.items():
        diffs = [abs(a - b) / abs(b) for a, b in zip(s["out"], ref)]
        rows[name]["max_rel_loss_diff"] = max(diffs)
        rows[name]["rel_loss_diffs"] = diffs
        rows[name]["speedup_vs_bare"] = rows[BARE]["step_s"] / rows[name]["step_s"]
    return {"mode": "train", "backbone": cfg.backbone.name, "batch": cfg.schedule.batch_size,
            "size": cfg.dataset.min_size, "steps": args.steps, "flops_per_step": flops,
            "loops": rows, **extra}


class Detector:
    """One inference loop: ``bare`` runs torchvision's reference loop, else rcnn-predict's."""

    def __init__(self, model, bare: bool, batch_size: int, speed: dict):
        self.bare, self.batch_size = bare, batch_size
        self.model = model if bare else fast_inference.prepare(model, **speed)

    def detect(self, images, times: dict) -> list[dict]:
        with phase(times, "forward"):
            if self.bare:
                return bare_detect(self.model, images)
            return fast_inference.detect(self.model, images, self.batch_size)


def run_infer(args, size: int | None, proposals: int | None) -> dict:
    over = [f"threads={args.threads}", *size_overrides(size), *args.override]
    if proposals is not None:
        over += [f"model.rpn.pre_nms_top_n_test={proposals}",
                 f"model.rpn.post_nms_top_n_test={proposals}"]
    cfg = compose_cfg(over)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ckpt = load_trained(args.ckpt)[0] if args.ckpt else None
    classes = len(ckpt["classes"]) if ckpt else 3  # random init: shapes' three classes
    ours = build_detector(cfg, classes).eval()
    if ckpt:
        ours.load_state_dict(ckpt["model"])
    bare = bare_faster_rcnn(cfg, classes).eval()
    bare.load_state_dict(ours.state_dict())
    speed = {"fold_bn": not args.no_fold_bn, "channels_last": not args.no_channels_last,
             "compile": args.compile}
    loops = {BARE: Detector(bare, True, 1, speed),
             ON: Detector(ours, False, args.batch, speed)}
    s = cfg.dataset.min_size
    n = args.images + args.batch
    cfg.dataset.val_size = n
    val = build_dataset(cfg.dataset, "val", train=False)
    images = [val[i][0].as_subclass(torch.Tensor) for i in range(n)]
    batches = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]
    t0 = time.perf_counter()
    loops[ON].detect(batches[0], {})  # warm-up (with --compile: the compilation)
    first_s = time.perf_counter() - t0
    stats = interleave(loops, batches, 1, torch.device("cpu"), train=False)
    flops = count_flops(lambda: bare_detect(bare, images[:1]))
    rows = {}
    for name, st in stats.items():
        per_image = [t / args.batch for t in st["step"]]
        rows[name] = {"images_per_s": 1 / median(per_image), "latency_s": median(per_image),
                      "peak_mem_mib": max((m for m in st["mem"] if m is not None), default=None),
                      "gflops_per_s": flops / median(per_image) / 1e9,
                      **{f"{k}_s": median(st[k]) / args.batch for k in PARTS}}
    rows[ON]["speedup_vs_bare"] = rows[ON]["images_per_s"] / rows[BARE]["images_per_s"]
    rows[ON].update(compare_detections(stats[BARE]["out"], stats[ON]["out"]))
    return {"mode": "infer", "backbone": cfg.backbone.name, "batch": args.batch, "size": s,
            "images": args.images, "proposals": cfg.model.rpn.post_nms_top_n_test,
            "flops_per_image": flops, "speed": speed, "first_batch_s": first_s, "loops": rows}


def compare_detections(ref: list[list[dict]], got: list[list[dict]]) -> dict:
    """Largest |box difference| and the number of images whose labels or counts differ."""
    worst, mismatched = 0.0, 0
    for a_batch, b_batch in zip(ref, got):
        for a, b in zip(a_batch, b_batch):
            if a["labels"].shape != b["labels"].shape or not torch.equal(a["labels"], b["labels"]):
                mismatched += 1
                continue
            if len(a["boxes"]):
                worst = max(worst, float((a["boxes"] - b["boxes"]).abs().max()))
    return {"max_box_diff": worst, "images_with_label_mismatch": mismatched}


def print_record(rec: dict) -> None:
    keys = ["step_s", "images_per_s", "speedup_vs_bare", "forward_s", "backward_s", "optimizer_s",
            *(f"{p}_s" for p in PARTS), "peak_mem_mib", "gflops_per_s", "max_rel_loss_diff",
            "max_box_diff", "images_with_label_mismatch"]
    cols = [k for k in keys if any(k in r for r in rec["loops"].values())]
    head = {k: v for k, v in rec.items() if k != "loops"}
    print(json.dumps(head))
    print("| loop | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rec["loops"].items():
        cells = [("" if r.get(k) is None else f"{r[k]:.4g}") for k in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, r in rec["loops"].items():
        if r.get("rel_loss_diffs"):
            print(f"{name}: relative loss difference per step (first 10): "
                  + " ".join(f"{d:.1e}" for d in r["rel_loss_diffs"][:10]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["train", "infer"])
    ap.add_argument("--steps", type=int, default=50, help="train: timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="train: untimed leading steps")
    ap.add_argument("--images", type=int, default=20, help="infer: timed images")
    ap.add_argument("--batch", type=int, default=1, help="infer: rcnn-cli's batch size")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--override", action="append", default=[], help="for every loop")
    ap.add_argument("--speed", action="append", default=[],
                    help="train: overrides of the speed-on loop (default pooler.kernel=auto)")
    ap.add_argument("--no-fold-bn", action="store_true", help="infer: speed switch off")
    ap.add_argument("--no-channels-last", action="store_true", help="infer: speed switch off")
    ap.add_argument("--compile", action="store_true", help="infer: torch.compile the backbone")
    ap.add_argument("--ckpt", help="infer: weights (an rcnn-train checkpoint or export) instead of random")
    ap.add_argument("--sizes", default="", help="comma-separated shorter sides")
    ap.add_argument("--proposals", default="", help="infer: comma-separated proposal counts")
    ap.add_argument("--json", default="outputs/bench/bench.json")
    ap.add_argument("--tag", default="", help="stored with each record (benchmarks/plot_scaling.py)")
    ap.add_argument("--peak", action="store_true", help="also measure matmul/conv GFLOP/s")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s] or [None]
    props = [int(p) for p in args.proposals.split(",") if p] or [None]
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
               "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat()}
    if args.peak:
        machine["peak"] = measured_peak(torch.device("cpu"))
        print(json.dumps(machine))
    for size in sizes:
        for p in props:
            rec = run_train(args, size) if args.mode == "train" else run_infer(args, size, p)
            rec["machine"], rec["command"], rec["tag"] = machine, vars(args), args.tag
            print_record(rec)
            append_record(Path(args.json), rec)


if __name__ == "__main__":
    main()
