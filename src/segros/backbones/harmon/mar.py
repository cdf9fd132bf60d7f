"""MAR's encoder and decoder (masked autoencoder over latent tokens) and its diffusion head.

Upstream ``src/models/mar/mar.py`` (docs/upstream/harmon.md section 3), rewritten: the encoder
embeds the 16-channel latent tokens (``z_proj``), prepends ``buffer_size`` buffer slots filled with
a class embedding (Harmon always uses ``fake_latent``), adds learned positions, normalises
(``z_proj_ln``) and then *drops the masked tokens* before its ViT blocks. Dropping is what makes
every sample of a batch need the same number of visible tokens. The decoder puts the encoder
outputs back in place, fills masked slots with ``mask_token``, runs its blocks, removes the
buffers and adds the diffusion position embedding; its output conditions ``diffloss``.

Grids other than the nominal ``img_size // vae_stride`` (Harmon trains at 512 px, i.e. 32 x 32
tokens, with 16 x 16 tables) bilinearly resize the image part of every position table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segros.backbones.harmon.blocks import Block
from segros.backbones.harmon.diffloss import DiffLoss


@dataclass(frozen=True)
class MARConfig:
    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    decoder_embed_dim: int = 768
    decoder_depth: int = 12
    decoder_num_heads: int = 12
    mlp_ratio: float = 4.0
    vae_embed_dim: int = 16
    class_num: int = 1000
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    buffer_size: int = 64
    diffloss_d: int = 6
    diffloss_w: int = 1024
    num_sampling_steps: int = 100
    diffusion_batch_mul: int = 4

    @property
    def seq_side(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def random_orders(batch: int, seq_len: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) long: one random permutation per sample (MAR's ``sample_orders``), from ``generator``."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(batch, seq_len, generator=generator, device=device).argsort(dim=1)


def mask_by_order(count: int, orders: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True (masked) at the first ``count`` entries of each order."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(1, orders[:, :count], True)


def check_equal_visible(mask: torch.Tensor) -> int:
    """The number of visible tokens per sample; ValueError unless it is the same for every sample.

    The MAR encoder drops masked tokens and stacks what is left, so a batch with unequal visible
    counts cannot be encoded (draw one masking ratio per batch: ``mask_per_batch = True``).
    """
    visible = (~mask).sum(dim=1)
    if bool((visible != visible[0]).any()):
        raise ValueError(
            "the MAR encoder needs the same number of visible tokens in every sample of a batch, got "
            f"{sorted(set(visible.tolist()))}; draw one masking ratio per batch (method.mask_per_batch=true)"
        )
    return int(visible[0]) if visible.numel() else 0


class MAR(nn.Module):
    """Encoder, decoder and diffusion head; parameter names as in the released checkpoints."""

    def __init__(self, cfg: MARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc, dec, buf = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.buffer_size
        self.seq_h = self.seq_w = cfg.seq_side
        self.seq_len = self.seq_h * self.seq_w
        self.buffer_size = buf
        self.token_embed_dim = cfg.vae_embed_dim * cfg.patch_size**2
        self.encoder_embed_dim = enc
        self.grad_checkpointing = False

        self.class_emb = nn.Embedding(cfg.class_num, enc)  # unused by Harmon, kept for the key set
        self.fake_latent = nn.Parameter(torch.zeros(1, enc))
        self.z_proj = nn.Linear(self.token_embed_dim, enc)
        self.z_proj_ln = nn.LayerNorm(enc, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + buf, enc))
        drops = {"attn_drop": cfg.attn_dropout, "proj_drop": cfg.proj_dropout}
        self.encoder_blocks = nn.ModuleList(
            Block(enc, cfg.encoder_num_heads, cfg.mlp_ratio, **drops) for _ in range(cfg.encoder_depth)
        )
        self.encoder_norm = nn.LayerNorm(enc, eps=1e-6)

        self.decoder_embed = nn.Linear(enc, dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + buf, dec))
        self.decoder_blocks = nn.ModuleList(
            Block(dec, cfg.decoder_num_heads, cfg.mlp_ratio, **drops) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dec, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, dec))
        self._init_weights()
        # built after the init above, so that its own zero-init survives (as upstream)
        self.diffloss = DiffLoss(
            self.token_embed_dim, dec, cfg.diffloss_d, cfg.diffloss_w, cfg.num_sampling_steps
        )

    def _init_weights(self) -> None:
        for p in (
            self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
            self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned,
        ):  # fmt: skip
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- positions --------------------------------------------------------------------------------
    def _resize(self, table: torch.Tensor, shape: tuple[int, int], buffers: int) -> torch.Tensor:
        """The table with its image part bilinearly resized to ``shape`` (buffers kept as they are)."""
        if tuple(shape) == (self.seq_h, self.seq_w):
            return table
        buf, image = table.split([buffers, self.seq_len], dim=1)
        image = image.transpose(1, 2).reshape(1, -1, self.seq_h, self.seq_w)
        image = F.interpolate(image.float(), size=shape, mode="bilinear").to(table.dtype)
        return torch.cat([buf, image.flatten(2).transpose(1, 2)], dim=1)

    # --- encoder / decoder ---------------------------------------------------------------------------
    def _blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_mae_encoder(
        self, x: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor, image_shape: tuple[int, int]
    ) -> torch.Tensor:
        """(B, buffer + visible, enc): latent tokens ``x`` (B, L, C) with ``mask`` (B, L) bool
        (True = masked, dropped) through the encoder; buffers come first."""
        B, L, _ = x.shape
        check_equal_visible(mask)
        x = self.z_proj(x.to(self.z_proj.weight.dtype))
        buffers = class_embedding.view(B, 1, -1).expand(B, self.buffer_size, -1).to(x.dtype)
        x = torch.cat([buffers, x], dim=1)
        x = self.z_proj_ln(x + self._resize(self.encoder_pos_embed_learned, image_shape, self.buffer_size))
        keep = torch.cat([mask.new_zeros(B, self.buffer_size), mask], dim=1).logical_not()
        x = x[keep].reshape(B, -1, x.shape[-1])  # drop masked tokens (equal counts: checked above)
        return self.encoder_norm(self._blocks(self.encoder_blocks, x))

    def forward_mae_decoder(
        self, x: torch.Tensor, mask: torch.Tensor, image_shape: tuple[int, int]
    ) -> torch.Tensor:
        """(B, L, dec): encoder outputs scattered back, [MASK] elsewhere, buffers removed."""
        B, L = mask.shape
        x = self.decoder_embed(x)
        keep = torch.cat([mask.new_zeros(B, self.buffer_size), mask], dim=1).logical_not()
        full = self.mask_token.to(x.dtype).expand(B, L + self.buffer_size, -1)
        full = full.masked_scatter(keep.unsqueeze(-1), x)
        full = full + self._resize(self.decoder_pos_embed_learned, image_shape, self.buffer_size)
        x = self.decoder_norm(self._blocks(self.decoder_blocks, full))[:, self.buffer_size :]
        return x + self._resize(self.diffusion_pos_embed_learned, image_shape, 0)
