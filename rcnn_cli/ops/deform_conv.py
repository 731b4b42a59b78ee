"""Deformable convolution (Dai et al. 2017, §2.1) with a vectorised CPU forward and backward.

Eq. 2: ``y(p0) = sum_k w(p_k) * x(p0 + p_k + dp_k)``, where ``x`` at a fractional position is
bilinear in its four integer neighbours (eqs. 3-4: ``G(q, p) = g(q_x, p_x) g(q_y, p_y)``,
``g(a, b) = max(0, 1 - |a - b|)``) and a neighbour outside the map reads 0.

torchvision's CPU kernel (``torchvision.ops.deform_conv2d``) loops over every (channel,
position, tap) in scalar code, forward and backward; DetectoRS's deformable SAC spent most of
its training step there. Here every sample position of a call is built at once as tensors:
the four neighbours of each (image, output pixel, tap) are rows of an ``(N*H*W, C)`` pixel
table, gathered with one ``index_select``, combined with their bilinear weights into the
column matrix, which one matmul with the weight turns into the output. The backward is
explicit (``_DeformConv2d``): weight gradient ``grad^T @ columns``, column gradient
``grad @ weight``, input gradient scattered with ``index_add_``, offset gradient the column
gradient times the derivative of the bilinear weights (torchvision's coordinate weights). The
sampling rules are torchvision's, so outputs and gradients match it to float rounding (the
sums run in another order).

Forward + backward of a 3x3 conv on 8 x 128 x 32 x 32, one thread (2-core dev VM, CPU time):
plain conv 60 ms, torchvision's deformable kernel 1164 ms, this one 212 ms; at DetectoRS-R18's
res3-res5 shapes on 128 px images 4-6x faster than torchvision's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d as tv_deform_conv2d

# Gathered (sample-corner, channel) values per chunk: bounds the extra memory and keeps a
# chunk in cache (8 x 128 x 32 x 32 map, 3x3: fwd+bwd 233 ms at 2^18, 294 at 2^22, 2-core CPU).
CHUNK_ELEMENTS = 1 << 18


class Geometry(NamedTuple):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


class Corners(NamedTuple):
    """Per sample (row m = image, output y, output x, tap): its four neighbours (low/low,
    low/high, high/low, high/high in (y, x)) as table rows, their bilinear weights (0 outside
    the map) and those weights' derivatives along y and x."""
    index: Tensor  # (M, 4) int64
    weight: Tensor  # (M, 4)
    d_dy: Tensor  # (M, 4)
    d_dx: Tensor  # (M, 4)


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def sample_positions(offset: Tensor, geo: Geometry) -> tuple[Tensor, Tensor]:
    """``p0 + p_k + dp_k`` as (y, x), each ``(N, out_h, out_w, taps)``; offset channels are
    (dy, dx) per tap, taps in row-major kernel order (torchvision's layout)."""
    n, _, out_h, out_w = offset.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo
    dev, dtype = offset.device, offset.dtype
    tap_y = torch.arange(kh, device=dev).repeat_interleave(kw) * dh
    tap_x = torch.arange(kw, device=dev).repeat(kh) * dw
    base_y = (torch.arange(out_h, device=dev) * sh - ph)[:, None, None] + tap_y
    base_x = (torch.arange(out_w, device=dev) * sw - pw)[None, :, None] + tap_x
    off = offset.view(n, kh * kw, 2, out_h, out_w).permute(0, 3, 4, 1, 2)
    return base_y.to(dtype) + off[..., 0], base_x.to(dtype) + off[..., 1]


