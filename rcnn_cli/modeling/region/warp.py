"""Region warping for R-CNN (Girshick et al. 2014, §2.1 "Region proposals / Feature
extraction" and Appendix A "Object proposal transformations").

Each proposal is dilated so that, after warping to the CNN's fixed input (227 for AlexNet,
224 for VGG16), exactly ``context`` pixels of image context surround the original box on every
side ("context padding p = 16"); the warp is anisotropic (the paper's best variant, "warp").
Parts of the dilated box outside the image are zero, which is the mean once images are
normalised, as the paper's "fill with the image mean" does.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align


def context_boxes(boxes: torch.Tensor, out_size: int, context: int = 16) -> torch.Tensor:
    """Dilate each (x1, y1, x2, y2) box about its centre by ``out / (out - 2 * context)`` in
    each direction: warped to ``out_size`` pixels, the original box covers the central
    ``out_size - 2 * context`` pixels."""
    if not 0 <= 2 * context < out_size:
        raise ValueError(f"context={context} leaves no room in a {out_size} px crop")
    boxes = boxes.to(torch.float32).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * (out_size / (out_size - 2 * context))
    return torch.cat([centre - half, centre + half], dim=1)


def warp_regions(image: torch.Tensor, boxes: torch.Tensor, out_size: int,
                 context: int = 16) -> torch.Tensor:
    """Warp every box of ``image [C, H, W]`` (with its context) to ``[N, C, out, out]``.

    One bilinear sample per output pixel, at the pixel's centre (``roi_align`` with
    ``aligned=True`` and ``sampling_ratio=1``): MATLAB's ``imresize(..., 'bilinear',
    'antialiasing', false)`` of the R-CNN code. Samples outside the image are set to 0.
    A zero-size box yields a constant crop (its one image point); ``N = 0`` gives an empty batch.
    """
    c, h, w = image.shape
    dilated = context_boxes(boxes, out_size, context).to(image.device)
    if len(dilated) == 0:
        return image.new_zeros((0, c, out_size, out_size))
    rois = torch.cat([dilated.new_zeros((len(dilated), 1)), dilated], dim=1).to(image.dtype)
    crops = roi_align(image[None], rois, (out_size, out_size), spatial_scale=1.0,
                      sampling_ratio=1, aligned=True)
    return crops * _inside_mask(dilated, out_size, h, w).to(crops.dtype)[:, None]


def _inside_mask(dilated: torch.Tensor, out_size: int, height: int, width: int) -> torch.Tensor:
    """[N, out, out] bool: whether each output pixel's sample point lies inside the image."""
    steps = (torch.arange(out_size, device=dilated.device, dtype=torch.float32) + 0.5) / out_size
    xs = dilated[:, 0:1] + steps * (dilated[:, 2:3] - dilated[:, 0:1])
    ys = dilated[:, 1:2] + steps * (dilated[:, 3:4] - dilated[:, 1:2])
    inside_x = (xs >= 0) & (xs <= width)
    inside_y = (ys >= 0) & (ys <= height)
    return inside_y[:, :, None] & inside_x[:, None, :]
