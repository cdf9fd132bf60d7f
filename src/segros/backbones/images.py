"""Image preprocessing shared by the adapters: any input to RGB, square crops, uint8 and [-1, 1].

Records carry PIL images or (H, W, 3) arrays of any size; every backbone wants a fixed square.
Show-o and Harmon (and TinyUMM) resize the short side and centre-crop for generation; Harmon's
understanding path pads to a square instead. Keeping these in one place keeps the adapters'
data preparation comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

BICUBIC = Image.Resampling.BICUBIC
NEAREST = Image.Resampling.NEAREST


def to_rgb(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image (any mode) or an (H, W, 3) array."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return image.convert("RGB")


def center_square(image: Any, size: int, resample: int = BICUBIC) -> Image.Image:
    """Resize the short side to ``size`` and centre-crop to ``size`` x ``size``."""
    image = to_rgb(image)
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def pad_square(image: Any, size: int, fill: tuple[int, int, int] = (127, 127, 127)) -> Image.Image:
    """Pad to a square with ``fill`` (the image centred), then resize to ``size``."""
    image = to_rgb(image)
    w, h = image.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas if side == size else canvas.resize((size, size), BICUBIC)


def stack_uint8(images: Sequence[Any]) -> torch.Tensor:
    """(B, H, W, 3) uint8 from equally sized PIL images or arrays."""
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))


def square_batch(images: Sequence[Any], size: int, resample: int = BICUBIC) -> torch.Tensor:
    """(B, size, size, 3) uint8: :func:`center_square` of every image."""
    return stack_uint8([center_square(im, size, resample) for im in images])


def to_signed_unit(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1] (Normalize(0.5, 0.5) of the VAEs)."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
