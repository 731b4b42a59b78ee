"""The vectorised CPU RoIAlign equals torchvision's kernel: outputs and input gradients."""

from __future__ import annotations

import pytest
import torch
from torchvision import ops

from rcnn_cli.ops.roi_align import _forward_gather, roi_align


def random_rois(n_images: int, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Boxes in image pixels, some partly or wholly outside the map and some degenerate."""
    xy = torch.rand(count, 2, generator=generator) * size * 1.4 - size * 0.2
    wh = torch.rand(count, 2, generator=generator) * size * 0.8
    wh[::7] = 0.0
    batch = torch.randint(0, n_images, (count, 1), generator=generator).float()
    return torch.cat([batch, xy, xy + wh], 1)


def compare(x: torch.Tensor, rois: torch.Tensor, tol: float, **kw) -> None:
    """Close to ``tol``; bit-identical when every RoI has the same sample grid (a fixed
    ``sampling_ratio``): the same operations in the same order as torchvision's CPU kernel."""
    exact = kw.get("sampling_ratio", -1) > 0
    a = x.detach().clone().requires_grad_(True)
    b = x.detach().clone().requires_grad_(True)
    ref = ops.roi_align(a, rois, **kw)
    out = roi_align(b, rois, **kw)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(b.grad, a.grad, atol=tol, rtol=tol)
    if exact:
        assert torch.equal(out, ref) and torch.equal(b.grad, a.grad)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_matches_torchvision(aligned, sampling_ratio, scale):
    g = torch.Generator().manual_seed(sampling_ratio + 10 * int(aligned) + int(scale * 100))
    x = torch.randn(2, 6, 13, 17, generator=g)
    rois = random_rois(2, 40, int(17 / scale), g)
    compare(x, rois, 1e-5, output_size=(7, 5), spatial_scale=scale,
            sampling_ratio=sampling_ratio, aligned=aligned)


def test_channels_last_and_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 16, 16, generator=g).to(memory_format=torch.channels_last)
    rois = random_rois(2, 25, 64, g)
    compare(x, rois, 1e-5, output_size=7, spatial_scale=0.25, sampling_ratio=2)
    compare(x.double(), rois.double(), 1e-10, output_size=7, spatial_scale=0.25, sampling_ratio=2)


def test_list_of_boxes_and_no_boxes():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 9, generator=g)
    boxes = [torch.tensor([[1.0, 1.0, 6.0, 7.0]]), torch.tensor([[0.0, 2.0, 8.5, 4.0]])]
    torch.testing.assert_close(roi_align(x, boxes, 3, 1.0, 2),
                               ops.roi_align(x, boxes, 3, 1.0, 2), atol=1e-6, rtol=1e-6)
    assert roi_align(x, torch.zeros(0, 5), 3).shape == (0, 3, 3, 3)


def test_gradcheck_double():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 5.1], [0, 1.5, 0.2, 3.3, 2.8]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, 2, 1.0, 2, True), (x,))


def test_chunked_work_gives_the_same_result(monkeypatch):
    import rcnn_cli.ops.roi_align as module

    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 12, 12, generator=g)
    rois = random_rois(2, 30, 12, g)
    whole = roi_align(x, rois, 7, 1.0, 2)
    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 64)
    compare(x, rois, 1e-5, output_size=7, spatial_scale=1.0, sampling_ratio=2)
    assert torch.equal(roi_align(x, rois, 7, 1.0, 2), whole)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
def test_gather_forward_of_a_channels_last_map_matches_torchvision(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(20 + sampling_ratio + 10 * int(aligned))
    x = torch.randn(2, 6, 13, 17, generator=g)
    rois = random_rois(2, 40, 68, g)
    kw = dict(output_size=(7, 5), spatial_scale=0.25, sampling_ratio=sampling_ratio,
              aligned=aligned)
    ref = ops.roi_align(x, rois, **kw)
    out = _forward_gather(x.contiguous(memory_format=torch.channels_last), rois, (7, 5), 0.25,
                          sampling_ratio, aligned)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rois_count,gather", [(3, True), (400, False)])
def test_inference_takes_the_gather_only_where_the_map_outweighs_the_samples(rois_count, gather):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 24, 24, generator=g).contiguous(memory_format=torch.channels_last)
    rois = random_rois(1, rois_count, 24, g)
    with torch.inference_mode():
        out = roi_align(x, rois, 7, 1.0, 2)
    assert out.is_contiguous(memory_format=torch.channels_last) == gather
    torch.testing.assert_close(out, ops.roi_align(x, rois, 7, 1.0, 2), atol=1e-5, rtol=1e-5)


def test_a_channels_last_map_that_needs_a_gradient_keeps_torchvisions_forward():
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = torch.tensor([[0, 0.5, 1.0, 6.5, 7.0]])
    out = roi_align(x, rois, 2, 1.0, 1)
    assert torch.equal(out, ops.roi_align(x, rois, 2, 1.0, 1))
    out.sum().backward()
    assert x.grad is not None


def test_few_rois_on_a_large_map_keep_torchvisions_backward():
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    rois = torch.tensor([[0, 4.0, 4.0, 30.0, 30.0]])  # 196 corners for 4096 pixels
    out = roi_align(x, rois, 7, 1.0, 1)
    assert "torchvision_roi_align" in type(out.grad_fn).__name__
    dense = roi_align(x, rois.repeat(40, 1), 7, 1.0, 1)
    assert type(dense.grad_fn).__name__ == "_RoIAlignBackward"
