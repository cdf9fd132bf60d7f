"""The convolutional autoencoder blocks of taming-transformers / LDM, with their module names.

MAGVIT-v2 (Show-o's tokenizer) and the KL-16 VAE (Harmon's) are both built from these blocks, and
their published checkpoints use these attribute names (``norm1``, ``conv1``, ``nin_shortcut``,
``q``/``k``/``v``/``proj_out``, ``mid.block_1``/``attn_1``/``block_2``): GroupNorm (eps 1e-6) and
swish, a 1x1 shortcut when the width changes, single-head spatial attention, a stride-2 conv after
an asymmetric (0, 1, 0, 1) zero pad, and nearest x2 upsampling followed by a conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice, with a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions (1x1 convs for q, k, v, out)."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.q, self.k, self.v = (nn.Conv2d(ch, ch, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after (0, 1, 0, 1) zero padding (taming-transformers' asymmetric pad)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def mid_block(ch: int, groups: int) -> nn.Module:
    """The ``mid`` stage: ``block_1``, ``attn_1``, ``block_2``."""
    mid = nn.Module()
    mid.block_1 = ResnetBlock(ch, ch, groups)
    mid.attn_1 = AttnBlock(ch, groups)
    mid.block_2 = ResnetBlock(ch, ch, groups)
    return mid


def run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))
