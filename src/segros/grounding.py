"""The visual grounding map of SeGroS (paper Sec. 3.2-3.3, Eqs. 3-12), batched.

Given a caption's text-token embeddings ``Zt (B, L, D)`` and the image-token embeddings
``Zi (B, N, D)``, both taken from the backbone *before* its transformer, this module finds the
discriminative caption tokens (text filtering) and scores how strongly each image token is
pointed at by them (the grounding map). Everything is tensor algebra over the batch; the
ragged caption lengths are handled with the ``text_valid`` mask, so appending padding never
changes a result. Nothing of size ``(B, N, L, D)`` is ever built: the only large products are
``Zi Ztᵀ (B, N, L)`` and ``Zt Ztᵀ (B, L, L)``.

The file reads in the paper's order: the knobs and the result, :func:`ground` and
:func:`_ground_columns` with one line per equation (3 to 12), then the steps that are plain tensor
algebra (Omega, w, the map, min-max, the noise) and the input checks. Everything that is there only
to be fast on a CPU, and changes no number those lines define, is in the last section, "Speed": the
captions' columns only, the draws taken before the product, the cache-sized chunks of the image
product, the text Gram as three blocks, and the fused in-place exponentials behind Eqs. 3-6 and
Eq. 10's denominators.

tests/reference.py restates Eqs. 3-12 for one sample at a time, in float64 and straight from the
paper's text; tests/test_grounding.py holds this batched code to it. docs/design.md lists where
each equation is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from segros._checks import (
    check_at_least,
    check_bool_tensor,
    check_choice,
    check_float_tensor,
    check_ratio,
    compute_dtype,
    raise_if_not_finite,
)

TEXT_FILTERS = ("both", "intra", "inter", "none")
TEXT_STOPWORDS = ("none", "english")  # caption function words excluded from the filter (Fig. 3)

# A min-max range at or below this fraction of the vector's magnitude is float rounding of a
# constant vector, whose min-max normalisation is defined as all zeros (docs/design.md).
NEGLIGIBLE_RANGE = 1e-5
# Below this, exp(-2 / tau) underflows even in float64 and the softmaxes lose their meaning.
MIN_TEMPERATURE = 0.005


@dataclass(frozen=True)
class GroundingConfig:
    """Knobs of the grounding map. Defaults are the paper's (Sec. 4.1, Tables 4 and 8)."""

    text_keep_ratio: float = 0.4  # rho in Eq. 8
    temperature: float = 1.0  # tau in Eqs. 3, 5, 10
    text_filter: str = "both"  # Table 4: both | intra | inter | none
    noise_scale: float = 0.5  # alpha: xi ~ U[0, alpha) in Eq. 12 (Table 8)
    # "english": caption tokens of English function words are left out of the grounding (never
    # kept in w, Eq. 9) while still conditioning the model; applied by :func:`content_tokens`
    # before :func:`ground` (Fig. 3's caption: "text scores exclude ... stopwords")
    text_stopwords: str = "none"

    def __post_init__(self) -> None:
        """The one validation of these knobs (a config's ``method:`` keys too, which name them)."""
        check_ratio("text_keep_ratio", self.text_keep_ratio)
        check_choice("text_filter", self.text_filter, TEXT_FILTERS)
        check_choice("text_stopwords", self.text_stopwords, TEXT_STOPWORDS)
        check_at_least("temperature", self.temperature, MIN_TEMPERATURE)
        check_at_least("noise_scale", self.noise_scale, 0.0)


@dataclass
class Grounding:
    """Result of :func:`ground`; every tensor is float32 (or bool) on the inputs' device."""

    text_valid: torch.Tensor  # (B, L) bool, as given
    text_intra: torch.Tensor  # (B, L) s_intra (Eq. 4); 0 where not valid
    text_inter: torch.Tensor  # (B, L) s_inter (Eq. 6); 0 where not valid
    text_importance: torch.Tensor  # (B, L) Omega (Eq. 7); 0 where not valid
    text_keep: torch.Tensor  # (B, L) bool w (Eq. 9); False where not valid
    raw_scores: torch.Tensor  # (B, N) m (Eq. 11)
    scores: torch.Tensor  # (B, N) m-bar = minmax(m)
    perturbed: torch.Tensor  # (B, N) m-tilde = m-bar + xi (Eq. 12)

    def to(self, device: torch.device | str) -> Grounding:
        return Grounding(**{k: v.to(device) for k, v in self.__dict__.items()})

    def widen(self, text_valid: torch.Tensor, start: int) -> Grounding:
        """This result, computed on the caption columns ``[start, start + L')`` only, at the full width
        of ``text_valid`` (B, L): the (B, L) fields are 0 (False) outside those columns, as they
        are at every token that is not valid."""

        def full(x: torch.Tensor) -> torch.Tensor:
            out = x.new_zeros(text_valid.shape)
            out[:, start : start + x.shape[1]] = x
            return out

        return replace(
            self,
            text_valid=text_valid,
            text_intra=full(self.text_intra),
            text_inter=full(self.text_inter),
            text_importance=full(self.text_importance),
            text_keep=full(self.text_keep),
        )


