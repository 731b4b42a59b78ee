"""Precision-recall curves per class: a PNG (matplotlib) and TensorBoard PR-curve summaries."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from rcnn_cli.evaluation.build import Curves
from rcnn_cli.io import atomic_write_bytes

MAX_POINTS = 127


def plot_png(curves: Curves, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=100)
    ax = fig.add_subplot()
    for name, r, p in zip(curves.names, curves.recall, curves.precision):
        ax.plot(r, p, label=name, drawstyle="steps-post")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if curves.names:
        ax.legend(loc="lower left", fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def write_png(curves: Curves, path: Path, title: str) -> Path:
    return atomic_write_bytes(path, plot_png(curves, title))


def _counts(recall: np.ndarray, precision: np.ndarray, num_gt: int):
    """TP/FP/FN counts implied by a (recall, precision) curve with ``num_gt`` positives."""
    tp = recall * num_gt
    fp = np.where(precision > 0, tp / np.maximum(precision, 1e-12) - tp, 0.0)
    return tp, fp, num_gt - tp


def add_to_tensorboard(writer, curves: Curves, iteration: int) -> None:
    """One ``pr_curves/{tag}/{class}`` entry per class, ordered from high to low recall as
    TensorBoard's thresholds expect."""
    for name, r, p, n in zip(curves.names, curves.recall, curves.precision, curves.num_gt):
        if len(r) == 0:
            r, p = np.zeros(1), np.zeros(1)
        if len(r) > MAX_POINTS:  # TensorBoard takes at most 127 thresholds
            keep = np.linspace(0, len(r) - 1, MAX_POINTS).round().astype(int)
            r, p = np.asarray(r)[keep], np.asarray(p)[keep]
        r, p = np.asarray(r, float)[::-1], np.asarray(p, float)[::-1]
        tp, fp, fn = _counts(r, p, n)
        writer.add_pr_curve_raw(f"pr_curves/{curves.tag}/{name}", tp, fp, np.zeros_like(tp), fn,
                                p, r, global_step=iteration, num_thresholds=len(r))
