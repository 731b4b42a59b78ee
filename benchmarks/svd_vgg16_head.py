"""Truncated SVD on the VGG16 Fast R-CNN head shape (timing only).

The paper's setting (Fast R-CNN §3.1, Table/Fig. 2): fc6 25088 -> 4096 kept to t = 1024,
fc7 4096 -> 4096 kept to t = 256, 2000 RoIs per image, 21 classes. This times the head
(fc6, fc7, the two sibling layers) before and after, side by side in one process, on RoI
features of the VGG16 shape (512 x 7 x 7). Weights are random (no pretrained VGG16 here), so
it measures speed and parameters, not AP; the output deviation is reported against the
truncation error bound.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/svd_vgg16_head.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from rcnn_cli.modeling.fast_rcnn import FastRCNNHead
from rcnn_cli.modeling.svd import compress_box_head, truncation_error


class Head(nn.Module):
    def __init__(self, in_features: int, width: int, num_classes: int):
        super().__init__()
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = FastRCNNHead(in_features, width, dropout=0.5)
        self.roi_heads.box_predictor = FastRCNNPredictor(width, num_classes)

    def forward(self, x):
        return self.roi_heads.box_predictor(self.roi_heads.box_head(x))


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.inference_mode()
def timed(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rois", type=int, default=2000)
    ap.add_argument("--fc6", type=int, default=1024)
    ap.add_argument("--fc7", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--in-features", type=int, default=512 * 7 * 7, help="VGG16: 512 x 7 x 7")
    ap.add_argument("--width", type=int, default=4096, help="fc6/fc7 width (VGG16: 4096)")
    args = ap.parse_args()
    torch.manual_seed(0)
    full = Head(args.in_features, args.width, 21).eval()
    small = copy.deepcopy(full)
    compress_box_head(small, args.fc6, args.fc7)
    x = torch.relu(torch.randn(args.rois, args.in_features))
    timed(full, x[:64]), timed(small, x[:64])  # warm-up
    t_full, t_small = [], []
    for _ in range(args.repeats):  # interleaved, so contention hits both alike
        t_full.append(timed(full, x))
        t_small.append(timed(small, x))
    a, b = statistics.median(t_full), statistics.median(t_small)
    with torch.inference_mode():
        h = full.roi_heads.box_head
        y6, y6s = h.fc6(x[:256]), small.roi_heads.box_head.fc6(x[:256])
        rel6 = ((y6 - y6s).norm(dim=1) / (truncation_error(h.fc6, args.fc6)
                                         * x[:256].norm(dim=1))).max().item()
    print(f"head {args.in_features} -> {args.width} -> {args.width}, {args.rois} RoIs/image, "
          f"threads={torch.get_num_threads()}")
    print(f"params: {params(full):,} -> {params(small):,} ({params(small) / params(full):.1%})")
    print(f"head time per image: {1000 * a:.1f} ms -> {1000 * b:.1f} ms "
          f"({1 - b / a:.1%} less; median of {args.repeats}, interleaved)")
    print(f"fc6 output change / (sigma_t+1 |x|): max {rel6:.3f} (<= 1 by the bound)")


if __name__ == "__main__":
    main()
