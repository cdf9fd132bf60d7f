"""OpenUni where users compare with upstream (issue 30 item 6), on a tiny random OpenUni.

(a) upstream samples through diffusers' ``SanaPipeline``, which runs classifier-free guidance only
when the scale is above 1: any scale in [0, 1] gives the conditional prediction alone.
(b) upstream crops a square out of a non-square image first and then resizes it with PIL
(``crop2square`` + ``resize``); segros used to resize the short side and then centre-crop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segros.backbones.images import center_square, crop_square
from segros.backbones.openuni.adapter import OpenUniBackbone, OpenUniOptions


@pytest.fixture(scope="module")
def backbone() -> OpenUniBackbone:
    torch.manual_seed(0)
    bb = OpenUniBackbone.from_options(OpenUniOptions(size="tiny", image_size=32, generation_steps=2)).eval()
    with torch.no_grad():  # SANA's output layer starts near zero: make the guidance visible
        bb.model.proj_out.weight.normal_(0.0, 0.2)
    return bb


def _latents(bb: OpenUniBackbone, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return bb.generate_tokens(["a red circle"], gen, guidance_scale=scale, steps=2)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_guidance_at_or_below_one_is_the_conditional_prediction_alone(backbone, scale):
    # the conditional-only run, written out: no empty prompt anywhere in the batch
    assert torch.equal(_latents(backbone, scale), _latents(backbone, 1.0))
    assert not torch.allclose(_latents(backbone, scale), _latents(backbone, 1.5))


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(72, 48), (40, 64), (41, 70)])
def test_training_images_are_cropped_then_resized_as_upstream(backbone, size):
    image = _noise(*size)
    w, h = image.size
    side, excess = min(w, h), abs(w - h)
    # upstream's order, written from its description: the square first, then PIL's resize
    box = (excess // 2, 0, excess // 2 + side, side) if w > h else (0, excess // 2, side, excess // 2 + side)
    want = np.asarray(image.crop(box).resize((32, 32), Image.Resampling.BICUBIC))
    got = backbone.encode_images([image])["images"][0].numpy()
    assert np.array_equal(got, want)
    assert not np.array_equal(got, np.asarray(center_square(image, 32)))  # the old order differs


def test_a_seeded_random_crop_is_reproducible_and_stays_inside(backbone):
    image = _noise(80, 32)
    crops = [np.asarray(crop_square(image, 32, torch.Generator().manual_seed(s))) for s in range(6)]
    again = np.asarray(crop_square(image, 32, torch.Generator().manual_seed(0)))
    assert np.array_equal(crops[0], again)
    assert len({c.tobytes() for c in crops}) > 1  # the offset moves with the seed
    full = np.asarray(image)
    for c in crops:  # every crop is a window of the original at full resolution (side == size)
        assert any(np.array_equal(c, full[:, o : o + 32]) for o in range(49))
