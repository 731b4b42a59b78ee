"""Image files: header checks for validation and RGB decoding with ``decode_image``.

Convention: pixels are used as stored; the EXIF orientation tag is *not* applied (as in
COCO and PIL's ``Image.size``), so annotations are in stored-pixel coordinates and a size
mismatch is reported with both sizes. Grayscale, RGBA, CMYK and palette images are converted
to RGB; 16-bit images are scaled to 8 bits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from rcnn_cli.errors import DataError

DEFAULT_MAX_PIXELS = 100_000_000


def image_size(path: Path) -> tuple[int, int] | str:
    """``(width, height)`` from the file header, or a reason why the file is unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        return "missing file"
    except (UnidentifiedImageError, OSError, ValueError) as e:
        return f"not a readable image ({type(e).__name__})"
    except Image.DecompressionBombError as e:
        return f"image too large ({e})"


def read_image(path: Path, max_pixels: int = 0) -> torch.Tensor:
    """Decode ``path`` as a uint8 RGB ``(3, H, W)`` tensor; errors name the file."""
    try:
        data = read_file(str(path))
    except RuntimeError as e:
        raise DataError(f"{path}: cannot read image file ({e})") from None
    if data.numel() == 0:
        raise DataError(f"{path}: zero-byte image file")
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1].split(", ")[-1]
        raise DataError(f"{path}: cannot decode image: {reason}") from None
    if max_pixels and image.shape[-1] * image.shape[-2] > max_pixels:
        raise DataError(f"{path}: {image.shape[-1]}x{image.shape[-2]} pixels exceeds "
                        f"dataset.max_pixels={max_pixels}")
    if image.dtype == torch.uint16:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image
