"""The visual grounding map of SeGroS (paper Sec. 3.2-3.3, Eqs. 3-12), batched.

Given a caption's text-token embeddings ``Zt (B, L, D)`` and the image-token embeddings
``Zi (B, N, D)``, both taken from the backbone *before* its transformer, this module finds the
discriminative caption tokens (text filtering) and scores how strongly each image token is
pointed at by them (the grounding map). Everything is tensor algebra over the batch; the
ragged caption lengths are handled with the ``text_valid`` mask, so appending padding never
changes a result. Nothing of size ``(B, N, L, D)`` is ever built: the only large products are
``Zi Ztᵀ (B, N, L)`` and ``Zt Ztᵀ (B, L, L)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from segros._checks import (
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
# constant vector, whose min-max normalisation is defined as all zeros (DESIGN.md).
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
        check_ratio("text_keep_ratio", self.text_keep_ratio)
        check_choice("text_filter", self.text_filter, TEXT_FILTERS)
        check_choice("text_stopwords", self.text_stopwords, TEXT_STOPWORDS)
        for name in ("temperature", "noise_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not (math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE):
            raise ValueError(f"temperature must be finite and >= {MIN_TEMPERATURE}, got {self.temperature}")
        if not (math.isfinite(self.noise_scale) and self.noise_scale >= 0):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {self.noise_scale}")


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


def minmax(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max scale along the last dim over ``valid`` entries; a constant vector gives zeros.

    Entries outside ``valid`` are 0 in the output.
    """
    if valid is None:
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    else:
        lo = x.masked_fill(~valid, math.inf).amin(-1, keepdim=True)
        hi = x.masked_fill(~valid, -math.inf).amax(-1, keepdim=True)
    span = hi - lo
    negligible = span <= NEGLIGIBLE_RANGE * torch.maximum(hi.abs(), lo.abs())
    out = (x - lo) / torch.where(negligible, torch.ones_like(span), span)
    out = out.masked_fill(negligible, 0.0)
    return out if valid is None else out.masked_fill(~valid, 0.0)


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


def keep_top_k(values: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """Eqs. 8-9: per row, True for the top K = max(1, floor(ratio * #valid)) valid entries.

    Ties go to the earlier position (stable sort), so the choice is deterministic. A row with
    no valid entry keeps nothing.
    """
    num_valid = valid.sum(-1).to(torch.float64)
    k = torch.floor(ratio * num_valid).clamp(min=1)  # float64, as Python's math.floor would
    order = torch.argsort(values.masked_fill(~valid, -math.inf), dim=-1, descending=True, stable=True)
    in_top = torch.arange(values.shape[-1], device=values.device) < k.unsqueeze(-1)
    return torch.zeros_like(valid).scatter(-1, order, in_top) & valid


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
    """
    cfg = cfg or GroundingConfig()
    _check_inputs(text_emb, image_emb, text_valid)
    dtype = compute_dtype(text_emb, image_emb)
    tau = cfg.temperature
    valid = text_valid

    # Step 1: l2-normalised rows. Image rows are normalised after the product (divide A's rows
    # by |z_i|), which avoids writing a normalised copy of the large (B, N, D) tensor. The text
    # side is small and runs in float64: min-max normalisation amplifies rounding when a sharp
    # temperature makes the scores nearly equal.
    zt = torch.nn.functional.normalize(text_emb.double(), dim=-1)
    zi = image_emb.to(dtype)
    zi_norm = torch.linalg.vector_norm(zi, dim=-1, keepdim=True).clamp_min(1e-12)
    cosine = torch.bmm(zi, zt.to(dtype).transpose(1, 2)).div_(zi_norm)  # A (B, N, L), Sec. 3.2.2

    # Steps 2-3: intra- and inter-modal affinity over the valid text tokens only.
    text_cols = valid.unsqueeze(1)  # (B, 1, L)
    self_affinity = torch.bmm(zt, zt.transpose(1, 2)) / tau  # S / tau (B, L, L)
    p_self = self_affinity.masked_fill(~text_cols, -math.inf).softmax(-1)  # Eq. 3
    s_intra = (p_self * valid.unsqueeze(-1)).sum(1)  # Eq. 4: column sums over valid rows

    # Eqs. 5 and 10 are softmaxes of the same A/tau along its two axes. Both share one
    # exponential: since |A| <= 1, exp((A - 1) / tau) never overflows, and the shift cancels in
    # either normalisation. Neither (B, N, L) probability tensor is materialised.
    exp_dtype = cosine.dtype if 2.0 / tau <= 80.0 else torch.float64  # float32 underflows below
    expo = cosine.to(exp_dtype).sub_(1.0).div_(tau).exp_()  # (B, N, L)
    tiny = torch.finfo(exp_dtype).tiny
    row_sums = torch.bmm(expo, valid.to(exp_dtype).unsqueeze(-1)).clamp_min(tiny)  # (B, N, 1)
    s_inter = torch.bmm(expo.transpose(1, 2), row_sums.reciprocal()).squeeze(-1).double()  # Eq. 6
    s_inter = s_inter.masked_fill(~valid, 0.0)
    if not (
        torch.isfinite(zi_norm).all() and torch.isfinite(s_inter).all() and torch.isfinite(s_intra).all()
    ):
        raise_if_not_finite("text_emb", text_emb)
        raise_if_not_finite("image_emb", image_emb)
        raise ValueError("the affinities are not finite: is the temperature too small?")

    # Step 4: importance Omega (Eq. 7) and the kept text tokens w (Eqs. 8-9).
    norm_intra, norm_inter = minmax(s_intra, valid), minmax(s_inter, valid)
    importance = {
        "both": norm_intra + norm_inter,
        "intra": norm_intra,
        "inter": norm_inter,
        "none": torch.zeros_like(norm_intra),
    }[cfg.text_filter]
    keep = valid.clone() if cfg.text_filter == "none" else keep_top_k(importance, valid, cfg.text_keep_ratio)

    # Step 5: text-to-image attention over image tokens (Eq. 10), summed over kept tokens (Eq. 11):
    # m_i = sum_j w_j exp_ij / sum_i' exp_i'j.
    col_sums = expo.sum(1).clamp_min(tiny)  # (B, L)
    kept_weights = (keep.to(exp_dtype) / col_sums).unsqueeze(-1)  # w_j / column sum
    raw = torch.bmm(expo, kept_weights).squeeze(-1).double()  # m (B, N)
    scores = minmax(raw)  # m-bar

    # Step 6: perturbation (Eq. 12).
    perturbed = scores + cfg.noise_scale * uniform_noise(scores.shape, generator, scores)

    f32 = torch.float32
    return Grounding(
        text_valid=valid,
        text_intra=s_intra.masked_fill(~valid, 0.0).to(f32),
        text_inter=s_inter.masked_fill(~valid, 0.0).to(f32),
        text_importance=importance.to(f32),
        text_keep=keep,
        raw_scores=raw.to(f32),
        scores=scores.to(f32),
        perturbed=perturbed.to(f32),
    )


def uniform_noise(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """U[0, 1) noise drawn on the generator's device, returned on ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    noise = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


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
    empty = ~text_valid.any(-1)
    if empty.any():
        samples = empty.nonzero().flatten()[:8].tolist()
        raise ValueError(f"text_valid has no valid caption token at sample index {samples}")
