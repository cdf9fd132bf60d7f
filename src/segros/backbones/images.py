"""Image preprocessing shared by the adapters: any input to RGB, square crops, uint8 and [-1, 1].

Records carry PIL images or (H, W, 3) arrays of any size; every backbone wants a fixed square.
Show-o and Harmon (and TinyUMM) resize the short side and centre-crop for generation; OpenUni
crops the square first and resizes it (:func:`crop_square`); Harmon's understanding path pads to a
square instead. Keeping these in one place keeps the adapters'
data preparation comparable.

The size arithmetic is the libraries' that upstream preprocessing goes through, so the pixels are
the same: the resized long side is truncated, ``int(size * long / short)`` (torchvision's
``Resize(int)`` and transformers' ``get_resize_output_image_size``), and the centre-crop offset is
``int(round((extent - size) / 2.0))`` (torchvision's ``center_crop``, Python's half-to-even round) or
``(extent - size) // 2`` (transformers' ``center_crop``, e.g. ``CLIPImageProcessor``). On PIL images
both libraries resize with ``PIL.Image.resize`` and the given filter, as here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

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


CropRule = Literal["torchvision", "transformers"]


def short_side_resize(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the short side at ``size``: the long side is ``int(size * long / short)``,
    truncated, as torchvision's ``transforms.functional._compute_resized_output_size`` (0.17.1 L352-372)
    and transformers' ``image_transforms.get_resize_output_image_size(default_to_square=False)``
    (4.41.1 L262) compute it."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def crop_offset(extent: int, size: int, rule: CropRule = "torchvision") -> int:
    """Start of a centred ``size`` window in ``extent``: torchvision's ``center_crop`` (0.17.1 L582-583)
    rounds half of the excess with Python's ``round`` (half to even: 83.5 -> 84, 82.5 -> 82);
    transformers' ``image_transforms.center_crop`` (4.41.1 L467-470) floors it."""
    if rule == "torchvision":
        return int(round((extent - size) / 2.0))
    if rule == "transformers":
        return (extent - size) // 2
    raise ValueError(f"unknown crop rule {rule!r}")


def center_square(
    image: Any, size: int, resample: int = BICUBIC, crop: CropRule = "torchvision"
) -> Image.Image:
    """Resize the short side to ``size`` and centre-crop to ``size`` x ``size``: ``Resize(size)`` then
    ``CenterCrop(size)`` of torchvision (default; Show-o's ``image_transform``) or the resize and
    crop of a transformers image processor (``crop="transformers"``; CLIP's)."""
    image = to_rgb(image)
    w, h = image.size
    if (w, h) == (size, size):
        return image
    resized = short_side_resize(w, h, size)
    if resized != (w, h):  # torchvision returns the image untouched when the size already fits
        image = image.resize(resized, resample)
    w, h = image.size
    left, top = crop_offset(w, size, crop), crop_offset(h, size, crop)
    return image.crop((left, top, left + size, top + size))


def crop_square(
    image: Any, size: int, generator: torch.Generator | None = None, resample: int = BICUBIC
) -> Image.Image:
    """Crop the largest square, then resize it to ``size`` x ``size``: OpenUni's order
    (upstream ``crop2square`` then a PIL resize, whose default filter is bicubic), the reverse of
    :func:`center_square`. The square is centred (offset ``(long - short) // 2``), or, given a
    ``generator``, placed at an offset drawn from it uniformly over ``0 .. long - short`` (upstream
    draws it at random in training; a seeded generator keeps a run reproducible)."""
    image = to_rgb(image)
    w, h = image.size
    side = min(w, h)
    excess = max(w, h) - side
    if generator is None:
        offset = excess // 2
    else:
        offset = int(torch.randint(0, excess + 1, (1,), generator=generator))
    box = (offset, 0, offset + side, side) if w > h else (0, offset, side, offset + side)
    if w != h:
        image = image.crop(box)
    return image if side == size else image.resize((size, size), resample)


def crop_square_batch(
    images: Sequence[Any], size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, size, size, 3) uint8: :func:`crop_square` of every image."""
    return stack_uint8([crop_square(im, size, generator) for im in images])


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


def square_batch(
    images: Sequence[Any], size: int, resample: int = BICUBIC, crop: CropRule = "torchvision"
) -> torch.Tensor:
    """(B, size, size, 3) uint8: :func:`center_square` of every image."""
    return stack_uint8([center_square(im, size, resample, crop) for im in images])


def to_signed_unit(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1] (Normalize(0.5, 0.5) of the VAEs).

    In float32 ``u / 127.5 - 1`` equals, for every u in 0..255, both Show-o's ``ToTensor`` +
    ``Normalize(0.5, 0.5)`` (``(u / 255 - 0.5) / 0.5``) and Harmon's ``2 * (u / 255) - 1``."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