# ---------------------------------------------------------------------------------------------
# The equations, in the paper's order
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def ground(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    text_valid: torch.Tensor,
    cfg: GroundingConfig | None = None,
    generator: torch.Generator | None = None,
) -> Grounding:
    """Compute the SeGroS grounding map for a batch.

    Args:
        text_emb: ``(B, L, D)`` text-token embeddings from the backbone's input table.
        image_emb: ``(B, N, D)`` image-token embeddings in the same D-dim space.
        text_valid: ``(B, L)`` bool, True only for caption tokens (not padding, BOS/EOS or
            chat-template tokens). Every sample needs at least one.
        cfg: the knobs; paper defaults when None.
        generator: draws the noise xi of Eq. 12; seeds reproduce results exactly.

    The map is a supervision signal that is never differentiated, so it runs without autograd even
    on embeddings that require grad. What it costs is in the "Speed" section at the end of the file.
    """
    cfg = cfg or GroundingConfig()
    _check_inputs(text_emb, image_emb, text_valid)
    # No equation reads a column outside the captions: compute on theirs only (Speed).
    return _on_caption_columns(_ground_columns, text_emb, image_emb, text_valid, cfg, generator)


def _ground_columns(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    text_valid: torch.Tensor,
    cfg: GroundingConfig,
    generator: torch.Generator | None,
) -> Grounding:
    """Eqs. 3-12 on checked inputs, every column of which they read: one line per equation.

    Notation: ``Ẑ`` are the unit-normalised rows, ``S = Ẑt Ẑtᵀ`` (L x L) and ``A = Ẑi Ẑtᵀ`` (N x L)
    the cosines, j and k index caption tokens, i image tokens. The functions named ``_...`` here
    compute their equations in the fast forms of the Speed section.
    """
    valid, tau = text_valid, cfg.temperature
    dtype = compute_dtype(text_emb, image_emb)  # float32 at least, whatever the inputs' dtype
    zt = text_emb.to(dtype)
    slots, xi = _draws(valid, image_emb.shape[1], cfg, generator, zt)  # Eq. 8's K; Eq. 12's xi ~ U[0, 1)
    # Step 1: S and A as the products of the raw rows Zt Ztᵀ and Zi Ztᵀ with the image-row norms |z_i|
    # (the text norms come from the Gram's diagonal); the divisions by the norms happen in Step 2.
    product, zi_norm, gram = _products(image_emb, zt, dtype)
    shift = column_shift(valid, tau)  # both softmaxes below run over the caption tokens only
    # Eq. 3: P_jk = exp(S_jk / tau) / sum_k' exp(S_jk' / tau);  Eq. 4: s_intra_k = sum_j P_jk
    text_inv_norm, s_intra = _text_softmax(gram, valid, shift, tau, dtype)
    # Eq. 5: Q_ij = exp(A_ij / tau) / sum_j' exp(A_ij' / tau);  Eq. 6: s_inter_j = sum_i Q_ij;
    # and Eq. 10's exponentials and their denominators sum_i exp(A_ij / tau) (each times exp(-1 / tau))
    expo, s_inter, col_sums = _exponentials(product, zi_norm, text_inv_norm, shift, tau)
    _check_finite(text_emb, image_emb, zi_norm, s_intra, s_inter)
    return _filter_and_map(s_intra, s_inter, expo, col_sums, valid, cfg, slots, xi)  # Eqs. 7-12


