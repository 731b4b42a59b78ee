"""Batch norm at test time, per checkpoint: box / mask AP on the val split with the running
statistics it was trained with, with each evaluation batch normalised by its own statistics,
and with the running statistics re-estimated over training batches (precise BN); and the batch
norms where one val batch's statistics are furthest from the running ones
(``rcnn_cli.evaluation.norm_statistics``). A network that is fine on batch statistics and fails
on running ones depends on each batch's mean; one that precise BN rescues had stale statistics.

    .venv/bin/python benchmarks/bn_statistics.py outputs/htc_ladder/detectors_seed1/checkpoints/last.pt \
        --out outputs/bn_statistics
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.deploy.onnx_runtime import is_onnx
from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.runtime import cpu_model
from rcnn_cli.errors import ConfigError, RcnnError
from rcnn_cli.evaluation.norm_statistics import (
    reestimate,
    statistics_gap,
    use_batch_statistics,
)
from rcnn_cli.io import atomic_write_json

MODES = ("running", "batch", "precise")


def backbone_inputs(model, dataset_cfg, split: str, batch: int):
    """Image batches of ``split`` as the backbone receives them (the model's own transform,
    evaluation-time: no augmentation), in a fixed order."""
    view = build_dataset(dataset_cfg, split, train=False)
    for images, _ in eval_loader(view, batch, 0):
        yield model.transform(list(images))[0].tensors


def adjuster(mode: str, batch: int, batches: int, gaps: dict):
    def adjust(model, train_cfg) -> None:
        if not (hasattr(model, "backbone") and hasattr(model, "transform")):
            raise ConfigError(f"model={train_cfg.model.name}: the batch-norm diagnostics need "
                              "a detector with a backbone and an image transform (not the "
                              "R-CNN / SPPNet region models)")
        if mode == "running":
            first = next(backbone_inputs(model, train_cfg.dataset, "val", batch))
            gaps["layers"] = statistics_gap(model.backbone, first)[:5]
        elif mode == "batch":
            use_batch_statistics(model)
        else:
            inputs = backbone_inputs(model, train_cfg.dataset, "train", batch)
            gaps["precise_batches"] = reestimate(model.backbone,
                                                 itertools.islice(inputs, batches))
    return adjust


def measure(ckpt: Path, out: Path, batch: int, batches: int, threads: int) -> dict:
    record: dict = {"ckpt": str(ckpt), "eval_batch": batch, "cpu": cpu_model()}
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        cfg = compose("eval", overrides=[f"ckpt={ckpt}", f"threads={threads}", "workers=0",
                                         f"eval.batch_size={batch}"])
    for mode in MODES:
        extra: dict = {}
        metrics = evaluate_checkpoint(cfg, out / mode, adjust=adjuster(mode, batch, batches,
                                                                        extra))
        record[mode] = {"box_AP": metrics.get("bbox/AP"), "mask_AP": metrics.get("segm/AP"),
                        **extra}
    return record


def table(records: list[dict]) -> str:
    def ap(r: dict) -> str:
        mask = "" if r["mask_AP"] is None else f" / {r['mask_AP']:.3f}"
        return f"{r['box_AP']:.3f}{mask}"

    lines = ["| checkpoint | running statistics | batch statistics | precise BN | "
             "largest mean shift (running std) |", "|---|---|---|---|---|"]
    for r in records:
        top = r["running"]["layers"][0] if r["running"]["layers"] else None
        shift = f"{top['mean_shift']:.1f} at {top['layer']}" if top else "no batch norm"
        lines.append(f"| {r['ckpt']} | {ap(r['running'])} | {ap(r['batch'])} | "
                     f"{ap(r['precise'])} ({r['precise']['precise_batches']} batches) | "
                     f"{shift} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpts", type=Path, nargs="+", help="training checkpoints (.pt)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=8, help="images per evaluation batch, and "
                    "per training batch of the re-estimate")
    ap.add_argument("--precise-batches", type=int, default=40)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    for ckpt in args.ckpts:
        if is_onnx(ckpt) or not ckpt.is_file():
            print(f"error: {ckpt}: not a training checkpoint file", file=sys.stderr)
            return 1
    try:
        records = [measure(ckpt, args.out / f"ckpt{i}", args.batch, args.precise_batches,
                           args.threads) for i, ckpt in enumerate(args.ckpts)]
    except RcnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = table(records)
    atomic_write_json(args.out / "bn_statistics.json", records)
    print(f"box AP / mask AP on the val split, evaluation batches of {args.batch}; "
          f"CPU: {cpu_model()}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
