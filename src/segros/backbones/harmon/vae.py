"""MAR's KL-16 autoencoder (from LDM), with the module names of ``kl16.ckpt``.

Images in [-1, 1] -> a diagonal Gaussian over 16-channel latents at stride 16 -> images.
Harmon encodes with the posterior *mode* and scales latents by 0.2325; the scale lives in the
model wrapper, not here. diffusers' ``AutoencoderKL`` names its modules differently, so this is
the LDM layout (``encoder.down.{i}.block.{j}``, ``encoder.mid.attn_1``, ``quant_conv`` ...) as
read in upstream ``src/models/mar/vae.py`` (docs/upstream/harmon.md section 2): GroupNorm(32,
eps 1e-6) + swish, asymmetric zero padding before each stride-2 conv, attention only where the
(nominal) resolution is in ``attn_resolutions`` (the last encoder level for kl16), none in the
decoder's up path, and a ``quant_conv`` that maps 2*16 -> 2*16 channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segros.backbones.conv_blocks import (
    AttnBlock,
    Downsample,
    ResnetBlock,
    Upsample,
    group_norm,
    mid_block,
    run_mid,
)


@dataclass(frozen=True)
class VAEConfig:
    embed_dim: int = 16
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256  # nominal; only decides where attention goes, inputs may be any size
    norm_groups: int = 32

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        g, ch = cfg.norm_groups, cfg.ch
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, cin = cfg.resolution, ch
        for i, mult in enumerate(cfg.ch_mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, ch * mult, g))
                cin = ch * mult
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cin, g))
            level = _level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(cin)
                res //= 2
            self.down.append(level)
        self.mid = mid_block(cin, g)
        self.norm_out = group_norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.embed_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(run_mid(self.mid, h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        g, ch, n = cfg.norm_groups, cfg.ch, len(cfg.ch_mult)
        cin = ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.embed_dim, cin, 3, padding=1)
        self.mid = mid_block(cin, g)
        levels: list[nn.Module] = []
        for i in reversed(range(n)):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, ch * cfg.ch_mult[i], g))
                cin = ch * cfg.ch_mult[i]
            level = _level(blocks, [])  # kl16's decoder has no attention in the up path
            if i != 0:
                level.upsample = Upsample(cin)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """``encode`` returns the posterior mean and log-variance; ``decode`` maps latents to images."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.embed_dim, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of the posterior, each (B, embed_dim, H/16, W/16); logvar in [-30, 20]."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))
