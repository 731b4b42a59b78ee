"""Confusion matrix for detection: which class a ground-truth object is detected as.

Per image, detections above a score threshold are matched one-to-one to non-crowd ground truth
by IoU (>= ``iou_thresh``, greedily from the highest IoU, class-agnostic, as YOLOv5's
``ConfusionMatrix`` does; mmdetection #5099 asks for the same picture).
Rows are the true class, columns the predicted class; the last row and column are background:
an unmatched object is counted in (its class, background), an unmatched detection in
(background, its class).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

from rcnn_cli.io import atomic_write_bytes, atomic_write_text


@dataclass
class Confusion:
    names: list[str]  # class names, then "background"
    counts: np.ndarray  # [K + 1, K + 1] int64; rows: truth, columns: prediction


def _boxes(items: list[dict]) -> torch.Tensor:
    xywh = torch.tensor([a["bbox"] for a in items], dtype=torch.float64).reshape(-1, 4)
    return box_convert(xywh, "xywh", "xyxy")


def match(gt: torch.Tensor, det: torch.Tensor, iou_thresh: float) -> list[tuple[int, int]]:
    """One-to-one (gt index, detection index) pairs, highest IoU first."""
    if len(gt) == 0 or len(det) == 0:
        return []
    iou = box_iou(gt, det)
    g, d = torch.nonzero(iou >= iou_thresh, as_tuple=True)
    order = torch.argsort(iou[g, d], descending=True, stable=True)
    used_g, used_d, pairs = set(), set(), []
    for k in order.tolist():
        gi, di = int(g[k]), int(d[k])
        if gi not in used_g and di not in used_d:
            used_g.add(gi)
            used_d.add(di)
            pairs.append((gi, di))
    return pairs


def confusion_matrix(coco_gt: dict, detections: list[dict], score_thresh: float = 0.5,
                     iou_thresh: float = 0.5) -> Confusion:
    cats = sorted(coco_gt["categories"], key=lambda c: c["id"])
    row = {c["id"]: k for k, c in enumerate(cats)}
    bg = len(cats)
    counts = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    gts: dict[int, list[dict]] = {img["id"]: [] for img in coco_gt["images"]}
    for a in coco_gt["annotations"]:
        if not a.get("iscrowd", 0):
            gts[a["image_id"]].append(a)
    dets: dict[int, list[dict]] = {}
    for d in detections:
        if d["score"] >= score_thresh and d["image_id"] in gts:
            dets.setdefault(d["image_id"], []).append(d)
    for image_id, truth in gts.items():
        found = dets.get(image_id, [])
        pairs = match(_boxes(truth), _boxes(found), iou_thresh)
        for gi, di in pairs:
            counts[row[truth[gi]["category_id"]], row[found[di]["category_id"]]] += 1
        matched_g, matched_d = {p[0] for p in pairs}, {p[1] for p in pairs}
        for gi, a in enumerate(truth):
            if gi not in matched_g:
                counts[row[a["category_id"]], bg] += 1
        for di, d in enumerate(found):
            if di not in matched_d:
                counts[bg, row[d["category_id"]]] += 1
    return Confusion([c["name"] for c in cats] + ["background"], counts)


def to_markdown(c: Confusion, title: str) -> str:
    head = "| truth \\ predicted | " + " | ".join(c.names) + " |"
    rule = "|---" * (len(c.names) + 1) + "|"
    rows = [f"| {n} | " + " | ".join(str(int(v)) for v in r) + " |"
            for n, r in zip(c.names, c.counts)]
    return "\n".join([f"# {title}", "", head, rule, *rows, ""])


def plot(c: Confusion, title: str):
    """A matplotlib figure: counts normalised per true class (row), counts written in cells."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    k = len(c.names)
    share = c.counts / np.maximum(c.counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.2 + 0.8 * k, 1.0 + 0.7 * k), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), c.names, rotation=45, ha="right")
    ax.set_yticks(range(k), c.names)
    ax.set(xlabel="predicted", ylabel="truth", title=title)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(c.counts[i, j])), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize="small")
    return fig


def write(c: Confusion, run_dir: Path, title: str) -> None:
    """``run_dir/confusion.md`` and ``run_dir/confusion.png``."""
    atomic_write_text(Path(run_dir) / "confusion.md", to_markdown(c, title))
    buf = io.BytesIO()
    plot(c, title).savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(Path(run_dir) / "confusion.png", buf.getvalue())


def add_to_tensorboard(writer, c: Confusion, iteration: int) -> None:
    if writer is not None:
        writer.add_figure("confusion_matrix", plot(c, "confusion matrix"), iteration)
