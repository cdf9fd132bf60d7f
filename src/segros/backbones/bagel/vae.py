"""FLUX's autoencoder as BAGEL uses it, through diffusers' ``AutoencoderKL`` (docs/upstream/bagel.md
section 3): [-1, 1] pixels in, the posterior sampled, latents scaled ``0.3611 (z - 0.1159)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def build(config: dict[str, Any]) -> nn.Module:
    """A frozen ``AutoencoderKL`` of ``config`` (FLUX layout: 16 latent channels, no quant convs)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config).requires_grad_(False).eval()


@torch.no_grad()
def posterior(vae: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the latent posterior of (B, 3, H, W) pixels in [-1, 1], unscaled, float32."""
    dtype = next(vae.parameters()).dtype
    dist = vae.encode(pixels.to(dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def scale(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Raw latents as BAGEL reads them: ``scaling_factor * (z - shift_factor)``."""
    return vae.config.scaling_factor * (z - vae.config.shift_factor)


@torch.no_grad()
def decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 on the CPU from BAGEL's latents (upstream's ``decode_image``: undo the
    scaling, decode, ``(x / 2 + 0.5)`` clamped to [0, 1], times 255, truncated)."""
    dtype = next(vae.parameters()).dtype
    z = latents / vae.config.scaling_factor + vae.config.shift_factor
    x = vae.decode(z.to(dtype)).sample.float()
    return ((x * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
