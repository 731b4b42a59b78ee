"""Proposal recall (Hosang et al. 2015; COCO's AR): the fraction of ground-truth boxes that the
top-N proposals cover at IoU >= t, averaged over t in [0.5, 0.95] = average recall AR@N.

Reported overall and by object size (COCO areas: small < 32², medium < 96², large), plus
recall-vs-IoU curves for several N (PNG, TensorBoard figure) and flat ``proposals/*`` metrics.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
SIZES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, float("inf"))}


def best_iou(proposals: torch.Tensor, gt: torch.Tensor, top_n: int) -> torch.Tensor:
    """For each ground-truth box, its best IoU with the first ``top_n`` proposals."""
    if len(gt) == 0:
        return torch.zeros(0)
    props = proposals[:top_n].float()
    if len(props) == 0:
        return torch.zeros(len(gt))
    return box_iou(gt.float(), props).max(dim=1).values


def proposal_recall(proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor],
                    counts: list[int]) -> dict:
    """``{N: {"ious": best IoU per gt box, "areas": gt box areas}}`` over all images."""
    areas = torch.cat([(g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) for g in gt_boxes]).numpy()
    out = {}
    for n in counts:
        ious = torch.cat([best_iou(p, g, n) for p, g in zip(proposals, gt_boxes)]).numpy()
        out[n] = {"ious": ious, "areas": areas}
    return out


def recall_curve(ious: np.ndarray, thresholds=IOU_THRESHOLDS) -> np.ndarray:
    if len(ious) == 0:
        return np.full(len(thresholds), np.nan)
    return np.array([(ious >= t).mean() for t in thresholds])


def recall_metrics(result: dict, prefix: str = "proposals/") -> dict[str, float | None]:
    """AR@N overall and per size, recall@N at IoU 0.5 and 0.7, mean proposals per image."""
    metrics: dict[str, float | None] = {}
    for n, r in result.items():
        metrics[f"{prefix}AR@{n}"] = _nan_to_none(recall_curve(r["ious"]).mean())
        metrics[f"{prefix}R@{n}/IoU0.5"] = _nan_to_none(recall_curve(r["ious"], [0.5])[0])
        metrics[f"{prefix}R@{n}/IoU0.7"] = _nan_to_none(recall_curve(r["ious"], [0.7])[0])
        for size, (lo, hi) in SIZES.items():
            keep = (r["areas"] >= lo) & (r["areas"] < hi)
            metrics[f"{prefix}AR@{n}/{size}"] = _nan_to_none(recall_curve(r["ious"][keep]).mean())
    return metrics


def _nan_to_none(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def recall_figure(result: dict, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    thresholds = np.round(np.arange(0.5, 1.0001, 0.025), 3)
    for n, r in result.items():
        ax.plot(thresholds, recall_curve(r["ious"], thresholds), label=f"{n} proposals")
    ax.set_xlabel("IoU")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_recall_report(result: dict, run_dir: Path, title: str, tensorboard: bool = True) -> Path:
    """Recall-vs-IoU curves as ``proposal_recall.png`` and a TensorBoard figure."""
    import matplotlib.pyplot as plt

    from rcnn_cli.io import atomic_write_bytes

    fig = recall_figure(result, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path = atomic_write_bytes(Path(run_dir) / "proposal_recall.png", buf.getvalue())
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        writer.add_figure("proposals/recall_vs_iou", fig, global_step=0)
        for n, r in result.items():
            for t, rec in zip(IOU_THRESHOLDS, recall_curve(r["ious"])):
                writer.add_scalar(f"proposals/recall@{n}_vs_iou", float(rec), int(round(t * 100)))
        writer.close()
    plt.close(fig)
    return path


def evaluate_proposal_recall(model, loader, device, counts: list[int]) -> dict:
    """Recall of the model's proposal source on a loader: the external proposals that come
    with the batch (model=fast) or the RPN's test-mode proposals (up to max(counts))."""
    from rcnn_cli.modeling.proposals import rpn_proposals

    proposals, gt = [], []
    for images, targets in loader:
        if "proposals" in targets[0]:
            proposals += [t["proposals"].cpu() for t in targets]
        else:
            props = rpn_proposals(model, [im.to(device) for im in images], max(counts))
            proposals += [p.cpu() for p in props]
        gt += [t["boxes"].cpu() for t in targets]
    return proposal_recall(proposals, gt, list(counts))
