"""Seeded draws the backbones' decoding loops share: a categorical sample and Gumbel noise.

Every draw comes from the caller's ``torch.Generator`` on the generator's own device (the CPU
when none is given) and is moved to the tensors' device afterwards, so a seed gives the same
images whatever device the model runs on.
"""

from __future__ import annotations

import torch


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) of ``shape`` drawn on the generator's device (the CPU without one), returned on
    ``like``'s device and dtype."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` (..., K), by inverse CDF with one uniform draw per row.

    The same distribution as ``torch.multinomial(probs, 1)``, several times faster on the
    (rows, codebook) matrices of parallel decoding. Rows need not be normalised.
    """
    u = uniform((*probs.shape[:-1], 1), generator, probs)
    cdf = probs.cumsum(-1)
    picked = torch.searchsorted(cdf, u * cdf[..., -1:]).clamp_max(probs.shape[-1] - 1)
    return picked.squeeze(-1)


def gumbel_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` of ``shape`` on ``like``'s device and dtype, for
    MaskGIT's noisy choice of which sampled tokens to keep."""
    u = uniform(shape, generator, like).clamp(1e-20, 1 - 1e-7)
    return -torch.log(-torch.log(u))
