"""Shared image preprocessing: square crops keep the centre, padding keeps the whole image."""

import numpy as np
import torch
from PIL import Image

from segros.backbones.images import center_square, pad_square, square_batch, to_signed_unit


def _striped(w: int, h: int) -> np.ndarray:
    """Left third red, middle green, right third blue."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 3, 0] = 255
    a[:, w // 3 : 2 * w // 3, 1] = 255
    a[:, 2 * w // 3 :, 2] = 255
    return a


def test_center_square_keeps_the_centre_of_a_wide_image():
    out = np.asarray(center_square(_striped(90, 30), 30, Image.Resampling.NEAREST))
    assert out.shape == (30, 30, 3)
    assert (out[:, :, 1] == 255).all() and (out[:, :, [0, 2]] == 0).all()  # only the green middle


def test_pad_square_keeps_everything_and_fills_with_grey():
    out = np.asarray(pad_square(_striped(90, 30), 90))
    assert out.shape == (90, 90, 3)
    assert (out[0, 45] == 127).all() and (out[-1, 45] == 127).all()  # bands above and below
    assert out[45, 5, 0] > 200 and out[45, 85, 2] > 200  # both ends of the image survive


def test_square_batch_and_signed_unit_range():
    images = [_striped(40, 40), Image.fromarray(_striped(64, 48)).convert("L")]
    batch = square_batch(images, 32)
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == torch.uint8
    pixels = to_signed_unit(batch)
    assert pixels.shape == (2, 3, 32, 32)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert torch.equal(pixels[0, 0, 0, 0], torch.tensor(1.0))  # red 255 -> +1