def _filter_and_map(
    s_intra: torch.Tensor,
    s_inter: torch.Tensor,
    expo: torch.Tensor,
    col_sums: torch.Tensor,
    valid: torch.Tensor,
    cfg: GroundingConfig,
    slots: torch.Tensor | None,
    noise: torch.Tensor,
) -> Grounding:
    """Steps 4-6: importance Omega (Eq. 7), kept tokens w (Eqs. 8-9), the map (Eqs. 10-11), noise (12).

    ``expo`` (B, N, L) is exp((A - 1) / tau), 0 in the columns of tokens that are not valid, and
    ``col_sums`` its column sums (:func:`_exponentials`): the constant exp(-1 / tau) cancels in
    Eq. 10. ``slots`` and ``noise`` are :func:`_draws`'s.
    """
    importance = text_importance(s_intra, s_inter, valid, cfg.text_filter)  # Eq. 7
    # Eqs. 8-9: w_j = 1 for the top K = max(1, floor(rho L)) tokens by Omega (every token for "none")
    keep = valid.clone() if slots is None else keep_top_k(importance, valid, cfg.text_keep_ratio, slots)
    # Eq. 10: softmax of A / tau over the image tokens; Eq. 11: m_i = sum_j w_j of it, that is
    # m_i = sum_j (w_j / sum_i' exp_i'j) exp_ij as a (B, 1, L) @ (B, L, N) matvec
    raw = torch.bmm((keep / col_sums).unsqueeze(1), expo.transpose(1, 2)).squeeze(1)  # m (B, N)
    scores = minmax(raw)  # Eq. 11's m-bar, in expo's dtype: its rounding is relative to the range
    perturbed = torch.add(scores, noise, alpha=cfg.noise_scale)  # Eq. 12: m-tilde = m-bar + alpha xi

    f32 = torch.float32
    return Grounding(
        text_valid=valid,
        text_intra=s_intra.to(f32),  # already 0 where not valid: those columns are masked out
        text_inter=s_inter.to(f32),  # likewise (exp(-inf) = 0)
        text_importance=importance.to(f32),
        text_keep=keep,
        raw_scores=raw.to(f32),
        scores=scores.to(f32),
        perturbed=perturbed.to(f32),
    )


def text_importance(
    s_intra: torch.Tensor, s_inter: torch.Tensor, valid: torch.Tensor, text_filter: str
) -> torch.Tensor:
    """Eq. 7: Omega = minmax(s_intra) + minmax(s_inter) over each caption's tokens, 0 where not valid.

    ``text_filter`` (Table 4) keeps both terms, one of them, or none (zeros). Omega is taken in
    float64 (s_intra's dtype).
    """
    if text_filter == "both":  # one min-max over both rows (B, 2, L); stack promotes s_inter
        return minmax(torch.stack([s_intra, s_inter], 1), valid.unsqueeze(1)).sum(1)
    if text_filter == "none":
        return torch.zeros_like(s_intra)
    return minmax(s_intra if text_filter == "intra" else s_inter.double(), valid)


