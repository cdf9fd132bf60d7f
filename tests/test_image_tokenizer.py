"""TinyUMM's patch tokenizer: shapes, determinism, I/O, exact recovery and the judge round trip."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from segros.backbones.tiny.image_tokenizer import PatchTokenizer, fit_on_images
from segros.data.corpora import training_images


def _random_images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def _tiled(tiles: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """Images ``(B, h*p, w*p, 3)`` made by placing ``tiles[layout]`` (tiles ``(T, p, p, 3)``)."""
    B, h, w = layout.shape
    p = tiles.shape[1]
    return tiles[layout].permute(0, 1, 3, 2, 4, 5).reshape(B, h * p, w * p, 3)


@pytest.fixture(scope="module")
def small_tokenizer() -> PatchTokenizer:
    g = torch.Generator().manual_seed(0)
    return PatchTokenizer(torch.rand(32, 4 * 4 * 3, generator=g), image_size=16, patch=4)


def test_properties_and_shapes(small_tokenizer: PatchTokenizer) -> None:
    tok = small_tokenizer
    assert (tok.num_codes, tok.grid, tok.num_tokens) == (32, (4, 4), 16)
    images = _random_images(5, 16, seed=1)
    codes = tok.encode(images)
    assert codes.dtype == torch.long and codes.shape == (5, 16)
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    decoded = tok.decode(codes)
    assert decoded.dtype == torch.uint8 and decoded.shape == (5, 16, 16, 3)
    # float (B, 3, H, W) input in [0, 1] means the same thing as uint8 (B, H, W, 3)
    as_float = images.permute(0, 3, 1, 2).float() / 255
    assert torch.equal(tok.encode(as_float), codes)
    # a decoded image is a fixed point: it re-encodes to the same codes
    assert torch.equal(tok.encode(decoded), codes)


def test_decode_is_codebook_lookup(small_tokenizer: PatchTokenizer) -> None:
    tok = small_tokenizer
    codes = torch.arange(16).reshape(1, 16)
    image = tok.decode(codes)[0].float() / 255
    # token t = row-major grid cell (t // 4, t % 4) holds codebook row t as a (4, 4, 3) tile
    for t in (0, 5, 15):
        r, c = divmod(t, 4)
        tile = image[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4].reshape(-1)
        assert torch.allclose(tile, tok.codebook[t], atol=0.5 / 255)


def test_bad_inputs_raise(small_tokenizer: PatchTokenizer) -> None:
    with pytest.raises(ValueError):
        small_tokenizer.encode(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError):
        small_tokenizer.decode(torch.full((1, 16), 32))
    with pytest.raises(ValueError):
        PatchTokenizer(torch.rand(4, 10), image_size=16, patch=4)
    with pytest.raises(ValueError):
        PatchTokenizer(torch.rand(4, 48), image_size=18, patch=4)


def test_fit_is_deterministic_given_the_seed() -> None:
    images = _random_images(6, 16, seed=2) // 64 * 64  # 4 levels per channel: repeats and k-means work
    fits = [
        PatchTokenizer.fit(images, 24, 4, torch.Generator().manual_seed(s), iterations=5) for s in (7, 7, 8)
    ]
    assert fits[0].num_codes == 24
    assert torch.equal(fits[0].codebook, fits[1].codebook)
    assert not torch.equal(fits[0].codebook, fits[2].codebook)
    assert torch.equal(fits[0].encode(images), fits[1].encode(images))


def test_save_load_round_trip(tmp_path, small_tokenizer: PatchTokenizer) -> None:
    path = tmp_path / "tok.safetensors"
    small_tokenizer.save(path)
    loaded = PatchTokenizer.load(path)
    assert (loaded.image_size, loaded.patch, loaded.num_codes) == (16, 4, 32)
    assert torch.equal(loaded.codebook, small_tokenizer.codebook)
    images = _random_images(3, 16, seed=3)
    assert torch.equal(loaded.encode(images), small_tokenizer.encode(images))


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        PatchTokenizer.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="safetensors"):
        PatchTokenizer.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"codebook": torch.rand(4, 48)}, str(foreign))  # no tokenizer metadata
    with pytest.raises(ValueError, match="patch_tokenizer"):
        PatchTokenizer.load(foreign)


def test_fit_recovers_four_patches_exactly() -> None:
    g = torch.Generator().manual_seed(4)
    tiles = torch.randint(0, 256, (4, 8, 8, 3), generator=g, dtype=torch.uint8)
    images = _tiled(tiles, torch.randint(0, 4, (10, 4, 4), generator=g))
    tok = PatchTokenizer.fit(images, 4, 8, torch.Generator().manual_seed(0))
    assert torch.equal(tok.decode(tok.encode(images)), images)


def test_kmeans_medoids_keep_the_frequent_patches_exact() -> None:
    """More distinct tiles than codes: rare one-pixel variants merge into the 4 frequent tiles."""
    g = torch.Generator().manual_seed(5)
    tiles = torch.randint(0, 256, (4, 4, 4, 3), generator=g, dtype=torch.uint8)
    variants = tiles.repeat(3, 1, 1, 1)
    variants[4:, 0, 0] = torch.randint(0, 256, (8, 3), generator=g, dtype=torch.uint8)
    clean = _tiled(tiles, torch.randint(0, 4, (20, 4, 4), generator=g))
    noisy = _tiled(variants, torch.cat([torch.arange(12), torch.arange(4)]).reshape(1, 4, 4))
    tok = PatchTokenizer.fit(torch.cat([clean, noisy]), 4, 4, torch.Generator().manual_seed(1))
    assert torch.equal(tok.decode(tok.encode(clean)), clean)


def test_palette_swap_decodes_unseen_colour_exactly() -> None:
    """A silhouette seen only in red round-trips exactly in blue when fitted with palette swap."""
    grey, red, blue = (
        torch.tensor(c, dtype=torch.uint8) for c in ((128, 128, 128), (220, 20, 30), (30, 70, 230))
    )
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[3:11, 5:9] = True  # a bar that cuts 4x4 tiles at several offsets
    mask[6, 2:13] = True

    def paint(color: torch.Tensor) -> torch.Tensor:
        return torch.where(mask[..., None], color, grey)[None]

    blank = torch.zeros(1, 16, 16, 3, dtype=torch.uint8) + grey
    blank[0, :2, :2] = blue  # blue occurs only as a small corner, enough to be a palette colour
    train = torch.cat([paint(red), blank])
    plain = PatchTokenizer.fit(train, 64, 4, torch.Generator().manual_seed(0))
    swapped = PatchTokenizer.fit(train, 64, 4, torch.Generator().manual_seed(0), palette_swap=8)
    target = paint(blue)
    assert not torch.equal(plain.decode(plain.encode(target)), target)
    assert torch.equal(swapped.decode(swapped.encode(target)), target)


@pytest.mark.skipif(
    importlib.util.find_spec("segros.data.shapes") is None, reason="ShapesWorld not available"
)
def _round_trip_summary(tok, image_size: int) -> dict:
    """Judge summary of the evaluation renderings (sample 0 of each prompt) after encode->decode."""
    from segros.data.shapes import SHAPES, UnsupportedPromptError, render_prompt
    from segros.data.shapes_prompts import load_prompts
    from segros.eval.geneval import score_image, summarize
    from segros.eval.shapes_judge import detect

    records, images = [], []
    for index, metadata in enumerate(load_prompts()):
        try:
            scene = render_prompt(metadata, np.random.default_rng([0, index, 0]), image_size)
        except UnsupportedPromptError:
            continue
        records.append(metadata)
        images.append(scene.image)
    batch = torch.from_numpy(np.stack(images))
    restored = tok.decode(tok.encode(batch)).numpy()
    rows = [
        score_image(str(i), detect(image), metadata, SHAPES)
        for i, (image, metadata) in enumerate(zip(restored, records, strict=True))
    ]
    return summarize(rows)


def test_shapes_round_trip_keeps_judge_score() -> None:
    """Judge score of encode->decode'd evaluation renderings is >= 0.95 overall.

    Fitted with :func:`fit_on_images` defaults (2,000 training scenes, 4096 codes; patch 4) and
    scored on 1 sample per prompt (all 319 prompts, rendered as ``segros shapes render-eval --seed 0``
    renders sample 0) rather than 4, to stay well under 30 s; the full 4-sample measurement is in
    the module docstring.
    """
    tok = fit_on_images(training_images("shapes", 64, seed=0, cells=16), patch=4, seed=0)
    assert tok.num_tokens == 256 and tok.num_codes == 4096
    summary = _round_trip_summary(tok, 64)
    assert summary["images"] >= 300
    assert summary["overall"] >= 0.95, summary


def test_tiny_default_tokenizer_round_trip_keeps_judge_score(tmp_path, monkeypatch) -> None:
    """The tokenizer TinyUMM uses by default (32 px, 4 px patches, 8x8 tokens, 4096 codes; the
    copy shipped with the pretrained model) keeps the judge score >= 0.95 (1 sample per prompt;
    4 samples per prompt measured 0.971)."""
    from segros.backbones.tiny.image_tokenizer import cached_tokenizer

    monkeypatch.setenv("SEGROS_CACHE", str(tmp_path))  # nothing cached: the shipped copy is used
    tok = cached_tokenizer(32, 4096)
    assert tok.grid == (8, 8) and tok.num_codes == 4096
    summary = _round_trip_summary(tok, 32)
    assert summary["images"] >= 300
    assert summary["overall"] >= 0.95, summary
