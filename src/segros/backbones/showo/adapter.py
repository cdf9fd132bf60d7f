"""Show-o behind the backbone protocol: data, the SeGroS seam, the I2T loss, generation, storage.

Training sequence (paper Fig. 6 mapped onto Show-o's T2I layout)::

    [hints (K) | t2i bos caption eos, left-padded to max_text_len + 1 (P) | soi | image (N) | eoi]

- Attention: :func:`segros.sequence.pack_layout` with the text block as TEXT and ``soi .. eoi`` as
  IMAGE. That is exactly Show-o's own T2I mask (upstream ``create_attention_mask_predict_next`` with
  ``rm_pad_in_image``: text causal, ``soi .. eoi`` rows see every non-pad token) plus the hint rules:
  hints see only hints, text and image see every hint.
- Positions: everything after the hints keeps upstream's ``0 .. P + N + 1`` (soi at P, image slot
  ``i`` at ``P + 1 + i``), exactly the ids of generation, so the pretrained weights see the positions
  they were trained with. The hints are numbered by ``plan.hint_position``: ``prefix`` (default)
  gives hint ``k`` of K the id ``k - K`` (``-K .. -1``): a hint's id tells its order, not its slot.
  Phi's rotary embedding is ``cos/sin(position * freq)`` and accepts negative ids; only differences
  matter, so this is the same as numbering hints ``0 .. K-1`` and shifting the rest by K. ``slot``
  (an ablation) gives a hint the position of the image slot it came from (CLIP hints: the nearest
  code slot), from where the model can copy a hinted code. Either way prepending K hints shifts
  every *index* by K (the loss reads ``K + P + 1 .. K + P + N``), never a text or image position id.
- Hint dropout (``method.hint_prob``): ``plan.hint_valid()`` makes a sample's dropped hints padding
  that nothing attends to, so that sample's logits are those of the same sample without hints.
- Loss (Eq. 15): cross-entropy at the plan's targets only, through
  :func:`segros.losses.masked_cross_entropy`. ``loss_vocab="full"`` (default) keeps Show-o's native
  softmax over the whole 58,498-way vocabulary; ``"codes"`` restricts it to the 8,192 code logits
  (the ones generation samples from). Unlike upstream's ``loss_t2i``, soi and eoi are not targets:
  they are not image tokens and the plan does not name them.

Image-to-text (Eq. 2) uses Show-o's MMU layout ``[mmu, soi, image, eoi, bos, USER: q ASSISTANT: a, eos]``
with the image as codes (VQ variants) or projected CLIP features (CLIP variants), the image
visible to every row and the text causal; only answer tokens carry loss.

Generation is upstream's MaskGIT loop (``Showo.t2i_generate``): CFG ``(1 + w) cond - w uncond``, all
positions sampled each step, cosine re-masking with Gumbel noise whose temperature decays as a
cumulative product; every draw comes from the given generator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file

from segros._checks import check_choice
from segros.backbones.base import (
    Backbone,
    BackboneOptions,
    Capabilities,
    GroundingInputs,
    I2TBatch,
    PlanHints,
    T2IBatch,
    gather_tokens,
)
from segros.backbones.files import load_exact, load_weights
from segros.backbones.image_cache import ImageFields
from segros.backbones.images import square_batch, to_signed_unit
from segros.backbones.sampling import gumbel_noise, sample_categorical
from segros.backbones.showo import weights as W
from segros.backbones.showo.magvit2 import MagvitConfig, MAGVITv2
from segros.backbones.showo.model import CLIP_MEAN, CLIP_STD, ClipConfig, ClipTower, Showo, ShowoConfig
from segros.backbones.showo.text import (
    Vocab,
    empty_prompt,
    extend_tokenizer,
    load_tokenizer,
    mmu_text,
    t2i_prompt,
)
from segros.losses import i2t_loss, masked_cross_entropy
from segros.plan import HINT_POSITIONS, SupervisionPlan
from segros.sequence import pack_layout


class ShowoArch(BaseModel):
    """Sizes for a randomly initialised model (``init_from: null``), e.g. the tiny test model.

    Each dict holds fields of :class:`ShowoConfig`, :class:`MagvitConfig`, :class:`ClipConfig`;
    empty means the published size. ``vocab_size`` follows from the tokenizer and codebook. When
    loading a published Show-o, the LLM sizes are read off its weights and the CLIP sizes off the
    CLIP config; ``magvit`` still applies (MAGVIT-v2 publishes no sizes: upstream's are the defaults).
    """

    model_config = ConfigDict(extra="forbid")

    showo: dict[str, Any] = {}
    magvit: dict[str, Any] = {}
    clip: dict[str, Any] | None = None  # set: a w/ CLIP-ViT variant

    @model_validator(mode="after")
    def _fields(self) -> ShowoArch:
        if "vocab_size" in self.showo or "w_clip_vit" in self.showo:
            raise ValueError("arch.showo must not set vocab_size or w_clip_vit (derived)")
        ShowoConfig(**self.showo), MagvitConfig(**self.magvit), ClipConfig(**(self.clip or {}))
        return self


class ShowoOptions(BackboneOptions):
    """The ``model:`` section of a config for Show-o. Loading weights happens only when a run starts."""

    name: Literal["showo"] = "showo"
    # hub id or folder: a published Show-o (showlab/show-o, -512x512, -w-clip-vit, ...) or a segros
    # checkpoint folder; null: random weights of ``arch``
    init_from: str | None = "showlab/show-o"
    magvit: str = "showlab/magvitv2"  # hub id or folder with pytorch_model.safetensors
    # hub id or folder with the Phi-1.5 tokenizer files; "<corpus>-words" (e.g. "shapes-words"): a
    # built-in word-level one over that corpus of segros.data.corpora
    tokenizer: str = "microsoft/phi-1_5"
    clip: str = "openai/clip-vit-large-patch14-336"  # CLIP variants only
    arch: ShowoArch = ShowoArch()
    image_size: int = Field(256, ge=16, le=2048)
    max_text_len: int = Field(128, ge=4, le=1024)  # upstream max_seq_length
    hint_source: Literal["codes", "clip"] | None = None  # None: clip for CLIP variants, else codes
    loss_vocab: Literal["full", "codes"] = "full"
    generation_steps: int = Field(50, ge=1, le=1024)
    guidance_scale: float = Field(5.0, ge=0.0)
    # scale of the Gumbel noise on the re-masking order, annealed as upstream (its config key);
    # Show-o samples the codes themselves at temperature 1
    generation_temperature: float = Field(1.0, ge=0.0)
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    gradient_checkpointing: bool = False


class ShowoBackbone(Backbone):
    """Show-o (VQ or w/ CLIP-ViT, 256 or 512 px); see the module docstring."""

    name = "showo"
    Options = ShowoOptions
    reload_options = frozenset(
        {
            "hint_source",
            "loss_vocab",
            "caption_dropout",
            "generation_steps",
            "guidance_scale",
            "generation_temperature",
            "attn_implementation",
            "gradient_checkpointing",
            "max_text_len",
        }
    )
    saved_files = ("model.safetensors", "tokenizer/tokenizer_config.json")
    lora_targets = ("q_proj", "k_proj", "v_proj", "dense")  # Phi attention
    prompt_padding = "left"  # upstream left-pads the prompt to max_text_len + 1
    mask_schedule = "cosine"  # Show-o: gamma = cos(pi/2 u), one ratio per sample
    capabilities = Capabilities(masks_tokens=True, trains_image_to_text=True, generation="masked")

    def __init__(
        self,
        showo_cfg: ShowoConfig,
        magvit_cfg: MagvitConfig,
        clip_cfg: ClipConfig | None,
        tokenizer: Any,
        options: ShowoOptions,
    ) -> None:
        super().__init__()
        self.options = options
        self.text_tokenizer = tokenizer
        self.vocab = Vocab.from_tokenizer(tokenizer, magvit_cfg.codebook_size)
        if showo_cfg.vocab_size != self.vocab.size:
            raise ValueError(
                f"the LLM has {showo_cfg.vocab_size} embeddings but tokenizer + codebook give "
                f"{self.vocab.size}"
            )
        self.model = Showo(showo_cfg)
        self.vq = MAGVITv2(magvit_cfg).requires_grad_(False).eval()
        self.clip = ClipTower(clip_cfg) if clip_cfg is not None else None
        if showo_cfg.w_clip_vit != (clip_cfg is not None):
            raise ValueError("a CLIP config is needed exactly for w_clip_vit models")
        self.image_size = options.image_size
        side, stride = options.image_size // magvit_cfg.stride, magvit_cfg.stride
        if side * stride != options.image_size:
            raise ValueError(f"model.image_size must be a multiple of MAGVIT's stride {stride}")
        self.token_grid = (side, side)
        self.hint_source = options.hint_source or ("clip" if showo_cfg.w_clip_vit else "codes")
        if self.hint_source == "clip" and self.clip is None:
            raise ValueError("model.hint_source='clip' needs a w/ CLIP-ViT Show-o")
        self.hint_grid = clip_cfg.grid if self.hint_source == "clip" else None
        if options.gradient_checkpointing:
            self.model.showo.gradient_checkpointing_enable()

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, options: ShowoOptions) -> ShowoBackbone:
        """Random weights of ``arch``."""
        tokenizer = extend_tokenizer(load_tokenizer(options.tokenizer))
        magvit_cfg = MagvitConfig(**options.arch.magvit)
        clip_cfg = ClipConfig(**options.arch.clip) if options.arch.clip is not None else None
        showo_cfg = ShowoConfig(
            **options.arch.showo,
            vocab_size=Vocab.from_tokenizer(tokenizer, magvit_cfg.codebook_size).size,
            w_clip_vit=clip_cfg is not None,
            clip_hidden_size=(clip_cfg or ClipConfig()).hidden_size,
            attn_implementation=options.attn_implementation,
        )
        return cls(showo_cfg, magvit_cfg, clip_cfg, tokenizer, options)

    @classmethod
    def from_upstream(cls, source: str, options: ShowoOptions) -> ShowoBackbone:
        """A published Show-o (``source``: ``showlab/show-o*`` or a folder of its files) with
        MAGVIT-v2, the Phi-1.5 tokenizer and, for the CLIP variants, CLIP-ViT (:mod:`.weights`):
        every file is located first, so a missing one stops before any load."""
        config, weights = W.upstream_showo(source)
        vq_weights = W.magvit_weights(options.magvit)
        tokenizer = extend_tokenizer(load_tokenizer(options.tokenizer))
        clip_cfg, clip_state = None, None
        if config.get("w_clip_vit"):
            clip_config, clip_weights = W.clip_files(options.clip)
            clip_cfg = W.clip_config(json.loads(clip_config.read_text()))
            clip_state = W.clip_vision_state(W.read_weights(clip_weights))
        magvit_cfg = MagvitConfig(
            **{**options.arch.magvit, "z_channels": int(math.log2(config.get("codebook_size", 8192)))}
        )
        expected_tokens = (options.image_size // magvit_cfg.stride) ** 2
        if config.get("num_vq_tokens", expected_tokens) != expected_tokens:
            raise ValueError(
                f"{source} was trained on {config['num_vq_tokens']} image tokens but "
                f"model.image_size={options.image_size} gives {expected_tokens}; set model.image_size"
            )
        showo_cfg = ShowoConfig(
            **W.llm_sizes(W.weight_shapes(weights)),
            vocab_size=config["vocab_size"],
            w_clip_vit=bool(config.get("w_clip_vit")),
            clip_hidden_size=(clip_cfg or ClipConfig()).hidden_size,
            attn_implementation=options.attn_implementation,
        )
        vocab = Vocab.from_tokenizer(tokenizer, magvit_cfg.codebook_size)
        if vocab.llm_vocab_size != config.get("llm_vocab_size", vocab.llm_vocab_size):
            raise ValueError(
                f"tokenizer has {vocab.llm_vocab_size} text tokens, the checkpoint expects "
                f"{config['llm_vocab_size']}"
            )
        backbone = _build_empty(cls, showo_cfg, magvit_cfg, clip_cfg, tokenizer, options)
        _load_assigned(backbone.model, load_file(str(weights)), f"Show-o weights {weights}")
        _load_assigned(backbone.vq, load_file(str(vq_weights)), f"MAGVIT-v2 weights {vq_weights}")
        if backbone.clip is not None:
            _load_assigned(backbone.clip.tower, clip_state, f"CLIP weights from {options.clip}")
        return backbone._finish_loading()

    def _finish_loading(self) -> ShowoBackbone:
        left = [n for n, p in [*self.named_parameters(), *self.named_buffers()] if p.is_meta]
        if left:
            raise ValueError(f"weights were not loaded for {left[:8]}")
        self.vq.requires_grad_(False)
        if self.clip is not None:
            self.clip.tower.requires_grad_(False)
        return self

    # --- data -----------------------------------------------------------------------------------
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, N) MAGVIT-v2 codes, on the tokenizer's device, returned on the
        images' device."""
        device = next(self.vq.parameters()).device
        pixels = to_signed_unit(images.to(device))  # Normalize(0.5, 0.5)
        return self.vq.get_code(pixels).to(images.device)

    def _clip_pixels(self, images: Sequence[Any]) -> torch.Tensor:
        """CLIP's transform: short side to the tower's size, centre crop, CLIP mean/std, with the
        arithmetic of transformers' ``CLIPImageProcessor`` (truncated side, floored crop offset)."""
        size = self.clip.cfg.image_size
        pixels = square_batch(images, size, crop="transformers").permute(0, 3, 1, 2).float() / 255.0
        return (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def pixel_fields(self, images: Sequence[Any]) -> ImageFields:
        raw = list(images)
        out = {"images": square_batch(raw, self.image_size)}
        if self.clip is not None:
            out["clip_pixels"] = self._clip_pixels(raw)
        return out

    def encode_pixels(self, fields: ImageFields) -> ImageFields:
        return {**fields, "codes": self._encode(fields["images"])}

    def image_encoders(self) -> dict[str, Any]:
        return {"vq": self.vq, **({"clip": self.clip} if self.clip is not None else {})}

    def collate_t2i(self, records: Sequence[Any]) -> T2IBatch:
        captions = [r.caption for r in records]
        text = t2i_prompt(self.text_tokenizer, self.vocab, captions, self.options.max_text_len)
        # caption_stopword: caption tokens of function words (whole words)
        return self.t2i_batch(records, text["ids"], text["mask"], text["caption"], text["stopword"])

    def collate_i2t(self, records: Sequence[Any]) -> I2TBatch:
        # the first question-answer turn of each LLaVA conversation
        text = mmu_text(
            self.text_tokenizer, self.vocab, [r.turns[0] for r in records], self.options.max_text_len
        )
        # the pixels (and CLIP pixels); encode_i2t replaces "images" by their codes
        fields = self.pixel_fields([r.image for r in records])
        return I2TBatch(text["ids"], text["mask"], text["answer"], extras=fields)

    # --- the SeGroS seam --------------------------------------------------------------------
    def _code_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.embed(codes + self.vocab.code_offset)

    def grounding_inputs(self, batch: T2IBatch) -> GroundingInputs:
        """Caption tokens and image codes through the one shared embedding table (docs/design.md)."""
        text_emb = self.model.embed(batch.text_ids)
        return GroundingInputs.of_batch(batch, text_emb, self._code_embeddings(batch.extras["codes"]))

    def clip_embeddings(self, batch: T2IBatch | I2TBatch) -> torch.Tensor:
        """(B, 576, D): frozen CLIP patch features through the (trainable) ``mm_projector``."""
        return self.model.mm_projector(self.clip(batch.extras["clip_pixels"]))

    def hint_embeddings(self, batch: T2IBatch, hint_idx: torch.Tensor) -> torch.Tensor:
        if hint_idx.shape[1] == 0:  # SFT: no hints, no CLIP pass
            return self.model.embed_tokens.weight.new_zeros(hint_idx.shape[0], 0, self.model.cfg.hidden_size)
        if self.hint_source == "clip":
            feats = self.clip_embeddings(batch)
            return gather_tokens(feats, hint_idx)
        return self._code_embeddings(batch.extras["codes"].gather(1, hint_idx))

    def hint_slots(self, hint_idx: torch.Tensor) -> torch.Tensor:
        """Image slot of every hint: itself on the code grid, the nearest code cell for CLIP hints."""
        if self.hint_grid is None:
            return hint_idx
        (gh, gw), (th, tw) = self.hint_grid, self.token_grid
        row = ((hint_idx // gw).double() + 0.5) * th / gh
        col = ((hint_idx % gw).double() + 0.5) * tw / gw
        return row.floor().long() * tw + col.floor().long()

    @property
    def pad_id(self) -> int:
        return self.vocab.pad

    def empty_prompt(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``[PAD ..., t2i, bos, eos]`` at the prompt's fixed width (``max_text_len + 1``), so the
        image keeps upstream's position ids."""
        ids = empty_prompt(self.vocab, batch_size, self.options.max_text_len + 1, device)
        return ids, ids != self.vocab.pad

    def image_logits(
        self,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        image_ids: torch.Tensor,
        hints: PlanHints | None = None,
    ) -> torch.Tensor:
        """Logits (B, N, V) at the image slots of ``[hints | prompt | soi image eoi]`` (Fig. 6);
        ``hints`` from :meth:`plan_hints` (None: generation).

        ``hints.position``: ``"prefix"`` numbers the hints ``-K .. -1``; ``"slot"`` gives hint ``k``
        the id of the image slot it came from (:meth:`hint_slots` of ``hints.idx``, ``P + 1 + slot``).
        Text and image always keep upstream's ``0 .. P + N + 1``. ``hints.valid`` (B, K) bool drops
        hints per sample (padding).
        """
        hint_position = "prefix" if hints is None else hints.position
        check_choice("hint_position", hint_position, HINT_POSITIONS)
        B, P, N = text_ids.shape[0], text_ids.shape[1], image_ids.shape[1]
        hint_valid = None if hints is None else hints.valid
        if hints is None:
            embeddings = self.model.embed_tokens.weight.new_zeros(B, 0, self.model.cfg.hidden_size)
        else:
            embeddings = hints.embeddings
        K = embeddings.shape[1]
        v = self.vocab
        # soi .. eoi form Show-o's bidirectional span; its position ids are replaced below by
        # upstream's arange over the left-padded prompt (pack_layout counts real tokens only)
        layout = pack_layout(K, text_mask, N + 2, hint_position="prefix", hint_valid=hint_valid)
        soi = torch.full((B, 1), v.soi, dtype=torch.long, device=image_ids.device)
        eoi = torch.full((B, 1), v.eoi, dtype=torch.long, device=image_ids.device)
        tokens = torch.cat(
            [embeddings, self.model.embed(torch.cat([text_ids, soi, image_ids, eoi], dim=1))], dim=1
        )
        positions = torch.arange(P + N + 2, device=tokens.device).expand(B, -1)
        if hint_position == "prefix" or K == 0:
            hint_pos = layout.position_ids[:, :K].to(tokens.device)  # -K .. -1
        else:
            hint_pos = P + 1 + self.hint_slots(hints.idx).to(tokens.device)
        positions = torch.cat([hint_pos, positions], dim=1)
        hidden = self.model.hidden(tokens, layout.allowed, positions)
        start = K + P + 1  # hints shift every index the loss reads by K
        return self.model.logits(hidden[:, start : start + N])

    def reconstruction_loss(self, batch: T2IBatch, plan: SupervisionPlan) -> torch.Tensor:
        codes, v = batch.extras["codes"], self.vocab
        ids, mask = self.condition(batch, plan.text_condition)
        image_ids = torch.where(plan.seen, codes + v.code_offset, v.mask)  # Sec. 3.4
        logits = self.image_logits(ids, mask, image_ids, self.plan_hints(batch, plan))
        if self.options.loss_vocab == "codes":
            logits = logits[..., v.code_offset : v.code_offset + v.codebook_size]
            loss = masked_cross_entropy(logits, codes, plan.loss_weight)  # Eq. 15
        else:
            loss = masked_cross_entropy(logits, codes + v.code_offset, plan.loss_weight)  # Eq. 15
        return loss + self._unused_projector_term(plan)

    def _unused_projector_term(self, plan: SupervisionPlan) -> torch.Tensor | float:
        """Zero that still reaches ``mm_projector`` when no CLIP hint used it (SFT, code hints):
        DDP waits for a gradient of every trainable parameter and would hang or fail otherwise."""
        projector = getattr(self.model, "mm_projector", None)
        if projector is None or (self.hint_source == "clip" and plan.num_hints > 0):
            return 0.0
        return 0.0 * sum(p.sum() for p in projector.parameters() if p.requires_grad)

    def i2t_loss(self, batch: I2TBatch) -> torch.Tensor:
        """Eq. 2 on Show-o's MMU layout; the image is a prefix every row sees, the text is causal."""
        ids, v = batch.text_ids, self.vocab
        B, T = ids.shape
        if self.clip is not None:
            image = self.clip_embeddings(batch)
        else:
            image = self._code_embeddings(batch.extras["codes"])
        n = image.shape[1]
        head = self.model.embed(torch.tensor([v.mmu, v.soi], device=ids.device)).expand(B, -1, -1)
        eoi = self.model.embed(torch.tensor([v.eoi], device=ids.device)).expand(B, -1, -1)
        tokens = torch.cat([head, image.to(head.dtype), eoi, self.model.embed(ids)], dim=1)
        S, prefix = tokens.shape[1], n + 3
        idx = torch.arange(S, device=ids.device)
        # upstream create_attention_mask_for_mmu (codes: columns mmu .. eoi seen by every row) and
        # create_attention_mask_for_mmu_vit (CLIP: the n feature columns), on top of causal
        first = 2 if self.clip is not None else 0
        last = 2 + n if self.clip is not None else prefix
        col = idx.view(1, S)
        allowed = (idx.view(S, 1) >= col) | ((col >= first) & (col < last))
        hidden = self.model.hidden(tokens, allowed.expand(B, S, S), idx.expand(B, -1))
        return i2t_loss(self.model.logits(hidden[:, prefix:]), ids, batch.answer_mask)  # Eq. 2

    # --- generation ---------------------------------------------------------------------------
    @staticmethod
    def cosine_mask_len(num_tokens: int, step: int, steps: int) -> int:
        """Tokens left masked after ``step`` (0-based) of ``steps``, before the [1, unknown - 1] clamp.

        Upstream's arithmetic exactly: ``cosine_schedule(torch.tensor(ratio))`` (``models/sampling.py``
        L39-40: ``cos(t * pi * 0.5)`` on a float32 CPU tensor) and ``(num_vq_tokens * mask_ratio).floor()``
        (``models/modeling_showo.py`` L157-166), all in float32. In float64 the count at ratio 2/3
        comes out one higher (128 vs 127 of 256, 512 vs 511 of 1024): every step count divisible by 3
        (upstream's 18 and 12 included) would leave a different number of tokens masked.
        """
        ratio = torch.tensor((step + 1) / steps, dtype=torch.float32)
        return int((num_tokens * torch.cos(ratio * math.pi * 0.5)).floor())

    @torch.no_grad()
    def generate_tokens(
        self,
        prompts: Sequence[str],
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """(B, N) code ids by MaskGIT decoding with classifier-free guidance (upstream t2i_generate)."""
        w = self.options.guidance_scale if guidance_scale is None else guidance_scale
        steps = steps or self.options.generation_steps
        v, device = self.vocab, self.device
        B, N, K = len(prompts), self.num_tokens, v.codebook_size
        ids = t2i_prompt(self.text_tokenizer, v, list(prompts), self.options.max_text_len)["ids"].to(device)
        mask = ids != v.pad
        if w > 0:
            ids, mask = self.with_empty_prompt(ids, mask)
        rows = ids.shape[0]
        image_ids = torch.full((B, N), v.mask, dtype=torch.long, device=device)
        temperature = self.options.generation_temperature
        sampled = torch.zeros(B, N, dtype=torch.long, device=device)
        for step in range(steps):
            logits = self.image_logits(ids, mask, image_ids.repeat(rows // B, 1))
            logits = logits[..., v.code_offset : v.code_offset + K].float()
            if w > 0:
                logits = (1 + w) * logits[:B] - w * logits[B:]  # MUSE-style guidance
            probs = logits.softmax(-1)
            draw = sample_categorical(probs, generator)  # every position draws a code
            unknown = image_ids == v.mask
            sampled = torch.where(unknown, draw, image_ids - v.code_offset)
            ratio = (step + 1) / steps
            mask_len = torch.tensor(self.cosine_mask_len(N, step, steps), device=device)
            mask_len = torch.clamp(torch.minimum(unknown.sum(-1, keepdim=True) - 1, mask_len), min=1)
            chosen = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
            chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)
            temperature = temperature * (1.0 - ratio)  # annealed as a cumulative product, as upstream
            confidence = chosen.clamp_min(1e-20).log() + temperature * gumbel_noise((B, N), generator, chosen)
            cut_off = confidence.sort(-1).values.gather(1, mask_len)
            image_ids = torch.where(confidence < cut_off, v.mask, sampled + v.code_offset)
        return sampled

    def decode_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N) codes -> (B, H, W, 3) uint8 through the MAGVIT-v2 decoder.

        As upstream ``inference_t2i.py`` L157-159: ``clamp((x + 1) / 2, 0, 1) * 255`` in float32, then
        numpy's ``astype(np.uint8)``, which truncates (no rounding); the uint8 cast here truncates too.
        """
        device = next(self.vq.parameters()).device
        pixels = self.vq.decode_code(codes.clamp(0, self.vocab.codebook_size - 1).to(device), self.token_grid)
        levels = ((pixels.float() + 1) / 2).clamp(0, 1).mul(255)
        return levels.to(torch.uint8).permute(0, 2, 3, 1).cpu()

    # --- storage ------------------------------------------------------------------------------
    # model.safetensors holds Show-o, MAGVIT-v2 and CLIP weights: the whole state, which the
    # trainer's resume reloads; tokenizer/ the extended Phi tokenizer.
    def architecture(self) -> dict[str, Any]:
        return {
            "showo": self.model.cfg.to_dict(),
            "magvit": self.vq.cfg.to_dict(),
            "clip": self.clip.cfg.to_dict() if self.clip is not None else None,
        }

    def save_components(self, path: Path) -> None:
        self.text_tokenizer.save_pretrained(str(path / "tokenizer"))

    @classmethod
    def from_saved(cls, folder: Path, config: dict[str, Any], options: ShowoOptions) -> ShowoBackbone:
        from transformers import AutoTokenizer

        showo_cfg = ShowoConfig(**{**config["showo"], "attn_implementation": options.attn_implementation})
        clip_cfg = ClipConfig(**config["clip"]) if config["clip"] is not None else None
        tokenizer = extend_tokenizer(
            AutoTokenizer.from_pretrained(str(folder / "tokenizer"), padding_side="left")
        )
        backbone = _build_empty(
            cls, showo_cfg, MagvitConfig(**config["magvit"]), clip_cfg, tokenizer, options
        )
        _load_assigned(backbone, load_weights(folder), str(folder / "model.safetensors"))
        return backbone._finish_loading()


def _load_assigned(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """:func:`load_exact` into a module built on the meta device (:func:`_build_empty`), leaving out
    the keys Show-o recomputes (:data:`weights.RECOMPUTED`)."""
    load_exact(module, state, what, ignore=W.RECOMPUTED, assign=True)


def _build_empty(cls: type[ShowoBackbone], *args: Any) -> ShowoBackbone:
    """The backbone with parameters on the meta device (no memory, no init time); buffers are real
    and the weights are then assigned from a file."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls(*args)
