"""Pictures of detections: boxes, class names, scores (and masks) drawn with torchvision."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from rcnn_cli.io import atomic_write_bytes

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3"]
GT_COLOUR = "#00ff00"


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float [0, 1] or uint8 (3, H, W) image as uint8 on the CPU."""
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def upscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement, so labels stay legible on small images."""
    if factor == 1:
        return image
    return image.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def draw(image: torch.Tensor, boxes: torch.Tensor, labels: list[int], classes: list[str],
         scores: torch.Tensor | None = None, masks: torch.Tensor | None = None,
         colour: str | None = None, scale: int = 1) -> torch.Tensor:
    """``image`` (3, H, W) with ``boxes`` (N, 4 xyxy) labelled ``class score``; contiguous
    ``labels`` (1 = ``classes[0]``) pick the colour unless ``colour`` is given. ``masks``
    (N, H, W) bool or (N, 1, H, W) probabilities are filled in first."""
    out = upscale(to_uint8(image), scale)
    colours = [colour or PALETTE[(lab - 1) % len(PALETTE)] for lab in labels]
    if masks is not None and len(masks):
        m = masks[:, 0] >= 0.5 if masks.dim() == 4 else masks.bool()
        m = upscale(m.cpu(), scale)
        out = draw_segmentation_masks(out, m, alpha=0.4, colors=colours)
    if len(boxes) == 0:
        return out
    text = [classes[lab - 1] if 0 < lab <= len(classes) else str(lab) for lab in labels]
    if scores is not None:
        text = [f"{t} {float(s):.2f}" for t, s in zip(text, scores)]
    return draw_bounding_boxes(out, boxes.detach().cpu().float() * scale, labels=text,
                               colors=colours, width=max(1, scale), fill_labels=True,
                               label_colors="black")


def draw_output(image: torch.Tensor, output: dict, classes: list[str], score_thresh: float,
                scale: int = 1) -> torch.Tensor:
    """A detector output dict (boxes, labels, scores[, masks]) above ``score_thresh``."""
    keep = output["scores"] >= score_thresh
    masks = output["masks"][keep] if "masks" in output else None
    return draw(image, output["boxes"][keep], output["labels"][keep].tolist(), classes,
                output["scores"][keep], masks, scale=scale)


def draw_target(image: torch.Tensor, target: dict, classes: list[str],
                scale: int = 1) -> torch.Tensor:
    """Ground truth in one colour, labelled with class names."""
    return draw(image, target["boxes"], target["labels"].tolist(), classes, None,
                target.get("masks"), colour=GT_COLOUR, scale=scale)


def grid(images: list[torch.Tensor], ncol: int) -> torch.Tensor:
    """uint8 images tiled ``ncol`` per row with a 2 px white border (smaller ones padded)."""
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    padded = [torch.nn.functional.pad(im, (0, w - im.shape[2], 0, h - im.shape[1]), value=255)
              for im in images]
    return make_grid(padded, nrow=ncol, padding=2, pad_value=255)


def encode(image: torch.Tensor, suffix: str) -> bytes:
    """(3, H, W) uint8 as PNG, or JPEG (quality 95) for ``.jpg``/``.jpeg`` (Pillow)."""
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    if suffix.lower() in (".jpg", ".jpeg"):
        pil.save(buf, format="JPEG", quality=95)
    else:
        pil.save(buf, format="PNG")
    return buf.getvalue()


def read_image(path: str | Path) -> torch.Tensor:
    """A PNG/JPEG file as a (3, H, W) uint8 RGB tensor (Pillow)."""
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def write_image(path: str | Path, image: torch.Tensor) -> Path:
    path = Path(path)
    return atomic_write_bytes(path, encode(image, path.suffix))
