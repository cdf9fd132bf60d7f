"""The grounding map (Eqs. 3-12) against a float64 per-sample reference, and its invariances."""

import math

import pytest
import torch
from reference import ground_one, random_batch

from segros import grounding
from segros.grounding import GroundingConfig, ground, minmax


@pytest.mark.parametrize("text_filter", ["both", "intra", "inter", "none"])
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.02])
def test_matches_float64_reference(text_filter, tau):
    text, image, valid = random_batch(B=4, L=12, N=20, D=16, seed=1)
    cfg = GroundingConfig(text_keep_ratio=0.4, temperature=tau, text_filter=text_filter, noise_scale=0.0)
    g = ground(text, image, valid, cfg)
    for b in range(text.shape[0]):
        omega, keep, mbar, s_intra, s_inter = ground_one(text[b], image[b], valid[b], 0.4, tau, text_filter)
        torch.testing.assert_close(g.text_importance[b][valid[b]].double(), omega, atol=1e-4, rtol=0)
        torch.testing.assert_close(g.text_intra[b][valid[b]].double(), s_intra, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(g.text_inter[b][valid[b]].double(), s_inter, atol=1e-4, rtol=1e-5)
        assert torch.equal(g.text_keep[b], keep)
        torch.testing.assert_close(g.scores[b].double(), mbar, atol=1e-4, rtol=0)
        torch.testing.assert_close(g.perturbed[b], g.scores[b])  # alpha = 0: no noise


@pytest.mark.parametrize("gram_split_min", [4, 128])  # text Gram: three blocks on its own, or in the product
@pytest.mark.parametrize("chunk_samples", [1, 3, 8])  # samples per chunk of the CPU product loop
@pytest.mark.parametrize("tau", [1.0, 0.02])
def test_every_gram_and_chunking_path_matches_the_reference(monkeypatch, gram_split_min, chunk_samples, tau):
    B, L, N, D = 5, 12, 20, 16
    monkeypatch.setattr(grounding, "GRAM_SPLIT_MIN", gram_split_min)
    monkeypatch.setattr(grounding, "CPU_CHUNK_BYTES", chunk_samples * N * D * 4)
    text, image, valid = random_batch(B=B, L=L, N=N, D=D, seed=3)
    cfg = GroundingConfig(temperature=tau, noise_scale=0.0)
    g = ground(text, image, valid, cfg)
    for b in range(B):
        omega, keep, mbar, s_intra, s_inter = ground_one(text[b], image[b], valid[b], 0.4, tau, "both")
        torch.testing.assert_close(g.text_importance[b][valid[b]].double(), omega, atol=1e-4, rtol=0)
        torch.testing.assert_close(g.text_intra[b][valid[b]].double(), s_intra, atol=1e-4, rtol=1e-5)
        assert torch.equal(g.text_keep[b], keep)
        torch.testing.assert_close(g.scores[b].double(), mbar, atol=1e-4, rtol=0)


def test_output_contract():
    text, image, valid = random_batch(B=3, L=10, N=12, D=8)
    g = ground(text, image, valid, GroundingConfig(), generator=torch.Generator().manual_seed(0))
    for name in ("text_importance", "scores", "perturbed"):
        assert getattr(g, name).dtype == torch.float32
    assert g.text_keep.dtype == torch.bool
    assert not (g.text_keep & ~valid).any()
    # K = max(1, floor(rho * Lv)) tokens kept per sample
    expected = [max(1, math.floor(0.4 * int(n))) for n in valid.sum(1)]
    assert g.text_keep.sum(1).tolist() == expected
    assert g.scores.min() >= 0 and g.scores.max() <= 1
    xi = g.perturbed - g.scores
    assert xi.min() >= 0 and xi.max() < 0.5
    assert xi.std() > 0.05  # noise was drawn


def test_none_filter_keeps_every_valid_token():
    text, image, valid = random_batch()
    g = ground(text, image, valid, GroundingConfig(text_filter="none"))
    assert torch.equal(g.text_keep, valid)


def test_appending_padding_changes_nothing():
    text, image, valid = random_batch(B=3, L=8, N=10, D=6, seed=3)
    cfg = GroundingConfig(noise_scale=0.5)
    g1 = ground(text, image, valid, cfg, torch.Generator().manual_seed(7))
    pad = torch.randn(3, 5, 6) * 100  # garbage embeddings at padding must not matter
    text2 = torch.cat([text, pad], 1)
    valid2 = torch.cat([valid, torch.zeros(3, 5, dtype=torch.bool)], 1)
    g2 = ground(text2, image, valid2, cfg, torch.Generator().manual_seed(7))
    torch.testing.assert_close(g2.scores, g1.scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(g2.perturbed, g1.perturbed, atol=1e-6, rtol=0)
    assert torch.equal(g2.text_keep[:, :8], g1.text_keep)
    assert not g2.text_keep[:, 8:].any()
    torch.testing.assert_close(g2.text_importance[:, :8][valid], g1.text_importance[valid])


def left_padded(text, valid, width, seed=11):
    """The Show-o prompt layout: each row right-aligned in ``width`` columns, garbage before it."""
    B, L, D = text.shape
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(B, width, D, generator=g) * 100  # padding embeddings must never be read
    wide[:, width - L :] = text
    wide_valid = torch.zeros(B, width, dtype=torch.bool)
    wide_valid[:, width - L :] = valid
    return wide, wide_valid


@pytest.mark.parametrize("tau", [1.0, 0.02])
def test_fixed_width_prompts_give_the_captions_own_result(tau):
    """Captions in the last 8 of 64 columns: the same map, Omega and w as the captions alone."""
    text, image, valid = random_batch(B=3, L=9, N=20, D=16, seed=5)
    wide, wide_valid = left_padded(text, valid, 64)
    assert grounding.caption_span(wide_valid) == (48, 64)  # 8 caption columns, widened to 16
    cfg = GroundingConfig(temperature=tau, noise_scale=0.5)
    alone = ground(text, image, valid, cfg, torch.Generator().manual_seed(7))
    padded = ground(wide, image, wide_valid, cfg, torch.Generator().manual_seed(7))
    torch.testing.assert_close(padded.scores, alone.scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(padded.perturbed, alone.perturbed, atol=1e-6, rtol=0)
    for name in ("text_keep", "text_importance", "text_intra", "text_inter"):
        full, own = getattr(padded, name), getattr(alone, name)
        assert full.shape == wide_valid.shape
        torch.testing.assert_close(full[:, 55:], own, atol=1e-6, rtol=1e-5)  # other BLAS widths round
        assert not full[:, :55].any()  # 0 / False outside the captions, as at any invalid token
    assert torch.equal(padded.text_valid, wide_valid)
    for b in range(3):  # and the float64 reference agrees on the wide rows too
        omega, keep, mbar, _, _ = ground_one(wide[b], image[b], wide_valid[b], 0.4, tau, "both")
        importance = padded.text_importance[b][wide_valid[b]].double()
        torch.testing.assert_close(importance, omega, atol=1e-4, rtol=0)
        assert torch.equal(padded.text_keep[b], keep)


def test_ground_computes_only_the_caption_columns(monkeypatch):
    """A 10-token caption in a 128-wide prompt costs a 16-column product, not a 128-column one."""
    widths = []
    product = grounding._cosine_product

    def spy(image_emb, zt, *rest):
        widths.append(zt.shape[1])
        return product(image_emb, zt, *rest)

    monkeypatch.setattr(grounding, "_cosine_product", spy)
    text, image, valid = random_batch(B=2, L=11, N=8, D=8)
    wide, wide_valid = left_padded(text, valid, 128)
    ground(wide, image, wide_valid)
    ground(text, image, valid)
    assert widths == [16, 11]


@pytest.mark.parametrize(
    "columns, width, expected",
    [
        ([3, 4, 5], 64, (3, 19)),  # 3 columns widened to 16 to the right
        ([60, 62], 64, (48, 64)),  # no room on the right: widened to the left
        ([10, 40], 64, (10, 42)),  # a hole inside the span stays in it: 31 columns -> 32
        ([0, 40], 48, None),  # 41 columns -> 48: the whole width
        ([2], 12, None),  # narrower than one SPAN_ALIGN
    ],
)
def test_caption_span(columns, width, expected):
    valid = torch.zeros(2, width, dtype=torch.bool)
    valid[0, columns[0]] = True
    valid[1, columns[-1]] = True
    assert grounding.caption_span(valid) == expected


def test_permuting_image_tokens_permutes_outputs():
    text, image, valid = random_batch(B=2, L=7, N=15, D=5, seed=4)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    cfg = GroundingConfig(noise_scale=0.0)
    g1 = ground(text, image, valid, cfg)
    g2 = ground(text, image[:, perm], valid, cfg)
    torch.testing.assert_close(g2.scores, g1.scores[:, perm], atol=1e-6, rtol=0)
    assert torch.equal(g2.text_keep, g1.text_keep)


def test_seeded_generator_reproduces_and_different_seeds_differ():
    text, image, valid = random_batch()
    run = lambda s: ground(text, image, valid, GroundingConfig(), torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(run(5).perturbed, run(5).perturbed)
    assert not torch.equal(run(5).perturbed, run(6).perturbed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_float_dtype_computes_in_at_least_float32(dtype):
    text, image, valid = random_batch(seed=2)
    cfg = GroundingConfig(noise_scale=0.0)
    g_ref = ground(text.to(dtype).float(), image.to(dtype).float(), valid, cfg)
    g = ground(text.to(dtype), image.to(dtype), valid, cfg)
    assert g.scores.dtype == torch.float32
    torch.testing.assert_close(g.scores, g_ref.scores, atol=1e-5, rtol=0)


def test_minmax_of_constant_is_zeros_even_with_rounding():
    x = torch.full((2, 50), 0.1) + torch.randn(2, 50) * 1e-9
    assert torch.equal(minmax(x), torch.zeros(2, 50))
    y = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(minmax(y), torch.tensor([[0.0, 0.5, 1.0]]))


def test_identical_image_tokens_give_a_zero_map():
    text, _, valid = random_batch(B=2, N=6)
    image = torch.ones(2, 6, text.shape[-1])
    g = ground(text, image, valid, GroundingConfig(noise_scale=0.0))
    assert torch.equal(g.scores, torch.zeros(2, 6))


def test_grounding_points_at_matching_tokens():
    """Image tokens equal to a caption word's embedding get the highest grounding scores."""
    g = torch.Generator().manual_seed(0)
    D = 64
    vocab = torch.randn(10, D, generator=g)
    text = vocab[[0, 1, 2, 3]].unsqueeze(0)
    background = torch.randn(12, D, generator=g)
    image = torch.cat([background, vocab[[2, 2, 3, 3]]]).unsqueeze(0)  # object tokens at 12..15
    valid = torch.ones(1, 4, dtype=torch.bool)
    cfg = GroundingConfig(text_keep_ratio=0.5, temperature=0.1, text_filter="inter", noise_scale=0.0)
    res = ground(text, image, valid, cfg)
    assert res.text_keep[0].tolist() == [False, False, True, True]  # the words that are in the image
    assert set(res.scores[0].topk(4).indices.tolist()) == {12, 13, 14, 15}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text_keep_ratio": 1.5}, "text_keep_ratio"),
        ({"text_keep_ratio": -0.1}, "text_keep_ratio"),
        ({"text_filter": "bogus"}, "text_filter"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": 0.001}, "temperature"),
        ({"noise_scale": -1.0}, "noise_scale"),
        ({"noise_scale": float("nan")}, "noise_scale"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroundingConfig(**kwargs)


def test_bad_inputs_name_the_argument_and_sample():
    text, image, valid = random_batch(B=3)
    no_valid = valid.clone()
    no_valid[2] = False
    with pytest.raises(ValueError, match=r"text_valid.*sample index \[2\]"):
        ground(text, image, no_valid)
    nan_image = image.clone()
    nan_image[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"image_emb.*NaN or inf.*\[1\]"):
        ground(text, nan_image, valid)
    inf_text = text.clone()
    inf_text[0, 2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"text_emb.*\[0\]"):
        ground(inf_text, image, valid)
    with pytest.raises(ValueError, match="embedding dim"):
        ground(text, image[..., :-1], valid)
    with pytest.raises(ValueError, match="batch size"):
        ground(text, image[:2], valid)
    with pytest.raises(ValueError, match="rank 3"):
        ground(text[0], image, valid)
    with pytest.raises(TypeError, match="text_emb.*floating"):
        ground(text.long(), image, valid)
    with pytest.raises(TypeError, match="text_valid.*bool"):
        ground(text, image, valid.long())
    with pytest.raises(ValueError, match="text_valid.*shape"):
        ground(text, image, valid[:, :-1])
