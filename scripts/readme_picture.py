"""The README pictures: a trained model's predictions on the first validation images.

Each tile is an image enlarged ``--scale`` times (nearest neighbour) with the boxes, class
names and scores >= ``--score-thresh``; with ``--with-gt`` each prediction tile follows its
ground truth (green). The validation split is the checkpoint's own dataset config, optionally
changed with Hydra-style ``dataset.*`` overrides after the options.

    .venv/bin/python scripts/readme_picture.py CKPT docs/images/shapes_val_predictions.png
"""

from __future__ import annotations

import argparse
import logging

import torch
from omegaconf import OmegaConf

from rcnn_cli.data.build import build_raw_dataset
from rcnn_cli.data.transforms import to_sample
from rcnn_cli.engine.evaluator import build_trained_model, check_classes, load_trained
from rcnn_cli.evaluation.draw import draw_output, draw_target, grid, write_image

log = logging.getLogger("rcnn_cli")


@torch.inference_mode()
def render(ckpt_path: str, count: int, ncol: int, scale: int, score_thresh: float,
           with_gt: bool, overrides: list[str]) -> torch.Tensor:
    ckpt, train_cfg = load_trained(ckpt_path)
    dataset_cfg = OmegaConf.merge(train_cfg.dataset, OmegaConf.from_dotlist(
        [o.removeprefix("dataset.") for o in overrides]))
    raw = build_raw_dataset(dataset_cfg, "val")
    check_classes(ckpt, raw.classes, ckpt_path)
    model = build_trained_model(ckpt, train_cfg, torch.device("cpu"))
    tiles = []
    for i in range(min(count, len(raw))):
        pixels, target = to_sample(*raw.raw(i))
        image = pixels.as_subclass(torch.Tensor).float() / 255
        out = model([image])[0]
        if with_gt:
            tgt = {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}
            tiles.append(draw_target(image, tgt, list(ckpt["classes"]), scale))
        tiles.append(draw_output(image, out, list(ckpt["classes"]), score_thresh, scale))
    return grid(tiles, ncol * (2 if with_gt else 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", help="checkpoint .pt or export directory")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--ncol", type=int, default=4)
    p.add_argument("--scale", type=int, default=3)
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--with-gt", action="store_true")
    args, overrides = p.parse_known_args()
    write_image(args.out, render(args.ckpt, args.count, args.ncol, args.scale,
                                 args.score_thresh, args.with_gt, overrides))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
