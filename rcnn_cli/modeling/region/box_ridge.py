"""Class-specific bounding-box regression (Girshick et al. 2014, Appendix C).

For a proposal P and its ground truth G the targets are t_x = (G_x - P_x) / P_w,
t_y = (G_y - P_y) / P_h, t_w = log(G_w / P_w), t_h = log(G_h / P_h) (centres and sizes;
torchvision's ``BoxCoder`` with unit weights), regressed linearly from the proposal's pool5
features by ridge regression with lambda = 1000, one regressor per class, trained on proposals
with IoU >= 0.6 (the caller filters). Closed form in float64; the bias is not penalised (the
fit is centred), so no target normalisation is needed. With fewer samples than feature dims
the equivalent dual system (N x N) is solved instead of the D x D one; otherwise the D x D one
is summed over chunks of samples, never all of them in float64 at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_area

from rcnn_cli.errors import DataError

CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
# Rows per chunk of the D x D system's sums: 4096 x 12800 (SPPNet's pool5) in float64 is 0.4 GB.
CHUNK_ROWS = 4096


@dataclass
class BoxRidge:
    weights: torch.Tensor  # [K, D + 1, 4]: rows 0..D-1 feature weights, row D the bias

    def apply(self, features, proposals: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Refined boxes ``[N, 4]``: each proposal moved by its label's regressor; label 0
        (background) leaves the proposal as it is."""
        proposals = torch.as_tensor(proposals, dtype=torch.float32)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(proposals) == 0:
            return proposals.reshape(0, 4)
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32) \
            if not isinstance(features, torch.Tensor) else features.float()
        k, d1, _ = self.weights.shape
        w = self.weights.to(x.device)  # all classes at once: [N, K, 4], then each row's own
        deltas = (x @ w[:, :-1].permute(1, 0, 2).reshape(d1 - 1, k * 4)).reshape(-1, k, 4)
        rows = torch.arange(len(x), device=x.device)
        index = (labels.to(x.device) - 1).clamp(min=0)
        deltas = deltas[rows, index] + w[index, -1]
        proposals = proposals.to(x.device)
        refined = CODER.decode_single(deltas, proposals)
        return torch.where((labels.to(x.device) > 0)[:, None], refined, proposals)


def box_targets(proposals: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """(t_x, t_y, t_w, t_h) that move ``proposals`` onto ``gt_boxes``."""
    return CODER.encode_single(gt_boxes.float(), proposals.float())


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each ``a[i]`` with its ``b[i]`` (``box_iou``'s diagonal without its N x N
    matrix: 30k SPPNet regions would need tens of GB)."""
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    return inter / (box_area(a) + box_area(b) - inter)


def fit_box_ridge(features, proposals: torch.Tensor, gt_boxes: torch.Tensor,
                  labels: torch.Tensor, num_classes: int, lam: float = 1000.0,
                  min_iou: float = 0.6) -> BoxRidge:
    """One ridge regressor per class 1..K; a class without samples keeps zero weights (it
    leaves its boxes unchanged). ``min_iou`` is the caller's filter, recorded only."""
    del min_iou  # the caller selected proposals with IoU >= min_iou
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if not len(features) == len(proposals) == len(gt_boxes) == len(labels):
        raise ValueError("features, proposals, gt_boxes and labels need one row per sample")
    if lam <= 0:
        raise ValueError(f"lam={lam}: ridge regression needs lambda > 0")
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise DataError(f"fit_box_ridge: labels must be in 1..{num_classes}, got "
                        f"{labels.min().item()}..{labels.max().item()}")
    targets = box_targets(torch.as_tensor(proposals), torch.as_tensor(gt_boxes)).double()
    weights = torch.zeros(num_classes, features.shape[1] + 1, 4, dtype=torch.float64)
    for k in range(1, num_classes + 1):
        rows = torch.nonzero(labels == k).flatten()
        if len(rows):
            weights[k - 1] = _ridge(features, rows, targets[rows], lam)
    return BoxRidge(weights.float())


def _rows64(features, rows: torch.Tensor) -> torch.Tensor:
    """The selected rows of a tensor, array or memmap as float64."""
    if isinstance(features, torch.Tensor):
        return features[rows].double()
    return torch.from_numpy(np.asarray(features[rows.numpy()], dtype=np.float64))


def _ridge(features, rows: torch.Tensor, t: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_W,b ||x W + b - t||^2 + lam ||W||^2 over the ``rows`` of ``features`` as a
    [D + 1, 4] matrix (bias last). With at least as many samples as dims the D x D system is
    summed over chunks of rows in one pass (the centred Gram matrix is ``x'x - n m m'``; with
    centred targets ``x't`` needs no centring), so memory is the D x D matrix and one chunk,
    whatever the number of samples."""
    n, d = len(rows), features.shape[1]
    t_mean = t.mean(0)
    tc = t - t_mean
    if n < d:
        x = _rows64(features, rows)
        x_mean = x.mean(0)
        xc = x - x_mean
        w = xc.T @ torch.linalg.solve(xc @ xc.T + lam * torch.eye(n, dtype=x.dtype), tc)
        return torch.cat([w, (t_mean - x_mean @ w)[None]])
    x_sum = torch.zeros(d, dtype=torch.float64)
    gram = torch.zeros(d, d, dtype=torch.float64)
    cross = torch.zeros(d, t.shape[1], dtype=torch.float64)
    for part, t_part in zip(rows.split(CHUNK_ROWS), tc.split(CHUNK_ROWS)):
        x = _rows64(features, part)
        x_sum += x.sum(0)
        gram.addmm_(x.T, x)
        cross.addmm_(x.T, t_part)
    x_mean = x_sum / n
    gram.addr_(x_mean, x_mean, alpha=-n)
    gram.diagonal().add_(lam)
    w = torch.linalg.solve(gram, cross)
    return torch.cat([w, (t_mean - x_mean @ w)[None]])
