"""COCO evaluation time of both backends, and rcnn-predict throughput.

1. A generated ground truth of ``--images`` images (4 classes, crowd regions, empty images)
   with exactly ``--dets`` detections per image; each backend runs loadRes + evaluate +
   accumulate + summarize (``rcnn_cli.evaluation.coco.coco_evaluate``), side by side in this
   process, ``--repeat`` times (best time kept). The 12 stats must agree to 1e-6.
2. ``rcnn-predict``'s loop (``rcnn_cli.engine.predictor.predict_images``: read, infer, draw,
   write PNG + JSON) on ``--predict-images`` shapes validation images at the dataset's default
   128 px, for the default model (ResNet-18 FPN) and ``backbone=r50_fpn``. Random-init weights
   (no pretrained weights here): their near-uniform scores give the full 100 detections per
   image, the worst case for post-processing and JSON size. ``--trained CKPT`` also times a
   trained checkpoint on its own validation split.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/eval_speed.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the generator lives with the tests


def bench_backends(images: int, dets: int, repeat: int) -> dict:
    from rcnn_cli.evaluation.coco import BACKENDS, coco_evaluate
    from tests.evaluation.synthetic import generate

    gt, results = generate(images, seed=0, dets_per_image=dets)
    print(f"evaluation: {len(gt['images'])} images, {len(gt['annotations'])} ground-truth "
          f"boxes ({sum(a['iscrowd'] for a in gt['annotations'])} crowd), {len(results)} "
          f"detections, bbox")
    best, stats = {}, {}
    for _ in range(repeat):
        for backend in BACKENDS:
            t0 = time.perf_counter()
            phases: dict[str, float] = {}
            res = coco_evaluate(gt, results, "bbox", backend, phases)
            phases["total"] = time.perf_counter() - t0
            if phases["total"] < best.get(backend, {}).get("total", float("inf")):
                best[backend] = phases
            stats[backend] = res.stats
    print(f"  {'backend':17s} {'total':>8s} {'load':>8s} {'eval+acc':>9s}  (seconds)")
    for backend in BACKENDS:
        t = best[backend]
        print(f"  {backend:17s} {t['total']:8.2f} {t['load']:8.2f} {t['evaluate']:9.2f}"
              f"   AP={stats[backend][0]:.6f}")
    fast, ref = best["faster-coco-eval"], best["pycocotools"]
    diff = float(np.abs(stats["faster-coco-eval"] - stats["pycocotools"]).max())
    print(f"  ratio pycocotools / faster-coco-eval: total {ref['total'] / fast['total']:.1f}x, "
          f"evaluate+accumulate+summarize {ref['evaluate'] / fast['evaluate']:.1f}x; "
          f"max |stat difference| over the 12 stats: {diff:.1e}")
    return {"mode": "eval", "images": images, "dets_per_image": dets, "max_stat_diff": diff,
            "seconds": best}


def bench_predict(num: int, batch_size: int, backbones: list[str],
                  trained: str | None) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import rcnn_cli.config  # noqa: F401
    from rcnn_cli.data.shapes import CLASSES
    from rcnn_cli.engine.export import export_model
    from rcnn_cli.engine.runtime import config_dict
    from rcnn_cli.modeling.build import build_detector

    print(f"rcnn-predict: {num} shapes val images, batch_size={batch_size}, "
          f"torch threads={torch.get_num_threads()}")
    for backbone in backbones:
        with tempfile.TemporaryDirectory() as tmp:
            GlobalHydra.instance().clear()
            with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
                cfg = compose("train", [f"backbone={backbone}", f"dataset.val_size={num}"])
                torch.manual_seed(0)
                model = build_detector(cfg, len(CLASSES))
                export_model(Path(tmp) / "m", model.state_dict(), list(CLASSES), [1, 2, 3],
                             config_dict(cfg), 0)
                pcfg = compose("predict", [f"ckpt={tmp}/m", "input=dataset", "device=cpu",
                                           f"batch_size={batch_size}", f"output={tmp}/out"])
            _time_predict(pcfg, f"{backbone} (random init)")
    if trained:
        with tempfile.TemporaryDirectory() as tmp:
            GlobalHydra.instance().clear()
            with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
                pcfg = compose("predict", [f"ckpt={trained}", "input=dataset", "device=cpu",
                                           f"batch_size={batch_size}", f"output={tmp}/out",
                                           f"limit={num}"])
            _time_predict(pcfg, "trained")


def _time_predict(pcfg, label: str) -> None:
    from rcnn_cli.engine.predictor import predict_images

    predict_images(pcfg)  # warm-up
    s = predict_images(pcfg)
    print(f"  {label:20s} {s['images_per_s']:6.2f} images/s  ({s['images']} images "
          f"in {s['seconds']:.1f} s, {s['detections']} detections)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default="5000", help="comma-separated counts (a scaling curve)")
    p.add_argument("--json", help="append one record per count to this JSON list")
    p.add_argument("--tag", default="", help="stored with each record (benchmarks/plot_scaling.py)")
    p.add_argument("--dets", type=int, default=100)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--predict-images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--trained", help="also time this checkpoint/export (its own dataset config)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if not args.skip_eval:
        for n in (int(x) for x in args.images.split(",")):
            record = bench_backends(n, args.dets, args.repeat)
            if args.json:
                from rcnn_cli.benchmark.records import append_record

                append_record(Path(args.json), {**record, "tag": args.tag})
    if not args.skip_predict:
        bench_predict(args.predict_images, args.batch_size, ["r18_fpn", "r50_fpn"],
                      args.trained)


if __name__ == "__main__":
    main()
