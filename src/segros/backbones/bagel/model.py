"""BAGEL's network at any size: a Qwen2 mixture-of-transformers decoder with an understanding and
a generation expert, a SigLIP-NaViT encoder with its connector, and the latent patch embedding,
timestep embedding and velocity head (docs/upstream/bagel.md sections 2-3).

Module and parameter names are upstream's, so :class:`BagelNet`'s state dict *is* the key layout
of the published ``ema.safetensors``. Sequences are packed as upstream packs them (:class:`Packer`):
samples one after another, each a list of splits (``causal`` text, ``full`` clean images, ``noise``
images to denoise) with upstream's split mask, and every token routed to one expert (latent
tokens to the generation expert, text and ViT tokens to the understanding expert).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import SiglipVisionConfig
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from transformers.models.siglip.modeling_siglip import SiglipEncoder

TEXT, VIT, VAE = 0, 1, 2  # token kinds of a pack: VAE tokens go to the generation expert
CAUSAL, FULL, NOISE = 0, 1, 2  # split modes (upstream's attn_modes)


# --- packing -------------------------------------------------------------------------------------
@dataclass
class Pack:
    """Samples packed into one sequence of S tokens (upstream's packed batch, docs section 3)."""

    text_ids: torch.Tensor  # (S,) token ids, 0 where the token is an image token
    kind: torch.Tensor  # (S,) TEXT / VIT / VAE
    position_ids: torch.Tensor  # (S,) rope ids: consecutive in text, one per image split
    masks: list[torch.Tensor]  # per sample (n_i, n_i) bool, True where a query may attend to a key
    sample: torch.Tensor  # (S,) the sample each token belongs to
    vit_pos: torch.Tensor  # (n_vit,) flattened grid positions of the ViT tokens, in sequence order
    vae_pos: torch.Tensor  # (n_vae,) flattened grid positions of the latent tokens
    noisy: torch.Tensor  # (n_vae,) bool: the latent token is in a noise split (carries the loss)
    text_slots: list[list[int]]  # per sample, the sequence index of each text token added by text()

    @property
    def mask(self) -> torch.Tensor:
        """(S, S) the whole pack's mask: the samples' masks on the diagonal (samples never see each
        other). Attention runs sample by sample, so this is never built in the forward."""
        return torch.block_diag(*self.masks).bool()

    @property
    def vit_index(self) -> torch.Tensor:
        return (self.kind == VIT).nonzero().squeeze(1)

    @property
    def vae_index(self) -> torch.Tensor:
        return (self.kind == VAE).nonzero().squeeze(1)


@dataclass
class Packer:
    """Builds a :class:`Pack` split by split, with upstream's rules: a text split is ``causal`` with
    consecutive rope ids; an image split is ``<|vision_start|>`` + its tokens + ``<|vision_end|>``,
    all at one rope id, ``full`` when clean (the rope then advances by one) or ``noise`` when it is
    to be denoised (the rope does not advance). No token outside a noise split attends to it."""

    start_id: int  # <|vision_start|>
    end_id: int  # <|vision_end|>
    ids: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    rope: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    splits: list[int] = field(default_factory=list)
    modes: list[int] = field(default_factory=list)  # per split
    vit_pos: list[torch.Tensor] = field(default_factory=list)
    vae_pos: list[torch.Tensor] = field(default_factory=list)
    noisy: list[bool] = field(default_factory=list)
    text_slots: list[list[int]] = field(default_factory=list)
    _next_rope: int = 0

    def sample(self) -> Packer:
        """Start the next sample (its rope ids start at 0)."""
        self._next_rope = 0
        self.text_slots.append([])
        return self

    def _split(self, ids: list[int], kinds: list[int], mode: int, rope: list[int]) -> None:
        self.text_slots[-1].extend(
            len(self.ids) + i for i, k in enumerate(kinds) if k == TEXT and mode == CAUSAL
        )
        self.ids += ids
        self.kinds += kinds
        self.rope += rope
        self.samples += [len(self.text_slots) - 1] * len(ids)
        self.splits += [len(self.modes)] * len(ids)
        self.modes.append(mode)

    def text(self, ids: list[int]) -> Packer:
        if ids:
            r = self._next_rope
            self._split(list(ids), [TEXT] * len(ids), CAUSAL, list(range(r, r + len(ids))))
            self._next_rope = r + len(ids)
        return self

    def image(self, kind: int, positions: torch.Tensor, noisy: bool = False) -> Packer:
        """An image split of ``kind`` (VIT or VAE) with the tokens' flattened grid positions."""
        n = int(positions.numel())
        ids = [self.start_id] + [0] * n + [self.end_id]
        kinds = [TEXT] + [kind] * n + [TEXT]
        self._split(ids, kinds, NOISE if noisy else FULL, [self._next_rope] * (n + 2))
        (self.vit_pos if kind == VIT else self.vae_pos).append(positions.reshape(-1).cpu())
        if kind == VAE:
            self.noisy += [noisy] * n
        if not noisy:
            self._next_rope += 1
        return self

    def build(self, device: torch.device | str = "cpu") -> Pack:
        long = {"dtype": torch.long, "device": device}
        split = torch.tensor(self.splits, **long)
        mode = torch.tensor(self.modes, **long)[split]
        sample = torch.tensor(self.samples, **long)
        masks = []
        for b in range(len(self.text_slots)):  # a sample's tokens are contiguous
            s, m = split[sample == b], mode[sample == b]
            order = torch.arange(len(s), device=device)
            earlier = (s[None, :] < s[:, None]) & (m[None, :] != NOISE)
            within = (s[None, :] == s[:, None]) & (
                (m[:, None] != CAUSAL) | (order[None, :] <= order[:, None])
            )
            masks.append(earlier | within)
        empty = torch.zeros(0, **long)
        return Pack(
            text_ids=torch.tensor(self.ids, **long),
            kind=torch.tensor(self.kinds, **long),
            position_ids=torch.tensor(self.rope, **long),
            masks=masks,
            sample=sample,
            vit_pos=torch.cat(self.vit_pos).to(device) if self.vit_pos else empty,
            vae_pos=torch.cat(self.vae_pos).to(device) if self.vae_pos else empty,
            noisy=torch.tensor(self.noisy, dtype=torch.bool, device=device),
            text_slots=self.text_slots,
        )


def grid_positions(h: int, w: int, max_per_side: int) -> torch.Tensor:
    """(h w,) flattened position ids of an h x w grid in a table of ``max_per_side`` columns
    (upstream's ``get_flattened_position_ids_extrapolate``)."""
    return (torch.arange(h)[:, None] * max_per_side + torch.arange(w)).flatten()


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p W/p, p p C): each p x p patch flattened in (row, column, channel)
    order, patches in row-major order (upstream's ``"chpwq->hwpqc"``)."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, p * p * C)


def unpatchify(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """The inverse of :func:`patchify` for an h x w grid of patches."""
    B = tokens.shape[0]
    C = tokens.shape[-1] // (p * p)
    return tokens.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, h * p, w * p)


# --- small pieces ----------------------------------------------------------------------------------
def sincos_2d(dim: int, side: int) -> torch.Tensor:
    """(side^2, dim) fixed 2-D sin-cos table of upstream's ``PositionEmbedding``: for the cell at
    (row, col) the first half encodes the column and the second the row, each as sines then cosines
    of 10000^(-k / (dim / 4))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1).double() * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.cat([one(cols), one(rows)], dim=1).float()


class PositionEmbedding(nn.Module):
    """A frozen sin-cos table indexed by flattened grid positions (saved with the weights)."""

    def __init__(self, max_per_side: int, hidden: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(sincos_2d(hidden, max_per_side), requires_grad=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


class TimestepEmbedder(nn.Module):
    """DiT's timestep embedding of t in [0, 1]: 256 sinusoid frequencies (cos, sin), then an MLP."""

    def __init__(self, hidden: int, frequencies: int = 256) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype))


