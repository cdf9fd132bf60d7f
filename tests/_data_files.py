"""Real image bytes for data-reader tests (PNG is lossless, so pixels can be compared exactly)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def pixels(seed: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    """A small random RGB array (height, width, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def truncated_png(arr: np.ndarray) -> bytes:
    """A PNG cut off in the middle of its image data: the header parses, decoding fails."""
    data = png_bytes(arr)
    return data[: len(data) // 2]


CORRUPT = b"this is not an image at all"
