"""TinyUMM: a Show-o-like unified transformer small enough to train on two CPU cores.

One embedding table holds text words, image codes and the image [MASK] token (as Show-o's
extended Phi vocabulary does), so the grounding map reads text and image-token embeddings
from the same table. One pre-norm transformer (nanoGPT style) runs over any
``[prefix | text | image]`` sequence with an explicit attention mask (paper Fig. 6); a segment
embedding tells hints, text and image slots apart. Positions are a learned absolute table added
to the input (``positions="learned"``, the default and the shipped model's) or rotary, applied to
queries and keys as Phi and Qwen2 do (``positions="rope"``). Position ids: text token j has id
j, image slot i always id ``max_text_len + i`` (whatever the caption's length, and in both the
text-to-image and the image-to-text layout), prefix hints a range of their own numbered by their
order (or, with ``hint_position=slot``, their image slot's id).

Why image ids do not follow the text: with a learned table, an id that moves with the caption's
length gives a cell no stable identity, and the model cannot learn where "left of" is (measured in
docs/miniature.md). Rotary backbones (Show-o, Harmon) see only differences, so they keep
upstream's numbering. ``image_positions="after_text"`` keeps the old numbering for checkpoints
saved before this existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "layers": 2, "heads": 4},  # tests: several steps per second on 2 cores
    "small": {"dim": 128, "layers": 4, "heads": 4},
    "base": {"dim": 256, "layers": 6, "heads": 8},
}


IMAGE_POSITIONS = ("fixed", "after_text")
POSITION_ENCODINGS = ("learned", "rope")


@dataclass
class TinyConfig:
    text_vocab: int
    num_codes: int
    num_image_tokens: int
    max_text_len: int = 48
    dim: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    image_positions: str = "fixed"  # "fixed": slot i -> max_text_len + i; "after_text": legacy
    positions: str = "learned"  # "learned": an absolute table added to the input; "rope": rotary q, k

    def __post_init__(self) -> None:
        if self.image_positions not in IMAGE_POSITIONS:
            choices = ", ".join(IMAGE_POSITIONS)
            raise ValueError(f"image_positions must be one of {choices}, not {self.image_positions!r}")
        if self.positions not in POSITION_ENCODINGS:
            choices = ", ".join(POSITION_ENCODINGS)
            raise ValueError(f"positions must be one of {choices}, not {self.positions!r}")
        if self.positions == "rope" and (self.dim // self.heads) % 2:
            raise ValueError(f"rope needs an even head dimension, got {self.dim // self.heads}")

    @property
    def code_offset(self) -> int:
        """Id of image code 0 in the shared table."""
        return self.text_vocab

    @property
    def mask_id(self) -> int:
        """Id of the image [MASK] token (the last id, as in Show-o)."""
        return self.text_vocab + self.num_codes

    @property
    def vocab_size(self) -> int:
        return self.text_vocab + self.num_codes + 1

    @property
    def hint_position_base(self) -> int:
        """First position id of prefix hints: a range of their own after text and image."""
        return self.max_text_len + self.num_image_tokens

    @property
    def max_positions(self) -> int:
        # text + image (an I2T prefix image uses 0..N-1 before the text), then up to N prefix
        # hints numbered by their order (method.hint_position=prefix; slot hints reuse image ids)
        return self.max_text_len + 2 * self.num_image_tokens

    def to_dict(self) -> dict[str, int | float | str]:
        return asdict(self)


def rotary_angles(position_ids: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE angles (Su et al. 2021), ``(..., S, head_dim / 2)``: position times each pair's frequency."""
    pairs = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32)
    freqs = base ** (-pairs / head_dim)
    return position_ids.float().unsqueeze(-1) * freqs


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each (first half, second half) pair of ``x`` (B, H, S, Dh) by ``angles`` (S or B, S, Dh/2),
    the GPT-NeoX / Llama layout Phi and Qwen2 use."""
    if angles.dim() == 3:
        angles = angles.unsqueeze(1)  # (B, 1, S, Dh/2): per sample, broadcast over heads
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim),
        )
        self.dropout = cfg.dropout

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, angles: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if angles is not None:  # rotary positions: attention sees only position differences
            q, k = rotate(q, angles), rotate(k, angles)
        drop = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1), dropout_p=drop)
        x = x + F.dropout(self.proj(att.transpose(1, 2).reshape(B, S, D)), drop, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), drop, self.training)


class TinyUMM(nn.Module):
    """Embeddings, transformer and a head over the shared vocabulary."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} must be divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)  # text words + image codes + [MASK]
        self.segment = nn.Embedding(3, cfg.dim)  # hint / text / image (segros.sequence)
        if cfg.positions == "learned":
            self.position = nn.Embedding(cfg.max_positions, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden(
        self,
        token_emb: torch.Tensor,
        segment: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """Run the transformer on embedded tokens. ``segment`` is (S,) or (B, S)."""
        x = token_emb + self.segment(segment)
        angles = None
        if self.cfg.positions == "learned":
            x = x + self.position(position_ids)
        else:
            angles = rotary_angles(position_ids, self.cfg.dim // self.cfg.heads)
        for block in self.blocks:
            x = block(x, allowed, angles)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Logits restricted to vocabulary ids ``lo .. hi-1`` (e.g. the image codes)."""
        return F.linear(hidden, self.head.weight[lo:hi])
