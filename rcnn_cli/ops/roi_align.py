"""RoIAlign (Mask R-CNN §3) with a vectorised backward, bit-identical to torchvision's.

torchvision's CPU forward is a tight loop and is used as is. Its CPU backward is a scalar loop
that recomputes every bilinear weight for every channel and runs on one thread; here all
(RoI, bin, sample, corner) pixel indices and weights are built once as tensors and the
gradient is scattered with one ``index_add_`` per chunk, vectorised over channels, into a
``(N*H*W, C)`` pixel table. The float operations and their order are torchvision's
(``grad * w / count``, RoI by RoI, bin by bin, sample by sample, corner by corner), so the
gradients are bit-identical, up to the order across RoIs of different sample-grid sizes when
``sampling_ratio <= 0``.

Inference on a channels-last map (``rcnn_cli.engine.fast_inference``) takes a gather forward
instead: the map is already the ``(N*H*W, C)`` pixel table, so each bin is one batched product
of its sample-corner weights with the gathered pixel rows, with no copy of the map to NCHW
(torchvision's kernel makes one per call). Its sums round in another order (outputs match to
float rounding, not bit for bit); training keeps torchvision's forward.

Sampling rules are those of torchvision's CPU kernel, axis by axis (bilinear weights are
separable): a sample with ``y < -1`` or ``y > H`` (or the same in x) contributes 0; otherwise
coordinates are clamped at 0, and a low corner at or past ``H - 1`` collapses onto the last
row. ``sampling_ratio <= 0`` uses ``ceil(roi_size / pooled_size)`` samples per RoI; RoIs are
grouped by that count, so every group is a dense tensor problem.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops._utils import check_roi_boxes_shape, convert_boxes_to_roi_format

# Rows of (sample-corner, channel) values materialised at once; bounds the peak extra memory.
CHUNK_ELEMENTS = 1 << 18
# The gather forward pays per gathered row, torchvision's kernel per map pixel (its NCHW copy):
# below this many sample corners per map pixel the gather was faster (benchmarks/vs_torchvision.py infer,
# 2-core CPU: 32x32 maps with 57 per pixel 1.4x slower, 100-200 px maps with 14-16 1.5-1.8x
# faster).
GATHER_ROWS_PER_PIXEL = 30
# The vectorised backward fills and permutes a whole-map gradient table; with fewer sample
# corners per map pixel than this, torchvision's scalar backward was faster (8 x 96 x 96 x 128
# map: 0.3 per pixel 41.6 vs 56.9 ms; 0.8 per pixel 163 vs 126 ms; 12 per pixel 94 vs 27 ms).
BACKWARD_ROWS_PER_PIXEL = 0.5


def _axis_grid(start: Tensor, size: Tensor, pooled: int, grid: int) -> Tensor:
    """Sample coordinates ``(K, pooled, grid)`` along one axis, in torchvision's float order."""
    bin_size = size / pooled
    p = torch.arange(pooled, dtype=start.dtype, device=start.device)
    i = torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5
    return (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
            + i[None, None, :] * bin_size[:, None, None] / grid)


