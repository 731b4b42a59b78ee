"""Inference images/s: rcnn-predict's eager path (speed switches on) vs the rcnn-export ONNX
file in ONNX Runtime, on the same images, one image per forward, alternating image by image so
machine load hits both alike. Also the largest box / score difference between the two.

    python benchmarks/export_speed.py --ckpt outputs/train/<run>/export --size 800 --images 20
    python benchmarks/export_speed.py --override backbone=r50_fpn --size 800   # random weights

The model is exported first (untimed) with ``--size`` as its resize target, like the eager
model. Images: the checkpoint's (or shapes') validation split at ``--size`` (shorter side); one
JSON record is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import rcnn_cli.config  # noqa: F401
from rcnn_cli.data.build import build_dataset
from rcnn_cli.deploy.graph import build_deploy_graph
from rcnn_cli.deploy.onnx import export_onnx
from rcnn_cli.deploy.onnx_runtime import OnnxDetector
from rcnn_cli.deploy.parity import differences
from rcnn_cli.engine import fast_inference
from rcnn_cli.engine.evaluator import load_trained
from rcnn_cli.modeling.build import build_detector


def trained(args) -> tuple[dict, object]:
    if args.ckpt:
        ckpt, cfg = load_trained(args.ckpt)
        cfg.dataset.min_size = cfg.dataset.max_size = args.size
        if "image_size" in cfg.dataset:  # shapes: draw the images at that size too
            cfg.dataset.image_size = args.size
        return ckpt, cfg
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        cfg = compose("train", overrides=[f"dataset.image_size={args.size}", *args.override])
    torch.manual_seed(0)
    return {"model": build_detector(cfg, 3).state_dict(), "classes": ["a", "b", "c"]}, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="checkpoint or export (default: random weights)")
    ap.add_argument("--override", action="append", default=[], help="random-weight config")
    ap.add_argument("--size", type=int, default=800)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt, cfg = trained(args)
    cfg.dataset.val_size = args.images + 1
    val = build_dataset(cfg.dataset, "val", train=False)
    images = [val[i][0].as_subclass(torch.Tensor) for i in range(args.images + 1)]
    # exported here from the same config: the graph's resize target is --size, as eager's
    folder = Path(tempfile.mkdtemp())
    onnx = export_onnx(build_deploy_graph(ckpt, cfg, "benchmark"), images[0],
                       folder / "model.onnx", 17)
    eager = build_detector(cfg, len(ckpt["classes"]))
    eager.load_state_dict(ckpt["model"])
    loops = {"eager": fast_inference.prepare(eager, True, True, False),
             "onnxruntime": OnnxDetector(onnx, torch.device("cpu"), args.threads)}
    shutil.rmtree(folder)  # the runtime's session holds the model
    times = {k: [] for k in loops}
    worst = {"max_boxes_diff": 0.0, "max_scores_diff": 0.0, "labels_equal": True}
    with torch.inference_mode():
        for model in loops.values():
            model([images[0]])  # warm-up
        for k, image in enumerate(images[1:]):
            outs = {}
            for name in (list(loops) if k % 2 == 0 else list(loops)[::-1]):
                t0 = time.perf_counter()
                outs[name] = loops[name]([image])[0]
                times[name].append(time.perf_counter() - t0)
            d = differences(*({n: v.numpy() for n, v in outs[m].items()} for m in loops))
            worst["labels_equal"] &= d["labels_equal"]
            for key in ("max_boxes_diff", "max_scores_diff"):
                worst[key] = max(worst[key], d.get(key, float("inf")))
    rate = {k: 1 / statistics.median(v) for k, v in times.items()}
    print(json.dumps({"backbone": cfg.backbone.name, "model": cfg.model.name, "size": args.size,
                      "images": args.images, "threads": args.threads,
                      "images_per_s": rate, "onnx_speedup": rate["onnxruntime"] / rate["eager"],
                      "eager_speed_switches_vs_onnx": worst}))


if __name__ == "__main__":
    main()
