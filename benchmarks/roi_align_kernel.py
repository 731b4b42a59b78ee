"""RoIAlign forward/backward time on CPU: torchvision's kernel vs ``rcnn_cli.ops`` (same
numerics), at the default model's P2 shape (8 images, 128 channels, 32x32, 512 RoIs, 7x7).

    python benchmarks/roi_align_kernel.py --threads 1 --reps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision import ops

from rcnn_cli.ops.roi_align import roi_align


def timed(fn, x, rois, reps: int, backward: bool) -> float:
    times = []
    for _ in range(reps):
        a = x.detach().requires_grad_(backward)
        t0 = time.perf_counter()
        out = fn(a, rois, 7, 0.25, 1, False)
        if backward:
            out.backward(torch.ones_like(out))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 128, 32, 32, generator=g)
    xy = torch.rand(512, 2, generator=g) * 100
    wh = torch.rand(512, 2, generator=g) * 60 + 4
    rois = torch.cat([torch.randint(0, 8, (512, 1), generator=g).float(), xy, xy + wh], 1)
    print(f"threads {args.threads}, median of {args.reps}, torch {torch.__version__}")
    print("| kernel | forward (ms) | forward + backward (ms) |")
    print("|---|---|---|")
    for name, fn in [("torchvision", ops.roi_align), ("rcnn_cli.ops (vectorised)", roi_align)]:
        fwd = timed(fn, x, rois, args.reps, False)
        both = timed(fn, x, rois, args.reps, True)
        print(f"| {name} | {fwd * 1e3:.1f} | {both * 1e3:.1f} |")


if __name__ == "__main__":
    main()
