"""MAGVIT-v2 image tokenizer as Show-o uses it: a conv encoder, lookup-free quantisation, a conv decoder.

Written to load ``showlab/magvitv2`` as published: module and parameter names follow upstream
``models/modeling_magvitv2.py`` and ``models/common_modules.py`` (Show-o commit 45a5a2de), i.e.
``encoder.conv_in``, ``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``,
``encoder.down.{i}.downsample.conv``, ``encoder.mid.{block_1,attn_1,block_2}``, ``encoder.norm_out``,
``encoder.conv_out``, ``encoder.quant_conv``; the decoder mirrors it with ``up.{i}.upsample`` and
``post_quant_conv``; ``quantize.embedding`` / ``quantize.power_vals`` are buffers.

Lookup-free quantisation (LFQ): each of the ``z_channels`` latent channels is binarised by its sign;
the code id is the big-endian bit sum (channel 0 is the most significant bit), so the codebook has
``2 ** z_channels`` entries (13 channels -> 8,192 codes). Four stride-2 downsamples give stride 16.
Pixels are in [-1, 1] on both sides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from segros.backbones.conv_blocks import (
    Downsample,
    ResnetBlock,
    Upsample,
    group_norm,
    mid_block,
    run_mid,
)


@dataclass
class MagvitConfig:
    """Sizes of the tokenizer; the defaults are the published ``showlab/magvitv2``."""

    ch: int = 128
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 4])
    encoder_res_blocks: list[int] = field(default_factory=lambda: [4, 3, 4, 3, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_res_blocks: list[int] = field(default_factory=lambda: [4, 4, 3, 4, 3])
    z_channels: int = 13  # = log2(codebook size)
    norm_groups: int = 32  # GroupNorm groups (upstream Normalize: 32, eps 1e-6)

    @property
    def codebook_size(self) -> int:
        return 2**self.z_channels

    @property
    def stride(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


class Encoder(nn.Module):
    """Pixels (B, 3, H, W) in [-1, 1] -> latents (B, z, H/stride, W/stride).

    Upstream builds empty ``attn`` lists per level (its attention resolution never occurs), which
    hold no parameters, so they are omitted here.
    """

    def __init__(self, cfg: MagvitConfig) -> None:
        super().__init__()
        g, ch = cfg.norm_groups, cfg.ch
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        levels = len(cfg.encoder_ch_mult)
        for i, (mult, n_blocks) in enumerate(zip(cfg.encoder_ch_mult, cfg.encoder_res_blocks, strict=True)):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(n_blocks):
                level.block.append(ResnetBlock(block_in, ch * mult, g))
                block_in = ch * mult
            if i != levels - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = mid_block(block_in, g)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = run_mid(self.mid, h)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    """Quantised latents (B, z, h, w) -> pixels (B, 3, h*stride, w*stride) in about [-1, 1].

    ``up`` is indexed by resolution level like upstream (``up.0`` is the full-resolution level) and
    run from the last level down.
    """

    def __init__(self, cfg: MagvitConfig) -> None:
        super().__init__()
        g, ch, mults = cfg.norm_groups, cfg.ch, cfg.decoder_ch_mult
        block_in = ch * mults[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = mid_block(block_in, g)
        levels: list[nn.Module] = []
        for i in reversed(range(len(mults))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.decoder_res_blocks[i]):
                level.block.append(ResnetBlock(block_in, ch * mults[i], g))
                block_in = ch * mults[i]
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = run_mid(self.mid, self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LFQuantizer(nn.Module):
    """Sign binarisation with big-endian bit ids; ``embedding`` holds the +-1 code of every id."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        powers = 2 ** torch.arange(bits - 1, -1, -1)
        ids = torch.arange(2**bits)
        self.register_buffer("embedding", ((ids.unsqueeze(1) // powers) % 2).float() * 2 - 1)
        self.register_buffer("power_vals", powers)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, h*w) code ids in raster order."""
        bits = (z > 0).long()
        return (bits * self.power_vals.view(1, -1, 1, 1)).sum(1).flatten(1)

    def codes_to_latents(self, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h*w) code ids -> (B, C, h, w) +-1 latents."""
        B = ids.shape[0]
        return self.embedding[ids].view(B, *grid, -1).permute(0, 3, 1, 2).contiguous()


class MAGVITv2(nn.Module):
    """The tokenizer: ``get_code`` (pixels -> ids) and ``decode_code`` (ids -> pixels)."""

    def __init__(self, cfg: MagvitConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MagvitConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.quantize = LFQuantizer(self.cfg.z_channels)

    @torch.no_grad()
    def get_code(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, (H/16)*(W/16)) long code ids 0 .. 2**z - 1."""
        dtype = self.encoder.conv_in.weight.dtype  # bf16 under DeepSpeed: follow the weights
        return self.quantize.indices(self.encoder(pixels.to(dtype)))

    @torch.no_grad()
    def decode_code(self, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h*w) code ids -> (B, 3, h*16, w*16) pixels in about [-1, 1]."""
        latents = self.quantize.codes_to_latents(ids, grid)
        return self.decoder(latents.to(self.decoder.conv_in.weight.dtype))