def _axis_corners(coord: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Low/high pixel index and weight per coordinate: ``(..., 2)`` each."""
    inside = (coord >= -1.0) & (coord <= length)
    coord = coord.clamp(min=0)
    low = coord.to(torch.int64)
    edge = low >= length - 1
    low = torch.where(edge, length - 1, low)
    high = torch.where(edge, length - 1, low + 1)
    coord = torch.where(edge, low.to(coord.dtype), coord)
    frac = coord - low
    weight = torch.stack([1.0 - frac, frac], -1) * inside[..., None]
    return torch.stack([low, high], -1), weight


def _plan(rois: Tensor, height: int, width: int, pooled: tuple[int, int], scale: float,
          sampling_ratio: int, aligned: bool):
    """Yield ``(roi_ids, pixel_index (B, S, 4), weight (B, S, 4))`` per group of RoIs that share
    a sample grid: ``B = len(roi_ids) * ph * pw`` bins, ``S`` samples per bin, 4 corners each."""
    ph, pw = pooled
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).to(torch.int64)
        grid_w = torch.ceil(roi_w / pw).to(torch.int64)
    pairs = torch.stack([grid_h, grid_w], 1)
    batch = rois[:, 0].to(torch.int64)
    for gh, gw in torch.unique(pairs, dim=0).tolist():
        ids = torch.nonzero((pairs[:, 0] == gh) & (pairs[:, 1] == gw)).flatten()
        if gh <= 0 or gw <= 0:  # torchvision: no samples, the bin stays 0
            yield ids, None, None
            continue
        yi, wy = _axis_corners(_axis_grid(y1[ids], roi_h[ids], ph, gh), height)
        xi, wx = _axis_corners(_axis_grid(x1[ids], roi_w[ids], pw, gw), width)
        # (K, ph, gh, 2) x (K, pw, gw, 2) -> (K, ph, pw, gh, gw, 2, 2): torchvision's order of
        # samples (iy, ix) and corners (w1..w4 = low/low, low/high, high/low, high/high).
        base = batch[ids] * (height * width)
        index = (base[:, None, None, None, None, None, None]
                 + yi[:, :, None, :, None, :, None] * width + xi[:, None, :, None, :, None, :])
        weight = wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]
        bins = len(ids) * ph * pw
        yield ids, index.reshape(bins, gh * gw, 4), weight.reshape(bins, gh * gw, 4)


def _chunks(total_bins: int, per_bin: int, channels: int):
    step = max(1, CHUNK_ELEMENTS // max(1, per_bin * channels))
    for lo in range(0, total_bins, step):
        yield slice(lo, min(total_bins, lo + step))


def _backward(grad: Tensor, rois: Tensor, shape: torch.Size, pooled: tuple[int, int],
              scale: float, sampling_ratio: int, aligned: bool, fmt) -> Tensor:
    """Scatter ``grad * w / count`` to the four corners of every sample, in torchvision's order
    (RoI, bin, sample, corner): ``index_add_`` accumulates rows in order, so the sums round as
    torchvision's serial loop does."""
    n, c, h, w = shape
    ph, pw = pooled
    table = grad.new_zeros(n * h * w, c)
    grad_bins = grad.permute(0, 2, 3, 1).reshape(-1, ph * pw, c)
    for ids, index, weight in _plan(rois, h, w, pooled, scale, sampling_ratio, aligned):
        if index is None or len(ids) == 0:
            continue
        count = index.shape[1]
        g = grad_bins[ids].reshape(-1, 1, 1, c)
        for part in _chunks(index.shape[0], index[0].numel(), c):
            spread = g[part] * weight[part].unsqueeze(-1) / count
            table.index_add_(0, index[part].reshape(-1), spread.reshape(-1, c))
    return table.view(n, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=fmt)


def _forward_gather(x: Tensor, rois: Tensor, pooled: tuple[int, int], scale: float,
                    sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign of a channels-last map: ``(K, C, ph, pw)``, channels-last as well."""
    n, c, h, w = x.shape
    ph, pw = pooled
    table = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels-last
    out = x.new_zeros(len(rois), ph * pw, c)
    for ids, index, weight in _plan(rois, h, w, pooled, scale, sampling_ratio, aligned):
        if index is None or len(ids) == 0:
            continue
        per_bin = index.shape[1] * 4
        bins = x.new_empty(index.shape[0], c)
        for part in _chunks(index.shape[0], per_bin, c):
            pixels = table[index[part].reshape(-1)].view(-1, per_bin, c)
            weights = weight[part].reshape(-1, 1, per_bin) / index.shape[1]
            bins[part] = torch.bmm(weights, pixels).squeeze(1)
        out[ids] = bins.view(len(ids), ph * pw, c)
    return out.view(len(rois), ph, pw, c).permute(0, 3, 1, 2)


def _rows_per_pixel(x: Tensor, rois: Tensor, output_size, sampling_ratio: int) -> float:
    """Sample corners per map pixel (what the vectorised paths pay per row vs per pixel)."""
    ph, pw = _pair(output_size)
    grid = sampling_ratio if sampling_ratio > 0 else 2  # adaptive: ~2 for typical RoIs
    return len(rois) * ph * pw * grid * grid * 4 / max(1, x.shape[0] * x.shape[2] * x.shape[3])


def _format(x: Tensor):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rois, pooled, scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.args = (x.shape, pooled, scale, sampling_ratio, aligned, _format(x))
        # torchvision's forward kernel is already a tight loop; only its backward is slow.
        return torch.ops.torchvision.roi_align(x, rois, scale, pooled[0], pooled[1],
                                               sampling_ratio, aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        shape, pooled, scale, sampling_ratio, aligned, fmt = ctx.args
        grad_x = _backward(grad, rois, shape, pooled, scale, sampling_ratio, aligned, fmt)
        return grad_x, None, None, None, None, None


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size,
              spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """Drop-in for ``torchvision.ops.roi_align`` (same arguments, outputs and gradients; a
    channels-last input without gradient takes the gather forward)."""
    check_roi_boxes_shape(boxes)
    rois = boxes if isinstance(boxes, Tensor) else convert_boxes_to_roi_format(boxes)
    rois = rois.to(input.dtype).detach()
    density = _rows_per_pixel(input, rois, output_size, sampling_ratio)
    if not (torch.is_grad_enabled() and input.requires_grad):
        if _format(input) == torch.channels_last and density < GATHER_ROWS_PER_PIXEL:
            return _forward_gather(input, rois, _pair(output_size), float(spatial_scale),
                                   int(sampling_ratio), bool(aligned))
    elif density < BACKWARD_ROWS_PER_PIXEL:
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _RoIAlign.apply(input, rois, _pair(output_size), float(spatial_scale),
                           int(sampling_ratio), bool(aligned))
