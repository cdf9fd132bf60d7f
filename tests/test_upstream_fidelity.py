"""Arithmetic that upstream's own code defines, matched exactly (issue "Exactly upstream where it matters").

Each test states upstream's rule independently (restated here, not imported from the package) and
shows that the rule we replaced gives a different answer on the same input, so each fails on the
old behaviour:

1. Show-o generation: tokens left masked per step in float32 (``models/sampling.py``
   ``cosine_schedule`` on ``torch.tensor(ratio)``, ``models/modeling_showo.py`` ``mask_len``).
2. Decoded images to uint8 by truncation (Show-o ``inference_t2i.py``; Harmon ``scripts/text2image.py``).
3. Preprocessing sizes: truncated resized side, torchvision's rounded / transformers' floored crop offset.
4. Harmon/MAR ``respace.py`` ``space_timesteps``: accumulate the fractional stride, round each total.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from harmon_helpers import tiny_backbone as tiny_harmon
from PIL import Image
from showo_helpers import tiny_backbone as tiny_showo

from segros.backbones.harmon.diffloss import GaussianDiffusion, cosine_betas, spaced_timesteps
from segros.backbones.images import center_square, crop_offset, short_side_resize, square_batch
from segros.backbones.showo.adapter import ShowoBackbone

# --- 1. Show-o: tokens left masked after each generation step ---------------------------------------


def upstream_showo_mask_len(num_vq_tokens: int, step: int, timesteps: int) -> int:
    """t2i_generate: ratio = 1.0 * (step + 1) / timesteps; mask_ratio = cos(torch.tensor(ratio) * pi * 0.5)
    (a float32 CPU tensor); mask_len = (num_vq_tokens * mask_ratio).floor()."""
    ratio = 1.0 * (step + 1) / timesteps
    mask_ratio = torch.cos(torch.tensor(ratio, dtype=torch.float32) * math.pi * 0.5)
    assert mask_ratio.dtype == torch.float32
    return int((num_vq_tokens * mask_ratio).floor().item())


def old_showo_mask_len(n: int, step: int, steps: int) -> int:
    return math.floor(n * math.cos(0.5 * math.pi * (step + 1) / steps))


@pytest.mark.parametrize("n", [256, 1024])
@pytest.mark.parametrize("steps", [12, 18, 3, 6, 9])
def test_showo_masked_counts_follow_upstream_float32_schedule(n, steps):
    ours = [ShowoBackbone.cosine_mask_len(n, s, steps) for s in range(steps)]
    assert ours == [upstream_showo_mask_len(n, s, steps) for s in range(steps)]
    # the step with ratio 2/3: float32 leaves one token fewer than float64 did
    two_thirds = 2 * steps // 3 - 1
    assert ours[two_thirds] == n // 2 - 1
    assert old_showo_mask_len(n, two_thirds, steps) == n // 2


def test_showo_masked_counts_for_every_step_count_up_to_64():
    for steps in range(1, 65):
        for s in range(steps):
            for n in (64, 256, 1024):
                assert ShowoBackbone.cosine_mask_len(n, s, steps) == upstream_showo_mask_len(n, s, steps)


@pytest.fixture(scope="module")
def showo(showo_tokenizer):
    return tiny_showo(showo_tokenizer)


def test_showo_generation_keeps_upstream_masked_counts(showo, monkeypatch):
    """The tiny model has 64 image tokens; with 3 steps upstream re-masks 55 then 31 (float64: 32)."""
    seen = []
    real = showo.image_logits

    def spy(ids, mask, image_ids, *args, **kwargs):
        seen.append((image_ids == showo.vocab.mask).sum(-1).tolist())
        return real(ids, mask, image_ids, *args, **kwargs)

    monkeypatch.setattr(showo, "image_logits", spy)
    showo.generate_tokens(["a red circle", "two blue squares"], torch.Generator().manual_seed(0), steps=3)
    N = showo.num_tokens
    assert N == 64
    want = [N, upstream_showo_mask_len(N, 0, 3), upstream_showo_mask_len(N, 1, 3)]
    assert want == [64, 55, 31] and old_showo_mask_len(N, 1, 3) == 32
    assert [set(row) for row in seen] == [{c} for c in want]


# --- 2. decoded images to uint8 ---------------------------------------------------------------------


def _levels_with_fraction(frac: float) -> torch.Tensor:
    """Levels 0..254 plus ``frac`` of a level, as (1, 3, 16, 16) values on the 0..255 scale."""
    levels = torch.arange(255, dtype=torch.float64) + frac
    return torch.cat([levels, levels.new_full((768 - 255,), 100 + frac)]).view(1, 3, 16, 16)


def test_showo_decode_truncates_like_upstream(showo, monkeypatch):
    """inference_t2i.py: clamp((x + 1) / 2, 0, 1) * 255 in float32, then numpy astype(uint8)."""
    for frac in (0.5, 0.7, 0.999):
        pixels = (_levels_with_fraction(frac) / 255 * 2 - 1).float()
        pixels[0, 0, 0, :2] = torch.tensor([-1.5, 1.5])  # clamped at both ends
        monkeypatch.setattr(showo.vq, "decode_code", lambda codes, grid, p=pixels: p.clone())
        got = showo.decode_tokens(torch.zeros(1, showo.num_tokens, dtype=torch.long))
        x = pixels.numpy()
        want = (np.clip((x + 1.0) / 2.0, 0.0, 1.0) * 255.0).transpose(0, 2, 3, 1).astype(np.uint8)
        assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), want)
        assert got[0, 0, 0, 0].item() == 0 and got[0, 0, 1, 0].item() == 255  # clamped
        # a value a fraction above a level stays at that level (rounding moved >= .5 up)
        assert got[0, 2, 0, 0].item() == 32 and got[0, 0, 2, 0].item() == 2
        if frac == 0.7:
            old = ((pixels + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
            assert not torch.equal(got, old)


@pytest.fixture(scope="module")
def harmon(harmon_tokenizer):
    return tiny_harmon(harmon_tokenizer)


def test_harmon_decode_truncates_like_upstream(harmon, monkeypatch):
    """scripts/text2image.py and batch_text2image.py: clamp(127.5 * x + 128.0, 0, 255).to(uint8)."""
    size = harmon.image_size
    for frac in (0.5, 0.7):
        levels = torch.arange(size * size * 3, dtype=torch.float64) % 255 + frac
        x = ((levels.view(1, 3, size, size) - 128.0) / 127.5).float()
        x[0, 0, 0, :2] = torch.tensor([-1.5, 1.5])
        monkeypatch.setattr(harmon.vae, "decode", lambda z, x=x: x.clone())
        got = harmon.decode_tokens(torch.zeros(1, harmon.num_tokens, 16))
        want = torch.clamp(127.5 * x + 128.0, 0, 255).to("cpu", dtype=torch.uint8).permute(0, 2, 3, 1)
        assert torch.equal(got, want)
        assert got[0, 0, 2, 0].item() == 2 and got[0, 0, 0, 0].item() == 0 and got[0, 0, 1, 0].item() == 255


# --- 3. preprocessing sizes -------------------------------------------------------------------------


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: resampling differences show up as pixel differences."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def reference_torchvision(image: Image.Image, size: int) -> np.ndarray:
    """Resize(size, BICUBIC) + CenterCrop(size) on a PIL image, torchvision 0.17.1 arithmetic:
    long side int(size * long / short), PIL resize, crop at int(round((extent - size) / 2.0))."""
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BICUBIC)
    left = int(round((image.width - size) / 2.0))
    top = int(round((image.height - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def old_center_square(image: Image.Image, size: int) -> np.ndarray:
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def test_640x427_image_matches_torchvision_resize_and_center_crop():
    image = _photo(640, 427)
    ours = np.asarray(center_square(image, 256))
    assert short_side_resize(640, 427, 256) == (383, 256)  # 383.69 truncated (rounded: 384)
    assert np.array_equal(ours, reference_torchvision(image, 256))
    old = old_center_square(image, 256)
    assert (np.abs(ours.astype(int) - old.astype(int)).max(-1) > 0).mean() > 0.3  # the old side differs
    assert np.array_equal(square_batch([image, np.asarray(image)], 256)[1].numpy(), ours)


@pytest.mark.parametrize("w,h", [(427, 640), (300, 256), (259, 256), (261, 256), (256, 263), (500, 333)])
def test_other_shapes_match_torchvision(w, h):
    image = _photo(w, h, seed=w + h)
    assert np.array_equal(np.asarray(center_square(image, 256)), reference_torchvision(image, 256))


def test_crop_offsets_round_like_torchvision_or_floor_like_transformers():
    # torchvision: Python round of half the excess (half to even); the old floor differs on 1.5
    assert [crop_offset(e, 256) for e in (256, 257, 258, 259, 261, 263)] == [0, 0, 1, 2, 2, 4]
    assert (259 - 256) // 2 == 1
    assert [crop_offset(e, 256, "transformers") for e in (256, 257, 258, 259, 261, 263)] == [0, 0, 1, 1, 2, 3]
    with pytest.raises(ValueError):
        crop_offset(300, 256, "nearest")


def test_the_showo_magvit_path_gets_torchvision_pixels(showo):
    """prepare_t2i's images (those MAGVIT-v2 encodes) for a 640x427 photo at the tiny model's 32 px."""
    image = _photo(640, 427, seed=3)
    batch = showo.prepare_t2i([SimpleNamespace(image=image, caption="a red circle")])
    assert np.array_equal(batch.images[0].numpy(), reference_torchvision(image, 32))
    assert not np.array_equal(batch.images[0].numpy(), old_center_square(image, 32))


def test_transformers_rule_matches_the_installed_transformers_functions():
    """crop="transformers" equals transformers' own resize + center_crop (CLIPImageProcessor's path:
    get_resize_output_image_size(default_to_square=False), PIL resize, floored crop offsets)."""
    from transformers.image_transforms import center_crop, get_resize_output_image_size, resize
    from transformers.image_utils import ChannelDimension, PILImageResampling

    last = ChannelDimension.LAST
    for (w, h), size in [((640, 427), 336), ((427, 640), 336), ((500, 333), 56), ((259, 256), 256)]:
        image = _photo(w, h, seed=w)
        array = np.asarray(image)
        out_hw = get_resize_output_image_size(array, size, default_to_square=False, input_data_format=last)
        assert short_side_resize(w, h, size) == (out_hw[1], out_hw[0])
        resized = resize(array, out_hw, resample=PILImageResampling.BICUBIC, input_data_format=last)
        want = center_crop(resized, (size, size), input_data_format=last)
        got = np.asarray(center_square(image, size, crop="transformers"))
        assert np.array_equal(got, want), (w, h, size)


# --- 4. Harmon / MAR respaced diffusion timesteps ---------------------------------------------------


def upstream_space_timesteps(num_timesteps: int, section_count: int) -> set[int]:
    """respace.py space_timesteps with one section: cur_idx += frac_stride, take round(cur_idx)."""
    frac_stride = 1 if section_count <= 1 else (num_timesteps - 1) / (section_count - 1)
    cur_idx, taken = 0.0, []
    for _ in range(section_count):
        taken.append(round(cur_idx))
        cur_idx += frac_stride
    return set(taken)


def old_spaced_timesteps(num_steps: int, count: int) -> list[int]:
    stride = 1.0 if count == 1 else (num_steps - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


def test_spaced_timesteps_follow_upstream_for_every_count():
    differ = 0
    for count in range(1, 1001):
        ours = spaced_timesteps(1000, count)
        assert ours == sorted(upstream_space_timesteps(1000, count)), count
        assert len(ours) == count
        differ += ours != old_spaced_timesteps(1000, count)
    assert differ == 278  # counts where the old round(i * stride) picked another timestep


def test_21_steps_take_499_as_upstream():
    ours = spaced_timesteps(1000, 21)
    assert 499 in ours and 500 not in ours  # the running total reaches 499.4999...
    assert 500 in old_spaced_timesteps(1000, 21)  # round(10 * 49.95) = round(499.5) = 500
    assert 499 in GaussianDiffusion.respaced(cosine_betas(1000), 21).timestep_map.tolist()