class MLP(nn.Module):
    """Qwen2's SwiGLU MLP (no biases)."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Connector(nn.Module):
    """Upstream's ``MLPconnector``: Linear, gelu (tanh), Linear."""

    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inp, out)
        self.fc2 = nn.Linear(out, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def routed(x: torch.Tensor, und: torch.Tensor, gen: torch.Tensor, f_und: Any, f_gen: Any) -> torch.Tensor:
    """``f_und`` on the rows ``und`` of x and ``f_gen`` on the rows ``gen``, put back in place."""
    a, b = f_und(x[und]), f_gen(x[gen])
    out = a.new_zeros((x.shape[0], *a.shape[1:]))
    return out.index_copy(0, und, a).index_copy(0, gen, b.to(a.dtype))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (Qwen2's half-split form) of (S, heads, head_dim) with (S, head_dim) tables."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]


# --- the mixture-of-transformers decoder ---------------------------------------------------------
class MoTAttention(nn.Module):
    """Qwen2 attention with qk-norm, every projection and norm twice (``*_moe_gen``: the generation
    expert's); attention runs sample by sample under each sample's mask (upstream's
    ``nested_attention_masks`` path), so memory grows with the longest sample, not the pack."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        H, self.heads, self.kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = H // self.heads
        eps = cfg["rms_norm_eps"]
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(H, self.heads * self.head_dim))
            setattr(self, f"k_proj{suffix}", nn.Linear(H, self.kv * self.head_dim))
            setattr(self, f"v_proj{suffix}", nn.Linear(H, self.kv * self.head_dim))
            setattr(self, f"o_proj{suffix}", nn.Linear(self.heads * self.head_dim, H, bias=False))
            setattr(self, f"q_norm{suffix}", Qwen2RMSNorm(self.head_dim, eps=eps))
            setattr(self, f"k_norm{suffix}", Qwen2RMSNorm(self.head_dim, eps=eps))

    def forward(
        self, x: torch.Tensor, und: torch.Tensor, gen: torch.Tensor, rope: tuple, masks: list[torch.Tensor]
    ) -> torch.Tensor:
        S = x.shape[0]
        q = routed(x, und, gen, self.q_proj, self.q_proj_moe_gen).view(S, self.heads, self.head_dim)
        k = routed(x, und, gen, self.k_proj, self.k_proj_moe_gen).view(S, self.kv, self.head_dim)
        v = routed(x, und, gen, self.v_proj, self.v_proj_moe_gen).view(S, self.kv, self.head_dim)
        q = rotate(routed(q, und, gen, self.q_norm, self.q_norm_moe_gen), *rope)
        k = rotate(routed(k, und, gen, self.k_norm, self.k_norm_moe_gen), *rope)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (heads, S, head_dim)
        outs, start = [], 0
        for mask in masks:
            part = slice(start, start + mask.shape[0])
            qkv = (t[None, :, part] for t in (q, k, v))
            outs.append(F.scaled_dot_product_attention(*qkv, attn_mask=mask[None, None], enable_gqa=True)[0])
            start = part.stop
        out = torch.cat(outs, dim=1).transpose(0, 1).reshape(S, -1)
        return routed(out, und, gen, self.o_proj, self.o_proj_moe_gen)


class MoTDecoderLayer(nn.Module):
    """Upstream's ``Qwen2MoTDecoderLayer``: pre-norm attention and MLP, each chosen per token."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        H, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.self_attn = MoTAttention(cfg)
        self.mlp = MLP(H, cfg["intermediate_size"])
        self.mlp_moe_gen = MLP(H, cfg["intermediate_size"])
        for name in ("input_layernorm", "post_attention_layernorm"):
            setattr(self, name, Qwen2RMSNorm(H, eps=eps))
            setattr(self, name + "_moe_gen", Qwen2RMSNorm(H, eps=eps))

    def forward(
        self, x: torch.Tensor, und: torch.Tensor, gen: torch.Tensor, rope: tuple, masks: list[torch.Tensor]
    ) -> torch.Tensor:
        h = routed(x, und, gen, self.input_layernorm, self.input_layernorm_moe_gen)
        x = x + self.self_attn(h, und, gen, rope, masks)
        h = routed(x, und, gen, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        return x + routed(h, und, gen, self.mlp, self.mlp_moe_gen)


class Qwen2Body(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        H = cfg["hidden_size"]
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], H)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = Qwen2RMSNorm(H, eps=cfg["rms_norm_eps"])
        self.norm_moe_gen = Qwen2RMSNorm(H, eps=cfg["rms_norm_eps"])


class LanguageModel(nn.Module):
    """``language_model``: the decoder body (``model``) and the untied ``lm_head``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Qwen2Body(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        self.gradient_checkpointing = False

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.cfg["hidden_size"] // self.cfg["num_attention_heads"]
        inv = 1.0 / self.cfg["rope_theta"] ** (
            torch.arange(0, dim, 2, dtype=torch.float32, device=position_ids.device) / dim
        )
        freqs = position_ids.float()[:, None] * inv
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    def forward(
        self, x: torch.Tensor, gen_mask: torch.Tensor, position_ids: torch.Tensor, masks: list[torch.Tensor]
    ) -> torch.Tensor:
        und, gen = (~gen_mask).nonzero().squeeze(1), gen_mask.nonzero().squeeze(1)
        cos, sin = self.rope(position_ids)
        rope = (cos.to(x.dtype), sin.to(x.dtype))
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, und, gen, rope, masks, use_reentrant=False)
            else:
                x = layer(x, und, gen, rope, masks)
        return routed(x, und, gen, self.model.norm, self.model.norm_moe_gen)


# --- the understanding encoder --------------------------------------------------------------------
class VisionEmbeddings(nn.Module):
    """SigLIP's patch embedding as upstream ships it (a Linear over flattened patches) and the learnt
    position table indexed by flattened grid positions (``rope=False``)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        p, D = cfg["patch_size"], cfg["hidden_size"]
        self.patch_embedding = nn.Linear(cfg.get("num_channels", 3) * p * p, D)
        self.position_embedding = nn.Embedding((cfg["image_size"] // p) ** 2, D)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(patches) + self.position_embedding(position_ids)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        config = SiglipVisionConfig(**{k: v for k, v in cfg.items() if k != "num_channels"},
                                    hidden_act="gelu_pytorch_tanh", attention_dropout=0.0)  # fmt: skip
        config._attn_implementation = "sdpa"
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])


class SiglipNavit(nn.Module):
    """``vit_model``: SigLIP without its last layer, run on each image's patches (batched: every
    image of a batch has the same grid)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.vision_model = VisionTransformer(cfg)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        h = vm.encoder(inputs_embeds=vm.embeddings(patches, position_ids)).last_hidden_state
        return vm.post_layernorm(h)


# --- BAGEL ------------------------------------------------------------------------------------------
class BagelNet(nn.Module):
    """``Bagel`` (upstream's ``modeling/bagel/bagel.py``): state-dict keys as in ``ema.safetensors``.

    ``arch``: ``llm`` (Qwen2 config values), ``vit`` (SigLIP values, layers as built), and
    ``latent_patch_size``, ``max_latent_size``, ``vit_max_num_patch_per_side``, ``latent_channels``.
    """

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        self.arch = arch
        H = arch["llm"]["hidden_size"]
        self.patch_latent_dim = arch["latent_patch_size"] ** 2 * arch["latent_channels"]
        self.language_model = LanguageModel(arch["llm"])
        self.time_embedder = TimestepEmbedder(H)
        self.vae2llm = nn.Linear(self.patch_latent_dim, H)
        self.llm2vae = nn.Linear(H, self.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(arch["max_latent_size"], H)
        self.vit_model = SiglipNavit(arch["vit"])
        self.connector = Connector(arch["vit"]["hidden_size"], H)
        self.vit_pos_embed = PositionEmbedding(arch["vit_max_num_patch_per_side"], H)
        nn.init.zeros_(self.llm2vae.weight)  # upstream starts the velocity head at zero
        nn.init.zeros_(self.llm2vae.bias)

    def understanding(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """(B, N, H) ViT tokens after the connector (before ``vit_pos_embed``): what the LLM reads."""
        return self.connector(self.vit_model(patches, position_ids))

    def forward(
        self,
        pack: Pack,
        vit_tokens: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(S, H) last hidden states (after the expert's final norm) of a pack whose ViT slots hold
        ``vit_tokens`` (n_vit, H; connector outputs) and latent slots ``latents`` (n_vae, p^2 C) at
        ``timesteps`` (n_vae,; 0 = clean)."""
        embed = self.language_model.model.embed_tokens
        x = embed(pack.text_ids)
        if vit_tokens is not None and vit_tokens.shape[0]:
            tokens = vit_tokens.to(x.dtype) + self.vit_pos_embed(pack.vit_pos).to(x.dtype)
            x = x.index_copy(0, pack.vit_index, tokens)
        if latents is not None and latents.shape[0]:
            lat = self.vae2llm(latents.to(x.dtype)) + self.time_embedder(timesteps)
            x = x.index_copy(0, pack.vae_index, lat + self.latent_pos_embed(pack.vae_pos).to(x.dtype))
        return self.language_model(x, pack.kind == VAE, pack.position_ids, pack.masks)
