"""The vectorised CPU deformable convolution equals torchvision's kernel: outputs and the
gradients of input, offsets, weight and bias."""

from __future__ import annotations

import pytest
import torch
from torchvision import ops

from rcnn_cli.ops.deform_conv import deform_conv2d


def inputs(shape, out_channels: int, kernel: int, out_size: tuple[int, int], spread: float,
           seed: int, dtype=torch.float32):
    """Input, offsets (``spread`` px: many samples fall between pixels, some off the map),
    weight and bias."""
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = torch.randn(*shape, generator=g, dtype=dtype)
    offset = torch.randn(n, 2 * kernel * kernel, *out_size, generator=g, dtype=dtype) * spread
    weight = torch.randn(out_channels, c, kernel, kernel, generator=g, dtype=dtype)
    bias = torch.randn(out_channels, generator=g, dtype=dtype)
    return x, offset, weight, bias


def outputs_and_grads(op, tensors, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = op(*leaves, **kw)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    out.backward(grad)
    return out, [t.grad for t in leaves]


def compare(tensors, tol: float, **kw) -> None:
    want, want_grads = outputs_and_grads(ops.deform_conv2d, tensors, **kw)
    got, got_grads = outputs_and_grads(deform_conv2d, tensors, **kw)
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    for name, g, w in zip(("input", "offset", "weight", "bias"), got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (1, 3, 3), (2, 1, 1), (2, 3, 3)])
def test_matches_torchvision(stride, padding, dilation):
    size = (9, 11)
    out = tuple((s + 2 * padding - 2 * dilation - 1) // stride + 1 for s in size)
    tensors = inputs((2, 5, *size), 4, 3, out, spread=2.5, seed=stride + 10 * dilation)
    compare(tensors, 1e-4, stride=stride, padding=padding, dilation=dilation)


def test_zero_offsets_are_the_plain_conv_and_float64_matches_closely():
    x, offset, weight, bias = inputs((2, 4, 8, 8), 3, 3, (8, 8), spread=0.0, seed=1)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, padding=1),
                               torch.conv2d(x, weight, bias, padding=1), atol=1e-5, rtol=1e-5)
    tensors = inputs((1, 3, 7, 6), 2, 3, (7, 6), spread=3.0, seed=2, dtype=torch.float64)
    compare(tensors, 1e-10, padding=1)


def test_samples_off_the_map_read_zero_and_get_no_gradient():
    x, offset, weight, _ = inputs((1, 2, 5, 5), 2, 3, (5, 5), spread=0.0, seed=3)
    offset = torch.full_like(offset, 40.0).requires_grad_(True)  # every tap far outside
    x.requires_grad_(True)
    out = deform_conv2d(x, offset, weight, padding=1)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(
        offset.grad, torch.zeros_like(offset))


def test_without_bias_and_with_frozen_parts():
    x, offset, weight, _ = inputs((2, 3, 6, 7), 4, 3, (6, 7), spread=1.5, seed=4)
    compare((x, offset, weight), 1e-4, padding=1)
    weight.requires_grad_(True)
    out = deform_conv2d(x, offset, weight, padding=1)  # input and offsets need no gradient
    out.sum().backward()
    want = ops.deform_conv2d(x, offset, weight.detach().requires_grad_(True), padding=1)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    assert weight.grad is not None


def test_modulation_and_offset_groups_go_to_torchvision():
    x, offset, weight, bias = inputs((1, 4, 6, 6), 2, 3, (6, 6), spread=1.0, seed=5)
    mask = torch.rand(1, 9, 6, 6, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, padding=1, mask=mask),
                               ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask))
    two_groups = torch.cat([offset, offset * 0.5], 1)
    torch.testing.assert_close(deform_conv2d(x, two_groups, weight, bias, padding=1),
                               ops.deform_conv2d(x, two_groups, weight, bias, padding=1))


def test_offsets_of_the_wrong_size_are_refused():
    x, offset, weight, _ = inputs((1, 2, 6, 6), 2, 3, (5, 5), spread=1.0, seed=7)
    with pytest.raises(RuntimeError, match="offset"):
        deform_conv2d(x, offset, weight, padding=1)


def test_channels_last_input_matches():
    x, offset, weight, bias = inputs((2, 4, 7, 9), 3, 3, (7, 9), spread=2.0, seed=8)
    compare((x.to(memory_format=torch.channels_last), offset, weight, bias), 1e-4, padding=1)


def test_a_trace_records_torchvisions_single_op():
    x, offset, weight, bias = inputs((1, 2, 6, 6), 2, 3, (6, 6), spread=1.0, seed=9)
    traced = torch.jit.trace(lambda a, o: deform_conv2d(a, o, weight, bias, padding=1), (x, offset))
    assert "torchvision::deform_conv2d" in str(traced.graph)
    torch.testing.assert_close(traced(x, offset), deform_conv2d(x, offset, weight, bias, padding=1),
                               atol=1e-5, rtol=1e-5)


def test_bf16_autocast_runs_in_fp32_forward_and_backward():
    """schedule.amp=bf16 (deformable SAC): a bf16 map in, the fp32 op on its values, gradients
    in each leaf's dtype (torchvision's CPU kernel has no bf16 at all)."""
    x, offset, weight, bias = inputs((2, 8, 10, 10), 4, 3, (10, 10), 0.7, seed=5)
    x = x.bfloat16()

    def under_autocast(x, offset, weight, bias, **kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return deform_conv2d(x, offset, weight, bias, **kw)

    got, got_grads = outputs_and_grads(under_autocast, (x, offset, weight, bias), padding=1)
    want, want_grads = outputs_and_grads(ops.deform_conv2d, (x.float(), offset, weight, bias),
                                         padding=1)
    assert got.dtype == torch.float32 and got_grads[0].dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_grads[0], want_grads[0].bfloat16())
    for g, w in zip(got_grads[1:], want_grads[1:]):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
