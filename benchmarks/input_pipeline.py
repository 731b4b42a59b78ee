"""The input pipeline is never the bottleneck, and workers do not grow.

``step``: train the given recipe (default: plain ``rcnn-train``) for ``--iters`` iterations.
The trainer records per iteration ``data_time`` (waiting for the batch) and ``step_time``
(data + forward/backward/update) in metrics.jsonl; the first ``--warmup`` iterations (worker
start-up, first allocations) are left out. Also reports the loader alone (no model) in
images/s next to the training step's images/s.

``rss``: a synthetic COCO annotation file with ``--images`` images (1-7 boxes each, category
ids {3, 7, 42}; file names cycle over 64 small JPEGs), loaded as ``dataset=coco`` (index
parsed once, then from the cache) and iterated for one epoch with ``--workers`` workers
(``--targets-only``: each sample reads its file name and targets from the index but skips
decoding and transforming the image, so a 100k-image epoch fits in minutes on a shared CPU).
Every 1/20 of the epoch it samples each worker's RSS and USS (private pages, from
/proc/<pid>/smaps_rollup). ``--baseline naive`` runs the same loop over a dataset that keeps
the parsed JSON (a dict per image) instead of the compact arrays, for comparison.

    python benchmarks/input_pipeline.py step
    python benchmarks/input_pipeline.py step --iters 12 dataset=voc dataset.root=data/BCCD
    python benchmarks/input_pipeline.py rss --images 100000 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import rcnn_cli.config  # noqa: F401

    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        return hydra_compose("train", overrides=overrides)


def loader_images_per_s(cfg, batches: int) -> float:
    from rcnn_cli.data.build import build_dataset
    from rcnn_cli.data.loader import train_loader

    view = build_dataset(cfg.dataset, "train", train=True)
    loader = train_loader(view, cfg.schedule.batch_size, cfg.seed, 0, batches + 2,
                          cfg.dataset.num_workers)
    it = iter(loader)
    for _ in range(2):  # worker start-up
        next(it)
    t0 = time.perf_counter()
    n = sum(len(images) for images, _ in it)
    return n / (time.perf_counter() - t0)


def bench_step(args, overrides: list[str]) -> None:
    from rcnn_cli.engine.train import train

    n = args.iters
    extra = [f"schedule.max_iter={n}", "schedule.eval_period=0", f"schedule.checkpoint_period={n}",
             "log.period=1", "log.tensorboard=false"]
    cfg = compose(overrides + extra)
    if cfg.dataset.name == "shapes":
        cfg = compose(overrides + extra + ["dataset.val_size=4"])
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run")
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
    rows = [r for r in rows if "data_time" in r and r["iteration"] > args.warmup]
    data = np.array([r["data_time"] for r in rows])
    step = np.array([r["step_time"] for r in rows])
    bs = cfg.schedule.batch_size
    loader_ips = loader_images_per_s(cfg, args.loader_batches)
    print(f"dataset={cfg.dataset.name} model={cfg.model.name} backbone={cfg.backbone.name} "
          f"batch_size={bs} num_workers={cfg.dataset.num_workers} "
          f"min_size={cfg.dataset.min_size} max_size={cfg.dataset.max_size}")
    print(f"iterations measured: {len(rows)} (after {args.warmup} warm-up)")
    print(f"data time per step:  mean {data.mean() * 1e3:8.1f} ms  median "
          f"{np.median(data) * 1e3:8.1f} ms")
    print(f"step time:           mean {step.mean() * 1e3:8.1f} ms  median "
          f"{np.median(step) * 1e3:8.1f} ms")
    print(f"data time / step time: {data.sum() / step.sum() * 100:.2f} %  (target < 5 %)")
    print(f"training step images/s: {bs / (step - data).mean():8.2f}")
    print(f"loader alone images/s:  {loader_ips:8.2f}  ({args.loader_batches} batches)")


# --- rss ------------------------------------------------------------------------------------


def synthetic_coco(out: Path, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    sizes = [(64, 48) if k % 2 == 0 else (48, 64) for k in range(64)]
    for k, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(img_dir / f"{k:02d}.jpg", quality=90)
    cats = [3, 7, 42]
    images, anns = [], []
    for i in range(1, n_images + 1):
        w, h = sizes[i % 64]
        images.append({"id": i, "file_name": f"{i % 64:02d}.jpg", "width": w, "height": h})
        for _ in range(1 + i % 7):
            x, y = rng.uniform(0, w - 12), rng.uniform(0, h - 12)
            bw, bh = rng.uniform(4, w - x), rng.uniform(4, h - y)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cats[len(anns) % 3],
                         "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                         "area": round(bw * bh, 2), "iscrowd": 0})
    path = out / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": c, "name": f"c{c}"} for c in cats]}))
    return path, img_dir


class NaiveDataset:
    """The baseline: the parsed JSON kept as Python objects (a dict per image / annotation)."""

    def __init__(self, json_path: Path, images_dir: Path):
        data = json.loads(json_path.read_text())
        self.images = data["images"]
        self.anns: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            self.anns.setdefault(a["image_id"], []).append(a)
        self.images_dir = images_dir
        self.classes = [c["name"] for c in data["categories"]]
        self.label = {c["id"]: k + 1 for k, c in enumerate(data["categories"])}

    def __len__(self) -> int:
        return len(self.images)

    def aspect_ratios(self) -> np.ndarray:
        return np.array([im["width"] / im["height"] for im in self.images])

    def file_name(self, index: int) -> str:
        return self.images[index]["file_name"]

    def target(self, index: int) -> dict:
        im = self.images[index]
        anns = self.anns.get(im["id"], [])
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns], np.float32).reshape(-1, 4)
        labels = np.array([self.label[a["category_id"]] for a in anns], np.int64)
        return {"boxes": boxes, "labels": labels, "image_id": im["id"]}

    def raw(self, index: int):
        from rcnn_cli.data.images import read_image

        image = read_image(self.images_dir / self.file_name(index))
        return image, self.target(index)


class TargetsOnly:
    """Everything a training sample reads from the index (file name, boxes, labels) without
    decoding the image: one epoch over 100k images in minutes on a shared CPU."""

    def __init__(self, raw):
        self.raw = raw
        self.file_name = raw.store.file_name if hasattr(raw, "store") else raw.file_name

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, item):
        index = item[0]
        return self.file_name(index), self.raw.target(index)


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, USS) of a process in MiB, from /proc."""
    rss = uss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key == "Rss":
            rss = int(rest.split()[0])
        elif key in ("Private_Clean", "Private_Dirty"):
            uss += int(rest.split()[0])
    return rss / 1024, uss / 1024


