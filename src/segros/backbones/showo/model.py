"""The Show-o network: Phi-1.5 with an extended vocabulary, and (CLIP variants) a projector and CLIP-ViT.

Parameter names match the published checkpoints (``showlab/show-o*``, Show-o commit 45a5a2de,
``models/modeling_showo.py`` L41-54): the LLM is the attribute ``showo``, a Phi causal LM whose
attention layers carry ``q_layernorm`` / ``k_layernorm`` (upstream's vendored ``models/phi.py``
forces ``qk_layernorm=True``) and whose ``lm_head`` is untied and has a bias; the CLIP variants add
``mm_projector`` = Linear(1024, 2048), GELU, Linear(2048, 2048). transformers' own ``PhiForCausalLM``
and ``CLIPVisionModel`` are used, configured to those shapes.

Show-o gives every call a ready 4-D attention mask and explicit position ids (:meth:`Showo.hidden`);
nothing here decides the layout (see :mod:`segros.backbones.showo.text`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, PhiConfig, PhiForCausalLM


@dataclass
class ShowoConfig:
    """Sizes of the LLM; defaults are Phi-1.5 as Show-o extends it (58,498 = 50,295 + 10 + 8,192 + 1)."""

    vocab_size: int = 58498
    hidden_size: int = 2048
    num_layers: int = 24
    num_heads: int = 32
    intermediate_size: int = 8192
    max_position_embeddings: int = 2048
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    w_clip_vit: bool = False
    clip_hidden_size: int = 1024  # input width of mm_projector
    attn_implementation: str = "sdpa"  # "sdpa" or "eager"

    def phi_config(self) -> PhiConfig:
        config = PhiConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="gelu_new",
            layer_norm_eps=self.layer_norm_eps,
            partial_rotary_factor=self.partial_rotary_factor,
            rope_theta=self.rope_theta,
            qk_layernorm=True,  # upstream models/phi.py forces it; the checkpoint has these weights
            tie_word_embeddings=False,
            use_cache=False,
            pad_token_id=None,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attention_dropout=0.0,
        )
        config._attn_implementation = self.attn_implementation
        return config

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClipConfig:
    """The understanding encoder of the w/ CLIP-ViT variants (default: ViT-L/14 at 336 px)."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 336
    patch_size: int = 14

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return (side, side)

    def vision_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            image_size=self.image_size,
            patch_size=self.patch_size,
            projection_dim=768,
            hidden_act="quick_gelu",
        )

    def to_dict(self) -> dict:
        return asdict(self)


# OpenAI CLIP pixel statistics (CLIPImageProcessor of openai/clip-vit-large-patch14-336).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipTower(nn.Module):
    """Frozen CLIP vision encoder: penultimate-layer patch features, CLS dropped (upstream
    ``models/clip_encoder.py``: ``select_layer=-2``, ``select_feature='patch'``)."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tower = CLIPVisionModel(cfg.vision_config())
        self.tower.requires_grad_(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) CLIP-normalised pixels -> (B, (S/14)**2, hidden) patch features."""
        dtype = next(self.tower.parameters()).dtype
        out = self.tower(pixel_values=pixels.to(dtype), output_hidden_states=True)
        return out.hidden_states[-2][:, 1:]


class Showo(nn.Module):
    """Show-o's trainable part: ``showo`` (Phi LM over the joint vocabulary) and ``mm_projector``."""

    def __init__(self, cfg: ShowoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.showo = PhiForCausalLM(cfg.phi_config())
        if cfg.w_clip_vit:
            self.mm_projector = nn.Sequential(
                nn.Linear(cfg.clip_hidden_size, cfg.hidden_size),
                nn.GELU(),
                nn.Linear(cfg.hidden_size, cfg.hidden_size),
            )

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.showo.model.embed_tokens

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def attention_mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, S, S) bool -> the (B, 1, S, S) mask Phi's attention expects.

        SDPA takes a boolean mask in any compute dtype (bf16 autocast included); the eager path adds
        the mask to the scores, so it gets 0 / dtype-min like upstream's inverted masks.
        """
        if self.showo.config._attn_implementation == "sdpa":
            return allowed.unsqueeze(1)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)

    def hidden(self, embeds: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Final-layer hidden states (B, S, D) of ``embeds`` under the ``allowed`` pattern."""
        out = self.showo.model(
            inputs_embeds=embeds,
            attention_mask=self.attention_mask(allowed, embeds.dtype),
            position_ids=position_ids,
            use_cache=False,
        )
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(.., D) -> (.., vocab) over the joint vocabulary (text, specials, codes, mask)."""
        return self.showo.lm_head(hidden)