def corners(y: Tensor, x: Tensor, height: int, width: int) -> Corners:
    """Bilinear neighbours of every sample, for an ``(N*height*width, C)`` table."""
    y0, x0 = y.floor(), x.floor()
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    rows = torch.stack([y0, y0, y0 + 1, y0 + 1], -1)
    cols = torch.stack([x0, x0 + 1, x0, x0 + 1], -1)
    inside = ((rows >= 0) & (rows <= height - 1) & (cols >= 0) & (cols <= width - 1)).to(y.dtype)
    image = torch.arange(y.shape[0], device=y.device).view(-1, 1, 1, 1, 1) * (height * width)
    index = (image + rows.clamp(0, height - 1).long() * width
             + cols.clamp(0, width - 1).long())
    weight = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], -1) * inside
    d_dy = torch.stack([-hx, -lx, hx, lx], -1) * inside
    d_dx = torch.stack([-hy, hy, -ly, ly], -1) * inside
    return Corners(*(t.reshape(-1, 4) for t in (index, weight, d_dy, d_dx)))


def pixel_table(x: Tensor) -> Tensor:
    """``(N*H*W, C)``: one row per pixel, so a gathered neighbour is a contiguous row."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def chunks(total: int, channels: int):
    step = max(1, CHUNK_ELEMENTS // (4 * max(1, channels)))
    for lo in range(0, total, step):
        yield slice(lo, min(total, lo + step))


def gather(table: Tensor, c: Corners, part: slice) -> Tensor:
    """The four neighbours' rows of samples ``part``: ``(m, 4, C)``."""
    return table.index_select(0, c.index[part].reshape(-1)).view(-1, 4, table.shape[1])


def bilinear(c: Corners, part: slice, values: Tensor) -> Tensor:
    """Samples ``part`` from their gathered neighbours ``(m, 4, C)``: ``(m, C)``."""
    return torch.bmm(c.weight[part].unsqueeze(1), values).squeeze(1)


def columns(table: Tensor, c: Corners) -> Tensor:
    """The bilinear samples, one row per sample: ``(M, C)``."""
    out = table.new_empty(c.index.shape[0], table.shape[1])
    for part in chunks(len(out), table.shape[1]):
        out[part] = bilinear(c, part, gather(table, c, part))
    return out


