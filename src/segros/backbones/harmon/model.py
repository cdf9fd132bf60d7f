"""The Harmon wrapper: Qwen2.5 LLM + MAR + the two projections, named as the released ``.pth``.

Attributes (docs/upstream/harmon.md sections 1 and 7): ``llm`` (``Qwen2ForCausalLM``), ``mar``
(encoder, decoder and ``mar.diffloss``), ``proj_in`` (MAR width -> LLM width, Linear-SiLU-Linear)
and ``proj_out`` (LLM width -> MAR width). The VAE is not part of this module (upstream drops
``vae.*`` from its state dict and always loads ``kl16.ckpt``); the backbone adapter owns it.

Data flow of one generation forward (upstream ``Harmon.forward_mae_encoder``): latent tokens ->
MAR encoder (visible tokens + buffers) -> ``proj_in`` -> buffers moved to the *end* -> appended
after the text in the LLM -> the image part of the last hidden state, buffers moved back to the
front -> residual ``x_enc + proj_out(z_llm)`` -> MAR decoder -> diffusion head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from segros.backbones.harmon.mar import MAR, MARConfig
from segros.backbones.harmon.vae import VAEConfig

_QWEN_COMMON = {
    "vocab_size": 151936,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
}
#: Qwen2.5-{0.5B,1.5B}-Instruct architecture (their config.json); the weights come from harmon_*.pth.
QWEN_SIZES: dict[str, dict[str, Any]] = {
    "0.5b": {**_QWEN_COMMON, "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
             "intermediate_size": 4864},
    "1.5b": {**_QWEN_COMMON, "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
             "intermediate_size": 8960},
}  # fmt: skip
#: MAR factories Harmon's configs use: mar_base (0.5B) and mar_huge (1.5B), DiffLoss 6x1024 / 12x1536.
MAR_SIZES: dict[str, dict[str, Any]] = {
    "0.5b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12, "decoder_embed_dim": 768,
             "decoder_depth": 12, "decoder_num_heads": 12, "diffloss_d": 6, "diffloss_w": 1024},
    "1.5b": {"encoder_embed_dim": 1280, "encoder_depth": 20, "encoder_num_heads": 16,
             "decoder_embed_dim": 1280, "decoder_depth": 20, "decoder_num_heads": 16, "diffloss_d": 12,
             "diffloss_w": 1536},
}  # fmt: skip

#: A randomly initialised configuration of the same classes, for tests and CPU smoke runs:
#: 64 px images -> 4 x 4 latent tokens, 4 buffers, a 2-layer 64-wide LLM.
TINY_LLM = {**_QWEN_COMMON, "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 512}  # fmt: skip
TINY_MAR = {"img_size": 64, "encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2,
            "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "buffer_size": 4,
            "diffloss_d": 1, "diffloss_w": 32, "num_sampling_steps": 5, "attn_dropout": 0.0,
            "proj_dropout": 0.0}  # fmt: skip
TINY_VAE = {"ch": 8, "resolution": 64, "attn_resolutions": (4,), "norm_groups": 4}


@dataclass
class HarmonConfig:
    """Everything that shapes the weights: LLM (Qwen2Config kwargs), MAR, VAE, latent scale."""

    llm: dict[str, Any]
    mar: MARConfig
    vae: VAEConfig = field(default_factory=VAEConfig)
    vae_scale: float = 0.2325

    @classmethod
    def for_size(cls, size: str) -> HarmonConfig:
        if size == "tiny":
            return cls(dict(TINY_LLM), MARConfig(**TINY_MAR), VAEConfig(**TINY_VAE))
        if size not in QWEN_SIZES:
            raise ValueError(f"Harmon size must be 0.5b, 1.5b or tiny, got {size!r}")
        return cls(dict(QWEN_SIZES[size]), MARConfig(**MAR_SIZES[size]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "llm": self.llm,
            "mar": asdict(self.mar),
            "vae": asdict(self.vae),
            "vae_scale": self.vae_scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HarmonConfig:
        vae = {k: tuple(v) if isinstance(v, list) else v for k, v in d["vae"].items()}
        return cls(dict(d["llm"]), MARConfig(**d["mar"]), VAEConfig(**vae), float(d["vae_scale"]))


def build_mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear (indices 0 and 2 hold the weights, as upstream's ``build_mlp``)."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward, gradient times ``scale`` backward (Harmon's ``grad_scale`` on I2T)."""
    return _ScaleGradient.apply(x, scale)


class Harmon(nn.Module):
    def __init__(self, cfg: HarmonConfig) -> None:
        super().__init__()
        self.cfg = cfg
        llm_cfg = Qwen2Config(**cfg.llm)
        llm_cfg._attn_implementation = "sdpa"  # the Fig. 6 layout needs a custom 4-D mask
        self.llm = Qwen2ForCausalLM(llm_cfg)
        self.mar = MAR(cfg.mar)
        hidden, enc = llm_cfg.hidden_size, cfg.mar.encoder_embed_dim
        self.proj_in = build_mlp(enc, hidden, hidden)
        self.proj_out = build_mlp(hidden, hidden, enc)

    @property
    def buffer_size(self) -> int:
        return self.mar.buffer_size

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def visual_features(
        self, x: torch.Tensor, mask: torch.Tensor, image_shape: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_enc`` (B, buf + V, enc), buffers first, and ``z_enc = proj_in(x_enc)`` with the
        buffers moved to the end (B, V + buf, H) — upstream ``extract_visual_feature``."""
        null = self.mar.fake_latent.expand(x.shape[0], -1)
        x_enc = self.mar.forward_mae_encoder(x, mask, null, image_shape)
        z_enc = self.proj_in(x_enc)
        return x_enc, torch.cat([z_enc[:, self.buffer_size :], z_enc[:, : self.buffer_size]], dim=1)

    def llm_hidden(
        self, inputs_embeds: torch.Tensor, allowed: torch.Tensor | None, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states of the decoder stack; ``allowed`` (B, S, S) bool is passed as a 4-D
        mask that transformers uses as is (None: the model's own causal mask)."""
        mask = None if allowed is None else allowed.unsqueeze(1)
        out = self.llm.model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids)
        return out.last_hidden_state

    def decoder_input(self, x_enc: torch.Tensor, z_llm: torch.Tensor) -> torch.Tensor:
        """Residual ``x_enc + proj_out(z_llm)`` with the LLM's buffers (at the end) moved to the front."""
        b = self.buffer_size
        z_llm = torch.cat([z_llm[:, -b:], z_llm[:, :-b]], dim=1) if b else z_llm
        return x_enc + self.proj_out(z_llm)
