"""Masking-ratio schedules gamma(t) of the backbones SeGroS fine-tunes (paper Sec. 4.1).

SeGroS keeps each backbone's own schedule; it only decides *which* tokens are masked.
Every schedule returns float64 ratios so that ``floor(gamma * N)`` agrees with Python's math.

- ``cosine``: Show-o / MaskGIT, gamma = cos(pi/2 * t), t ~ U[0, 1), one ratio per sample.
- ``truncnorm``: MAR / Harmon, a normal(mean 1, std 0.25) truncated to [0.7, 1], one ratio
  per batch, because the MAR encoder drops masked tokens and needs equal visible counts.
- ``uniform``: U[0.7, 1), the fixed schedule of the paper's Table 6 ablation, per sample.
"""

from __future__ import annotations

import math

import torch

from segros._checks import check_choice

SCHEDULES = ("cosine", "truncnorm", "uniform")
PER_BATCH_DEFAULT = {"cosine": False, "truncnorm": True, "uniform": False}

TRUNCNORM_MEAN, TRUNCNORM_STD, TRUNCNORM_LOW, TRUNCNORM_HIGH = 1.0, 0.25, 0.7, 1.0
UNIFORM_LOW, UNIFORM_HIGH = 0.7, 1.0


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu()


def _std_normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def sample_mask_ratio(
    schedule: str,
    batch_size: int,
    generator: torch.Generator | None = None,
    per_batch: bool | None = None,
) -> torch.Tensor:
    """Draw masking ratios, shape ``(batch_size,)`` float64 on the CPU.

    ``per_batch`` (default: the backbone's own choice) repeats one draw over the batch.
    """
    check_choice("schedule", schedule, SCHEDULES)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per_batch = PER_BATCH_DEFAULT[schedule] if per_batch is None else per_batch
    u = _uniform(1 if per_batch else batch_size, generator)
    if schedule == "cosine":
        ratio = torch.cos(0.5 * math.pi * u)
    elif schedule == "uniform":
        ratio = UNIFORM_LOW + (UNIFORM_HIGH - UNIFORM_LOW) * u
    else:  # inverse-CDF sampling of the truncated normal
        a = _std_normal_cdf((TRUNCNORM_LOW - TRUNCNORM_MEAN) / TRUNCNORM_STD)
        b = _std_normal_cdf((TRUNCNORM_HIGH - TRUNCNORM_MEAN) / TRUNCNORM_STD)
        ratio = TRUNCNORM_MEAN + TRUNCNORM_STD * torch.special.ndtri(a + (b - a) * u)
        ratio = ratio.clamp(TRUNCNORM_LOW, TRUNCNORM_HIGH)
    return ratio.expand(batch_size).clone() if per_batch else ratio