def flat_weight(weight: Tensor) -> Tensor:
    """``(O, taps * C)`` in the column order (tap-major, then channel)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def plan(x: Tensor, offset: Tensor, geo: Geometry) -> Corners:
    y, xs = sample_positions(offset, geo)
    return corners(y, xs, x.shape[2], x.shape[3])


class _DeformConv2d(torch.autograd.Function):
    # Under autocast (schedule.amp=bf16) it runs in fp32: the bilinear sums and the gathered
    # gradients stay in one dtype, forward and backward (torchvision's CPU kernel has no bf16).
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, offset, weight, bias, geo: tuple):  # a plain tuple: custom_fwd rebuilds it
        geo = Geometry(*geo)
        ctx.save_for_backward(x, offset, weight)
        ctx.geo, ctx.has_bias = geo, bias is not None
        n, out_h, out_w = offset.shape[0], offset.shape[2], offset.shape[3]
        cols = columns(pixel_table(x), plan(x, offset, geo))
        out = cols.view(n * out_h * out_w, -1) @ flat_weight(weight).t()
        if bias is not None:
            out += bias
        return out.view(n, out_h, out_w, -1).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, offset, weight = ctx.saved_tensors
        need_x, need_offset, need_weight, need_bias, _ = ctx.needs_input_grad
        n, c, h, w = x.shape
        grad_out = grad.permute(0, 2, 3, 1).reshape(-1, weight.shape[0])
        grad_cols = (grad_out @ flat_weight(weight)).view(-1, c)
        table, corner = pixel_table(x), plan(x, offset, ctx.geo)
        grad_table = table.new_zeros(table.shape) if need_x else None
        grad_pos = grad_cols.new_empty(len(grad_cols), 2) if need_offset else None
        cols = grad_cols.new_empty(grad_cols.shape) if need_weight else None
        for part in chunks(len(grad_cols), c):
            spread_back(table, corner, part, grad_cols[part], grad_table, grad_pos, cols)
        grad_x = grad_offset = grad_weight = grad_bias = None
        if need_x:
            grad_x = grad_table.view(n, h, w, c).permute(0, 3, 1, 2).contiguous()
        if need_offset:
            grad_offset = offset_layout(grad_pos, offset.shape)
        if need_weight:
            kh, kw = weight.shape[2:]
            grad_weight = (grad_out.t() @ cols.view(grad_out.shape[0], -1)).view(
                -1, kh, kw, c).permute(0, 3, 1, 2).contiguous()
        if need_bias and ctx.has_bias:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_offset, grad_weight, grad_bias, None


def spread_back(table: Tensor, c: Corners, part: slice, grad_cols: Tensor,
                grad_table: Tensor | None, grad_pos: Tensor | None, cols: Tensor | None) -> None:
    """Samples ``part``: the column gradient to the four neighbours (input gradient), to the
    position (``sum_c grad * dG/dy * x``, ``... dG/dx ...``) and the columns themselves."""
    if grad_table is not None:
        spread = c.weight[part].unsqueeze(-1) * grad_cols.unsqueeze(1)
        grad_table.index_add_(0, c.index[part].reshape(-1), spread.view(-1, table.shape[1]))
    if grad_pos is None and cols is None:
        return
    values = gather(table, c, part)
    if grad_pos is not None:
        dots = torch.bmm(values, grad_cols.unsqueeze(-1)).squeeze(-1)  # (m, 4)
        grad_pos[part, 0] = (c.d_dy[part] * dots).sum(1)
        grad_pos[part, 1] = (c.d_dx[part] * dots).sum(1)
    if cols is not None:
        cols[part] = bilinear(c, part, values)


def offset_layout(grad_pos: Tensor, shape: torch.Size) -> Tensor:
    """``(M, 2)`` per (image, y, x, tap) back to the offset layout ``(N, 2 * taps, H, W)``."""
    n, _, out_h, out_w = shape
    return grad_pos.view(n, out_h, out_w, -1, 2).permute(0, 3, 4, 1, 2).reshape(shape)


def graph_capture() -> bool:
    """Tracing, scripting, ONNX export or compiling: those record torchvision's single op
    (the vectorised path's chunk loop and shapes would be frozen into the graph)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def vectorised(input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None) -> bool:
    """The vectorised path covers eager CPU calls with one offset group, no groups and no
    modulation."""
    if graph_capture():
        return False
    kh, kw = weight.shape[2:]
    return (input.device.type == "cpu" and mask is None and weight.shape[1] == input.shape[1]
            and offset.shape[1] == 2 * kh * kw)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride=1, padding=0, dilation=1, mask: Tensor | None = None) -> Tensor:
    """Drop-in for ``torchvision.ops.deform_conv2d``; other cases go to torchvision's kernel."""
    if not vectorised(input, offset, weight, mask):
        return tv_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    geo = Geometry(tuple(weight.shape[2:]), _pair(stride), _pair(padding), _pair(dilation))
    out_h, out_w = (output_size(input.shape[2 + i], geo.kernel[i], geo.stride[i],
                                geo.padding[i], geo.dilation[i]) for i in range(2))
    if tuple(offset.shape[2:]) != (out_h, out_w):
        raise RuntimeError(f"deform_conv2d: offset is {tuple(offset.shape[2:])}, the output "
                           f"{(out_h, out_w)}")
    return _DeformConv2d.apply(input, offset.contiguous(), weight, bias, tuple(geo))


class OffsetConv2d(nn.Conv2d):
    """A 3x3 conv that predicts a deformable convolution's sampling offsets (2 per tap),
    starting at zero: no offset (Dai et al. 2017, §2.3). Its own class so that the optimizer
    can train it at its own learning rate (§2.3: beta times the network's;
    ``schedule.offset_lr_mult``)."""

    def __init__(self, in_channels: int, taps: int, stride: int | tuple[int, int] = 1):
        super().__init__(in_channels, 2 * taps, 3, padding=1, stride=stride)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
