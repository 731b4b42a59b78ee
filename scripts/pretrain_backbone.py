"""Pre-train a torchvision classifier on shape crops: the ImageNet stand-in for backbone.weights.

    python scripts/pretrain_backbone.py --arch resnet18 --iters 600 \
        --out outputs/pretrained/resnet18_shapes.pt
    rcnn-train backbone.weights=outputs/pretrained/resnet18_shapes.pt ...

See rcnn_cli/engine/pretrain.py for what it trains on (another seed than the detection data).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from rich.progress import Progress

from rcnn_cli.engine.pretrain import PretrainParams, pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(PretrainParams):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    ap.add_argument("--out", required=True)
    args = vars(ap.parse_args())
    out = args.pop("out")
    params = PretrainParams(**args)
    with Progress() as bar:
        task = bar.add_task(f"pretrain {params.arch}", total=params.iters)

        def progress(it, last):
            bar.update(task, completed=it, description=f"pretrain {params.arch} "
                       f"loss {last[0]:.3f} acc {last[1]:.2f}")

        result = pretrain(params, out, progress)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