def bench_rss(args) -> None:
    from omegaconf import OmegaConf

    from rcnn_cli.config import CocoConf
    from rcnn_cli.data.build import build_raw_dataset
    from rcnn_cli.data.loader import DetectionView, IterationBatchSampler, collate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-rss-"))
    json_path = work / "train.json"
    if not json_path.exists():
        t0 = time.perf_counter()
        synthetic_coco(work, args.images)
        print(f"wrote {json_path} ({json_path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s")
    os.environ["RCNN_CLI_CACHE"] = tempfile.mkdtemp(prefix="cache-", dir=work)  # a real parse
    cfg = OmegaConf.merge(OmegaConf.structured(CocoConf), {
        "train_json": str(json_path), "train_images": str(work / "images"),
        "val_json": str(json_path), "val_images": str(work / "images"),
        "min_size": 64, "max_size": 86, "num_workers": args.workers})
    if args.baseline == "naive":
        t0 = time.perf_counter()
        raw = NaiveDataset(json_path, work / "images")
        print(f"naive baseline: JSON kept as Python objects, loaded in "
              f"{time.perf_counter() - t0:.1f} s")
    else:
        for label in ("parse + validate + cache", "from the cache"):
            t0 = time.perf_counter()
            raw = build_raw_dataset(cfg, "train")
            print(f"index {label}: {time.perf_counter() - t0:.1f} s")
        s = raw.store
        nbytes = sum(getattr(s, k).nbytes for k in ("image_ids", "widths", "heights",
                                                   "file_names", "ann_offsets", "boxes",
                                                   "category_ids", "ann_ids", "areas", "crowd"))
        print(f"compact index: {len(s)} images, {len(s.boxes)} boxes, {nbytes / 2**20:.1f} MiB")
    from torch.utils.data import DataLoader

    view = DetectionView(raw, train=True, flip_prob=0.5, min_sizes=[64], max_size=86,
                         aspect_grouping=True)
    sampler = IterationBatchSampler(len(view), args.batch_size, 0, 0, 1, view.group_ids())
    if args.targets_only:
        view = TargetsOnly(raw)
    per_epoch = sampler.per_epoch if not args.batches else min(args.batches, sampler.per_epoch)
    sampler.stop = per_epoch
    loader = DataLoader(view, batch_sampler=sampler, collate_fn=collate,
                        num_workers=args.workers, prefetch_factor=2)
    it = iter(loader)
    pids = [w.pid for w in it._workers]
    every = max(1, per_epoch // 20)
    print(f"{'targets only (no image decode)' if args.targets_only else 'full pipeline'}; "
          f"parent RSS {memory_mb(os.getpid())[0]:.0f} MiB; {args.workers} workers, batch "
          f"{args.batch_size}, {per_epoch} batches = {per_epoch * args.batch_size} images")
    print(f"{'batch':>7} {'images':>8} {'worker RSS MiB (each)':>32} {'worker USS MiB (each)':>32}"
          f" {'s':>6}")
    t0, samples = time.perf_counter(), []
    for b, _ in enumerate(it, 1):
        if b % every == 0 or b == per_epoch:
            mem = [memory_mb(p) for p in pids]
            samples.append((b, [m[0] for m in mem], [m[1] for m in mem]))
            print(f"{b:7d} {b * args.batch_size:8d} "
                  f"{' '.join(f'{m[0]:7.1f}' for m in mem):>32} "
                  f"{' '.join(f'{m[1]:7.1f}' for m in mem):>32} {time.perf_counter() - t0:6.0f}")
            sys.stdout.flush()
    first, last = samples[0], samples[-1]
    print(f"growth from {first[0]} to {last[0]} batches: RSS "
          f"{np.mean(last[1]) - np.mean(first[1]):+.1f} MiB, USS "
          f"{np.mean(last[2]) - np.mean(first[2]):+.1f} MiB per worker (mean)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step")
    s.add_argument("--iters", type=int, default=40)
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--loader-batches", type=int, default=40)
    r = sub.add_parser("rss")
    r.add_argument("--images", type=int, default=100_000)
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--batches", type=int, default=0, help="stop early (0: one epoch)")
    r.add_argument("--baseline", choices=["none", "naive"], default="none")
    r.add_argument("--workdir", default=None, help="reuse a generated dataset")
    r.add_argument("--targets-only", action="store_true",
                   help="read each sample's file name and targets, skip image decoding")
    args, overrides = p.parse_known_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.what == "step":
        bench_step(args, overrides)
    else:
        bench_rss(args)


if __name__ == "__main__":
    main()