def minmax(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max scale along the last dim over ``valid`` entries (Eqs. 7 and 11); a constant vector gives zeros.

    Entries outside ``valid`` are 0 in the output.
    """
    if valid is None:  # (two reductions: aminmax along a dim is several times slower on CPU)
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    else:
        invalid = ~valid
        lo = x.masked_fill(invalid, math.inf).amin(-1, keepdim=True)
        hi = x.masked_fill(invalid, -math.inf).amax(-1, keepdim=True)
    span = hi - lo
    negligible = span <= NEGLIGIBLE_RANGE * torch.maximum(hi, -lo)  # max(|hi|, |lo|), as lo <= hi
    out = torch.where(negligible, 0.0, (x - lo) / span)
    return out if valid is None else out.masked_fill_(invalid, 0.0)


def keep_top_k(
    values: torch.Tensor, valid: torch.Tensor, ratio: float, slots: torch.Tensor | None = None
) -> torch.Tensor:
    """Eqs. 8-9: per row, True for the top K = max(1, floor(ratio * #valid)) valid entries.

    Ties go to the earlier position (stable sort), so the choice is deterministic. A row with
    no valid entry keeps nothing. ``slots`` is :func:`top_k_slots` of ``valid`` and ``ratio`` when
    the caller has it already.
    """
    if slots is None:
        slots = top_k_slots(valid, ratio)
    order = torch.argsort(values.masked_fill(~valid, -math.inf), dim=-1, descending=True, stable=True)
    return torch.zeros_like(valid).scatter(-1, order, slots) & valid


def top_k_slots(valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """Eq. 8's K as a mask: per row, True at the first K = max(1, floor(ratio * #valid)) positions."""
    num_valid = valid.sum(-1, dtype=torch.float64)
    k = torch.floor(ratio * num_valid).clamp(min=1)  # float64, as Python's math.floor would
    return torch.arange(valid.shape[-1], device=valid.device) < k.unsqueeze(-1)


def uniform_noise(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """U[0, 1) noise (Eq. 12's xi before its scale alpha) drawn on the generator's device, returned
    on ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    noise = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def content_tokens(
    text_valid: torch.Tensor, stopword: torch.Tensor | None, text_stopwords: str
) -> torch.Tensor:
    """The caption tokens the grounding reads: ``text_valid`` minus stopwords when asked.

    With ``text_stopwords="english"`` every token marked in ``stopword`` (B, L) is dropped, except
    in a sample whose caption would be left empty (only function words): that sample keeps its
    whole caption, so the map stays defined. ``"none"`` returns ``text_valid`` unchanged.
    """
    check_choice("text_stopwords", text_stopwords, TEXT_STOPWORDS)
    if text_stopwords == "none":
        return text_valid
    if stopword is None:
        raise ValueError("text_stopwords='english' needs the backbone's stopword mask (GroundingInputs)")
    content = text_valid & ~stopword.to(text_valid.device)
    return torch.where(content.any(-1, keepdim=True), content, text_valid)


def _check_inputs(text_emb: torch.Tensor, image_emb: torch.Tensor, text_valid: torch.Tensor) -> None:
    check_float_tensor("text_emb", text_emb, 3)
    check_float_tensor("image_emb", image_emb, 3)
    B, L, D = text_emb.shape
    if image_emb.shape[0] != B:
        raise ValueError(f"image_emb has batch size {image_emb.shape[0]} but text_emb has {B}")
    if image_emb.shape[2] != D:
        raise ValueError(f"image_emb has embedding dim {image_emb.shape[2]} but text_emb has {D}")
    if image_emb.shape[1] == 0:
        raise ValueError("image_emb has no image tokens (N = 0)")
    check_bool_tensor("text_valid", text_valid, (B, L))
    if text_valid.device != text_emb.device or image_emb.device != text_emb.device:
        raise ValueError("text_emb, image_emb and text_valid must be on the same device")
    if not text_valid.any(-1).all():
        samples = (~text_valid.any(-1)).nonzero().flatten()[:8].tolist()
        raise ValueError(f"text_valid has no valid caption token at sample index {samples}")


def _check_finite(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    zi_norm: torch.Tensor,
    s_intra: torch.Tensor,
    s_inter: torch.Tensor,
) -> None:
    """Raise, naming the input, when an embedding or an affinity is not finite.

    One test for all three: s_intra <= L and s_inter <= N, and a finite norm is below sqrt(max float),
    so the sum is finite exactly when every term is.
    """
    if not torch.isfinite(zi_norm.sum() + s_inter.sum() + s_intra.sum()):
        raise_if_not_finite("text_emb", text_emb)
        raise_if_not_finite("image_emb", image_emb)
        raise ValueError("the affinities are not finite: is the temperature too small?")


# ---------------------------------------------------------------------------------------------
# Speed: how the lines above run fast on a CPU, without changing what they compute
# ---------------------------------------------------------------------------------------------
#
# Cost of :func:`ground`: one ``(B*N x D)(D x L)`` product; the text Gram, a ``(B*L x D)(D x L)``
# product (three quarters of one for long captions); one read of ``image_emb`` for its row norms
# (fused with the product on CPU); and six passes over ``(B, N, L)``: two scalings (the second with
# the shift), the exponential, a row sum, one two-row product (s_inter and the column sums) and a
# row-vector product (the map). L is the width of the captions' columns (:func:`caption_span`), not
# the padded width of the prompts. ``benchmarks/grounding_speed.py`` times the stages one by one:
# ``_draws``, ``_text_gram``, ``_cosine_product`` (with the text Gram of short captions),
# ``_text_softmax``, ``_exponentials`` and ``_filter_and_map``.

# :func:`caption_span` rounds the columns it keeps up to a multiple of this: the BLAS runs products of
# odd widths far below its peak (on the reference 2-core CPU, Zi Ztᵀ at B8 N1024 D2048 took 12.4 ms
# for 37 caption columns, 10.5 ms for 48 and 7.9 ms for 32).
SPAN_ALIGN = 16
# On CPU, :func:`_cosine_product` reads image_emb in chunks of whole samples of about this many bytes
# (in the compute dtype), so the rows whose norms were just taken are still in cache when the product
# reads them. A sample larger than this is not chunked (the cache cannot help it), unless it must be
# converted to the compute dtype: then one sample at a time, so no full converted copy is written.
CPU_CHUNK_BYTES = 4 << 20
# Captions of at least this many tokens get their Gram from :func:`_text_gram`, as three of its four
# blocks (G is symmetric); shorter ones get it whole from :func:`_cosine_product`, one chunk of samples
# at a time right after the chunk's image product, while their text rows are still in cache: for
# them the blocks would be small matmuls running below the machine's peak.
GRAM_SPLIT_MIN = 128
LOG2_E = math.log2(math.e)


def _on_caption_columns(
    compute,
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    text_valid: torch.Tensor,
    cfg: GroundingConfig,
    generator: torch.Generator | None,
) -> Grounding:
    """``compute`` (:func:`_ground_columns`) on the :func:`caption_span` columns of the text only,
    its result widened back to the full width with zeros (:meth:`Grounding.widen`)."""
    span = caption_span(text_valid)
    if span is None:
        return compute(text_emb, image_emb, text_valid, cfg, generator)
    start, stop = span  # the padding outside the captions' columns is never read
    inner = compute(text_emb[:, start:stop], image_emb, text_valid[:, start:stop], cfg, generator)
    return inner.widen(text_valid, start)


def caption_span(valid: torch.Tensor) -> tuple[int, int] | None:
    """The columns ``[start, stop)`` of ``valid`` (B, L) that hold every caption token of the batch,
    widened to a multiple of :data:`SPAN_ALIGN` inside ``[0, L)``; None when that is the whole width.

    Backbones pad prompts to a fixed width (Show-o: 128 text tokens, left-padded) that a caption
    rarely fills, and no equation reads a column outside the captions: :func:`ground` computes on
    these columns only, so its cost follows the captions' length, not the padded width.
    """
    L = valid.shape[1]
    used = valid.any(0).nonzero().flatten()
    if used.numel() == 0:
        return None
    start, stop = int(used[0]), int(used[-1]) + 1
    width = min(L, -(-(stop - start) // SPAN_ALIGN) * SPAN_ALIGN)
    if width == L:
        return None
    stop = min(L, start + width)
    return stop - width, stop


def _draws(
    valid: torch.Tensor, N: int, cfg: GroundingConfig, generator: torch.Generator | None, like: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """What depends only on the mask and the generator: Eq. 8's K as :func:`top_k_slots` (None
    for ``text_filter="none"``) and the noise xi ~ U[0, 1) of Eq. 12, (B, N) in ``like``'s dtype.

    :func:`ground` takes them before the product: right after a long matmul every small op runs
    several times slower (its code and data are no longer in the caches), and the ops after the
    product are the ones that pay it.
    """
    slots = None if cfg.text_filter == "none" else top_k_slots(valid, cfg.text_keep_ratio)
    return slots, uniform_noise((valid.shape[0], N), generator, like)


def gram_in_product(L: int) -> bool:
    """True when :func:`_cosine_product` computes the text Gram (captions shorter than GRAM_SPLIT_MIN)."""
    return L < GRAM_SPLIT_MIN


def _products(
    image_emb: torch.Tensor, zt: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1: ``Zi Ztᵀ`` (B, N, L) in ``dtype``, the image-row norms ``|z_i|`` (B, N, 1) and the text
    Gram ``Zt Ztᵀ`` (B, L, L) in float64: by :func:`_text_gram` for long captions, else inside
    :func:`_cosine_product`'s chunk loop (:func:`gram_in_product`)."""
    gram = None if gram_in_product(zt.shape[1]) else _text_gram(zt)
    return _cosine_product(image_emb, zt, dtype, gram)


def _text_gram(zt: torch.Tensor) -> torch.Tensor:
    """The Gram ``G = Zt Ztᵀ`` (B, L, L) of the raw text rows, in float64, computed in ``zt``'s dtype.

    G is symmetric, so it costs three quarters of a full product: the left half of its columns, the
    lower-right block, and the upper-right block as the transpose of the lower-left one.
    """
    B, L, _ = zt.shape
    h = L // 2
    gram = torch.empty(B, L, L, dtype=torch.float64, device=zt.device)
    left = torch.bmm(zt, zt[:, :h].transpose(1, 2))  # G[:, :, :h]
    gram[:, :, :h] = left  # (mixed-dtype products are far slower than these copies)
    gram[:, h:, h:] = torch.bmm(zt[:, h:], zt[:, h:].transpose(1, 2))
    gram[:, :h, h:] = left[:, h:].transpose(1, 2)
    return gram


def _cosine_product(
    image_emb: torch.Tensor, zt: torch.Tensor, dtype: torch.dtype, gram: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Zi Ztᵀ`` (B, N, L) over raw rows, the image-row norms ``|z_i|`` (B, N, 1), and the text Gram.

    The image rows are normalised after the product (their norms scale A's rows), so no
    normalised copy of the large (B, N, D) tensor is written. On CPU the batch is walked in
    cache-sized chunks (:data:`CPU_CHUNK_BYTES`): each chunk's norms are taken just before the
    product reads the same rows, instead of in a separate pass over the image tensor, and a
    half-precision input is converted to ``dtype`` one chunk at a time instead of as a whole copy.
    ``gram`` is :func:`_text_gram`'s, returned as it is; when None (short captions,
    :func:`gram_in_product`), each chunk's text Gram ``Zt Ztᵀ`` is taken right after its product,
    which has just read the same text rows, and returned in float64.
    """
    B, N, D = image_emb.shape
    L = zt.shape[1]
    product = torch.empty(B, N, L, dtype=dtype, device=image_emb.device)
    norms = torch.empty(B, N, 1, dtype=dtype, device=image_emb.device)
    own_gram = torch.empty(B, L, L, dtype=dtype, device=zt.device) if gram is None else None
    step = B
    if image_emb.device.type == "cpu":
        per_sample = CPU_CHUNK_BYTES // max(1, N * D * torch.finfo(dtype).bits // 8)
        step = per_sample if per_sample or image_emb.dtype != dtype else B
    step = max(1, step)
    grams = own_gram.split(step) if own_gram is not None else [None] * math.ceil(B / step)
    chunks = zip(
        image_emb.split(step), zt.split(step), product.split(step), norms.split(step), grams, strict=True
    )
    for zi, zt_chunk, product_chunk, norms_chunk, gram_chunk in chunks:
        zi = zi.to(dtype)
        zt_t_chunk = zt_chunk.transpose(1, 2)
        torch.linalg.vector_norm(zi, dim=-1, keepdim=True, out=norms_chunk)
        torch.bmm(zi, zt_t_chunk, out=product_chunk)
        if gram_chunk is not None:
            torch.bmm(zt_chunk, zt_t_chunk, out=gram_chunk)
    return product, norms, gram if own_gram is None else own_gram.double()


def column_shift(valid: torch.Tensor, tau: float) -> torch.Tensor:
    """``(B, 1, L)`` float64: ``-log2(e) / tau`` at caption tokens, ``-inf`` at the others.

    Added to a logit ``S log2(e) / tau`` (S a cosine, so S <= 1) it gives ``(S - 1) log2(e) / tau
    <= 0``, whose ``exp2`` is ``exp((S - 1) / tau)``: never above 1, and exactly 0 in the columns of
    tokens that are not valid, so plain sums over a row are the softmax denominators of Eqs. 3 and 5.
    """
    return (
        torch.full(valid.shape, -LOG2_E / tau, dtype=torch.float64, device=valid.device)
        .masked_fill_(~valid, -math.inf)
        .unsqueeze(1)
    )


def _text_softmax(
    gram: torch.Tensor, valid: torch.Tensor, shift: torch.Tensor, tau: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2 for the text: the self-affinity softmax (Eq. 3) and s_intra (Eq. 4), from the Gram.

    ``gram`` is ``Zt Ztᵀ`` in float64 (overwritten); ``shift`` is :func:`column_shift`. Returns the
    text rows' inverse norms ``1 / |z_t|`` (B, 1, L) in ``dtype``, which turn ``Zi Ztᵀ`` into A once
    the image rows are divided by theirs too, and s_intra (B, L) in float64, 0 where not valid.

    No normalised copy of the text is written: the norms come from G's diagonal, so ``S_jk = G_jk /
    (|z_j| |z_k|)`` with ``S_jj = 1``. The softmax and its column sums run in float64: at a sharp
    temperature every s_intra is 1 plus a tiny spread that min-max normalisation (Eq. 7) amplifies,
    so the sums must not round. The Gram's own rounding in ``dtype`` (of its entries and of the norms
    from its diagonal, about 1e-7 relative in float32) moves each logit by about that much over tau,
    the same order as the image side's A, and the resulting error is relative to the small
    off-diagonal terms, so it is not amplified like the sums' would be (Omega stays within 5e-5 of a
    float64 computation even for caption tokens at cosine 0.9 with D = 2048).
    """
    inv_norm = gram.diagonal(dim1=1, dim2=2).rsqrt().clamp_max_(1e12)  # 1 / |z_t| (B, L)
    # Eq. 3 as exp((S - 1) / tau) normalised by its row sums: S <= 1 = S_jj, so with the shift nothing
    # overflows and no row maximum is needed; exp(x) = 2^(x log2(e)), the factor folded into the scales.
    w = inv_norm * math.sqrt(LOG2_E / tau)  # G_jk w_j w_k = S_jk log2(e) / tau
    expo = torch.addcmul(shift, gram.mul_(w.unsqueeze(-1)), w.unsqueeze(1), out=gram).exp2_()
    row_weights = valid / expo.sum(-1)  # 1 / (Eq. 3's denominator) on valid rows, 0 on the others
    s_intra = torch.bmm(row_weights.unsqueeze(1), expo).squeeze(1)  # Eq. 4: column sums over valid rows
    return inv_norm.to(dtype).unsqueeze(1), s_intra


def _exponentials(
    product: torch.Tensor, zi_norm: torch.Tensor, text_inv_norm: torch.Tensor, shift: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 5-6 and the column sums of Eq. 10 from one shared exponential.

    Eqs. 5 and 10 are softmaxes of the same A/tau along its two axes. Both share
    ``exp((A - 1) / tau)``: since |A| <= 1 it never overflows, and the shift cancels in either
    normalisation. Columns of tokens that are not valid get exp(-inf) = 0 (``shift`` is
    :func:`column_shift`), so plain sums are sums over the valid tokens. Works in place on
    ``product`` when the exponential's dtype is its own (float32 unless the temperature is so sharp
    that float32 would underflow). Three passes over (B, N, L) make the exponentials: the text
    norms, then the image norms, log2(e) / tau and the shift in one ``addcdiv``, then ``exp2``.

    Returns the exponentials (B, N, L), s_inter (B, L) in their dtype (0 where not valid) and the
    column sums (B, L) of Eq. 10.
    """
    exp_dtype = product.dtype if 2.0 / tau <= 80.0 else torch.float64  # float32 underflows below
    expo = product.to(exp_dtype).mul_(text_inv_norm.to(exp_dtype))  # Zi Ztᵀ / |z_t| = |z_i| A
    # exp((A - 1) / tau) = 2^(A log2(e) / tau - log2(e) / tau), 0 where not valid, with the division
    # by |z_i| in the same pass. The rounding of A log2(e) / tau is relative to it, about as large
    # as the one A itself carries from the matmul.
    zi_norm = zi_norm.to(exp_dtype).clamp_min(1e-12)
    torch.addcdiv(shift.to(exp_dtype), expo, zi_norm, value=LOG2_E / tau, out=expo).exp2_()
    # (B, N, 1): Eq. 5's denominators, > 0 as exp_dtype holds exp(-2 / tau) without underflow
    row_sums = expo.sum(-1, keepdim=True)
    # Eq. 6 and Eq. 10's column sums in one read of expo: (B, 2, N) @ (B, N, L) with the rows
    # 1 / row_sums (s_inter) and ones (the plain column sums; 0 where not valid).
    weights = torch.cat([row_sums.reciprocal_(), torch.ones_like(row_sums)], -1).transpose(1, 2)
    sums = torch.bmm(weights, expo)
    s_inter, col_sums = sums[:, 0], sums[:, 1].clamp_min_(torch.finfo(exp_dtype).tiny)
    return expo, s_inter, col_sums
