"""Scaling curves from the records of ``benchmarks/vs_torchvision.py`` / ``benchmarks/eval_speed.py``:
training step and inference time vs image size, inference time vs proposals, evaluation time
vs images; one PNG with four panels, and the same numbers as markdown tables on stdout.

    python benchmarks/plot_scaling.py --json outputs/bench/scaling.json --tag scaling \\
        --out docs/images/scaling.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BARE, ON = "bare torchvision", "rcnn-cli (speed on)"


def series(records: list[dict], mode: str, key: str, value: str, vary: str) -> dict:
    """loop name -> sorted [(x, y)] over the records of ``mode`` that vary ``vary``."""
    out: dict[str, list] = {}
    for r in records:
        if r["mode"] != mode or (vary == "proposals") != bool(r["command"].get("proposals")):
            continue
        for name, row in r["loops"].items():
            out.setdefault(name, []).append((r[key], row[value]))
    return {k: sorted(v) for k, v in out.items()}


def table(title: str, xlabel: str, data: dict) -> None:
    names = list(data)
    print(f"\n{title}\n\n| {xlabel} | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for i, (x, _) in enumerate(data[names[0]]):
        print(f"| {x} | " + " | ".join(f"{data[n][i][1]:.4g}" for n in names) + " |")


def eval_series(records: list[dict]) -> dict:
    out: dict[str, list] = {}
    for r in records:
        if r["mode"] == "eval":
            for backend, t in r["seconds"].items():
                out.setdefault(backend, []).append((r["images"], t["total"]))
    return {k: sorted(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default="outputs/bench/scaling.json")
    ap.add_argument("--tag", default="scaling")
    ap.add_argument("--out", default="docs/images/scaling.png")
    args = ap.parse_args()
    records = [r for r in json.loads(Path(args.json).read_text()) if r.get("tag") == args.tag]
    panels = [
        ("training step vs image size", "shorter side (px)", "step (s)",
         series(records, "train", "size", "step_s", "size")),
        ("inference vs image size", "shorter side (px)", "s / image",
         series(records, "infer", "size", "latency_s", "size")),
        ("inference vs proposals", "RPN proposals / image", "s / image",
         series(records, "infer", "proposals", "latency_s", "proposals")),
        ("COCO evaluation vs images", "images (100 detections each)", "seconds",
         eval_series(records)),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (title, xlabel, ylabel, data) in zip(axes, panels):
        for name, points in data.items():
            ax.plot(*zip(*points), marker="o", label=name)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if data:
            table(title, xlabel, data)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
