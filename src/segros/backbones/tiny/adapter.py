"""TinyUMM behind the backbone protocol: data preparation, the SeGroS seam, generation, storage.

Hints are the clean code embeddings at the plan's positions (as for Show-o's VQ variants),
or, with ``model.hint_source=understanding`` (the demo's RecA), the clean image as the model's
understanding path reads it (final hidden states of an image-only image-to-text pass, no
gradient), prepended in the Fig. 6 layout. With ``hint_position=prefix`` (default) they take position ids of a
range of their own, numbered by their order, so a hint says *what* is in the image, not *where*,
and text and image keep exactly their generation-time positions; ``slot`` gives each hint its
image slot's position (an ablation: the model can then copy a hinted target from distance 0).
The reconstruction loss is cross-entropy over code ids at the plan's targets (Eq. 15).
Image-to-text puts the clean image first (bidirectional) and predicts the answer causally
(Eq. 2). Generation is MaskGIT-style parallel decoding with classifier-free guidance; the model
learns the empty prompt through caption dropout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from segros.backbones.base import (
    Backbone,
    BackboneOptions,
    Capabilities,
    GroundingInputs,
    I2TBatch,
    PlanHints,
    T2IBatch,
    gather_tokens,
    hinted_layout,
)
from segros.backbones.files import load_weights
from segros.backbones.image_cache import ImageFields
from segros.backbones.images import NEAREST, square_batch
from segros.backbones.sampling import gumbel_noise, sample_categorical
from segros.backbones.tiny.image_tokenizer import PatchTokenizer, cached_tokenizer
from segros.backbones.tiny.model import SIZES, TinyConfig, TinyUMM
from segros.backbones.tiny.text import QUESTION_WORDS, WordTokenizer
from segros.data.corpora import CorpusName
from segros.data.corpora import words as corpus_words
from segros.losses import i2t_loss, masked_cross_entropy
from segros.plan import SupervisionPlan
from segros.sequence import IMAGE, pack_layout


class TinyOptions(BackboneOptions):
    """The ``model:`` section of a config for the tiny backbone."""

    name: Literal["tiny"] = "tiny"
    size: Literal["tiny", "small", "base"] = "tiny"
    # 32 px with 4 px patches: an 8 x 8 token grid whose 4096-code tokenizer round-trips the
    # evaluation renderings at 0.97 with the judge (8 px patches at 64 px reach only 0.60)
    image_size: int = Field(32, ge=16, le=256)
    tokens_per_side: int = Field(8, ge=2, le=64)
    # the built-in corpus (segros.data.corpora) whose words make the text tokenizer and whose
    # training images the image tokenizer is fitted on when image_tokenizer is None
    corpus: CorpusName = "shapes"
    image_tokenizer: str | None = None  # .safetensors; None: fit on the corpus's images (cached)
    # the layout of the corpus's scenes the tokenizer is fitted on when image_tokenizer is None;
    # "grid" snaps objects to the patches (docs/miniature.md), cells per side = tokens_per_side
    shapes_layout: Literal["free", "grid"] = "free"
    num_codes: int = Field(4096, ge=2, le=65536)
    max_text_len: int = Field(48, ge=4, le=512)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # position encoding: "learned", an absolute table added to the input (the shipped model's), or
    # "rope", rotary on queries and keys as the real backbones (Phi, Qwen2) do; fixed at build time
    positions: Literal["learned", "rope"] = "learned"
    # MaskGIT decoding; defaults as measured for the shipped model (docs/miniature.md): 16 steps,
    # guidance 3, temperature 0.7, no noise on the unmasking order
    generation_steps: int = Field(16, ge=1, le=256)
    guidance_scale: float = Field(3.0, ge=0.0)
    temperature: float = Field(0.7, gt=0.0)  # sampling temperature of the codes (Harmon's name)
    # scale of the annealed Gumbel noise on the unmasking order (Show-o's name; MaskGIT's choice
    # temperature); 0: unmask strictly the most confident codes
    generation_temperature: float = Field(0.0, ge=0.0)
    # what a hint carries: "codes", the clean image-token embeddings (the paper's visual hints), or
    # "understanding", the clean image as the understanding path reads it: RecA conditions on the
    # understanding encoder's features, a view of the image that is not the target itself
    hint_source: Literal["codes", "understanding"] = "codes"


class TinyBackbone(Backbone):
    """The built-in UMM; see the module docstring."""

    name = "tiny"
    Options = TinyOptions
    reload_options = frozenset(
        {
            "caption_dropout",
            "dropout",
            "generation_steps",
            "guidance_scale",
            "temperature",
            "generation_temperature",
            "hint_source",
        }
    )
    saved_files = ("model.safetensors", "image_tokenizer.safetensors")
    lora_targets = ("qkv", "proj", "mlp.0", "mlp.2")  # attention and MLP linears
    block_classes = ("Block",)
    mask_schedule = "cosine"  # Show-o / MaskGIT, per sample
    capabilities = Capabilities(masks_tokens=True, trains_image_to_text=True, generation="masked")

    def __init__(
        self,
        model_cfg: TinyConfig,
        text_tokenizer: WordTokenizer,
        image_tokenizer: PatchTokenizer,
        options: TinyOptions,
    ) -> None:
        super().__init__()
        self.model = TinyUMM(model_cfg)
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer
        self.options = options
        self.token_grid = tuple(image_tokenizer.grid)
        self.image_size = options.image_size

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, options: TinyOptions) -> TinyBackbone:
        """A fresh model. TinyUMM has no upstream release (the base ``from_upstream`` refuses), so
        ``init_from`` must be a segros folder."""
        if options.image_tokenizer:
            image_tokenizer = PatchTokenizer.load(options.image_tokenizer)
        else:
            image_tokenizer = cached_tokenizer(
                options.image_size,
                options.num_codes,
                options.tokens_per_side,
                layout=options.shapes_layout,
                corpus=options.corpus,
            )
        if image_tokenizer.image_size != options.image_size:
            raise ValueError(
                f"model.image_tokenizer was fitted for {image_tokenizer.image_size} px images "
                f"but model.image_size is {options.image_size}"
            )
        text_tokenizer = WordTokenizer([*corpus_words(options.corpus), *QUESTION_WORDS])
        model_cfg = TinyConfig(
            text_vocab=len(text_tokenizer),
            num_codes=image_tokenizer.num_codes,
            num_image_tokens=image_tokenizer.num_tokens,
            max_text_len=options.max_text_len,
            dropout=options.dropout,
            positions=options.positions,
            **SIZES[options.size],
        )
        return cls(model_cfg, text_tokenizer, image_tokenizer, options)

    @property
    def cfg(self) -> TinyConfig:
        return self.model.cfg

    # --- data -------------------------------------------------------------------------------
    def pixel_fields(self, images: Sequence[Any]) -> ImageFields:
        return {"images": square_batch(list(images), self.options.image_size, NEAREST)}

    def encode_pixels(self, fields: ImageFields) -> ImageFields:
        """The patch codes; the codebook is a CPU tensor (a nearest-row search), so it runs there and
        the codes go back to the pixels' device."""
        pixels = fields["images"]
        return {**fields, "codes": self.image_tokenizer.encode(pixels).to(pixels.device)}

    def image_encoders(self) -> dict[str, Any]:
        return {"image_tokenizer": self.image_tokenizer.codebook}

    def collate_t2i(self, records: Sequence[Any]) -> T2IBatch:
        text = self.text_tokenizer.batch([r.caption for r in records], self.cfg.max_text_len)
        return self.t2i_batch(records, text["ids"], text["mask"], text["caption"])

    def collate_i2t(self, records: Sequence[Any]) -> I2TBatch:
        images = square_batch([r.image for r in records], self.options.image_size, NEAREST)
        # TinyUMM trains on the first question-answer turn of each conversation.
        qa = self.text_tokenizer.question_answer([r.turns[0] for r in records], self.cfg.max_text_len)
        return I2TBatch(qa["ids"], qa["mask"], qa["answer"], extras={"images": images})  # codes: encode_i2t

    # --- the SeGroS seam --------------------------------------------------------------------
    def _code_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.embed(codes + self.cfg.code_offset)

    def grounding_inputs(self, batch: T2IBatch) -> GroundingInputs:
        ids = batch.text_ids
        return GroundingInputs(
            text_emb=self.model.embed(ids),
            text_valid=batch.caption_mask,
            image_emb=self._code_embeddings(batch.extras["codes"]),
            text_stopword=self.text_tokenizer.stopword_ids(ids),  # one word per token
        )

    def hint_embeddings(self, batch: T2IBatch, hint_idx: torch.Tensor) -> torch.Tensor:
        codes = batch.extras["codes"]
        if self.options.hint_source == "understanding" and hint_idx.shape[1]:
            return gather_tokens(self.understanding_features(codes), hint_idx)
        return self._code_embeddings(codes.gather(1, hint_idx))

    @torch.no_grad()
    def understanding_features(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) the clean image as the image-to-text path reads it: the final hidden states
        at the image slots of an image-only pass (bidirectional, the image's image-to-text position
        ids). TinyUMM has no separate understanding encoder; this pass is its counterpart of the
        SigLIP / CLIP features RecA conditions on, held fixed within a step (no gradient), as
        those encoders are."""
        B, N = codes.shape
        segment = torch.full((N,), IMAGE, device=codes.device)
        if self.cfg.image_positions == "fixed":
            positions = self._image_slot_ids(N, codes.device)
        else:
            positions = torch.arange(N, device=codes.device)
        allowed = torch.ones(1, N, N, dtype=torch.bool, device=codes.device)
        return self.model.hidden(self._code_embeddings(codes), segment, positions.expand(B, -1), allowed)

    @property
    def pad_id(self) -> int:
        return self.text_tokenizer.pad_id

    def empty_prompt(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``[bos, eos]``: the caption-less prompt the model learns through caption dropout."""
        tok = self.text_tokenizer
        ids = torch.tensor([tok.bos_id, tok.eos_id], device=device).expand(batch_size, -1)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def _image_logits(
        self, ids: torch.Tensor, mask: torch.Tensor, image_ids: torch.Tensor, hints: PlanHints | None = None
    ) -> torch.Tensor:
        """Code logits (B, N, K) at the image slots of ``[hints | text | image]`` (Fig. 6); ``hints``
        from :meth:`plan_hints` (None: generation)."""
        K = 0 if hints is None else hints.count
        position = hints.position if K else "prefix"
        layout = hinted_layout(hints, mask, image_ids.shape[1])
        positions = layout.position_ids
        if self.cfg.image_positions == "fixed":  # slot i keeps id max_text_len + i (model.py)
            positions = positions.clone()
            positions[:, layout.image] = self._image_slot_ids(image_ids.shape[1], positions.device)
            if position == "slot" and K:
                positions[:, :K] = self._image_slot_ids(image_ids.shape[1], positions.device)[hints.idx]
        if position == "prefix" and K:  # -K..-1 -> the hints' own range of the position table
            positions = torch.where(positions < 0, positions + K + self.cfg.hint_position_base, positions)
        parts = [self.model.embed(ids), self.model.embed(image_ids)]
        tokens = torch.cat([hints.embeddings, *parts] if K else parts, dim=1)
        hidden = self.model.hidden(tokens, layout.segment, positions, layout.allowed)
        lo = self.cfg.code_offset
        return self.model.logits(hidden[:, layout.image], lo, lo + self.cfg.num_codes)

    def _image_slot_ids(self, num_image: int, device: torch.device) -> torch.Tensor:
        """Position ids of image slots 0..N-1: fixed, after the longest caption (model.py)."""
        return self.cfg.max_text_len + torch.arange(num_image, device=device)

    def reconstruction_loss(self, batch: T2IBatch, plan: SupervisionPlan) -> torch.Tensor:
        codes = batch.extras["codes"]
        ids, mask = self.condition(batch, plan.text_condition)
        image_ids = torch.where(plan.seen, codes + self.cfg.code_offset, self.cfg.mask_id)  # Sec. 3.4
        logits = self._image_logits(ids, mask, image_ids, self.plan_hints(batch, plan))
        return masked_cross_entropy(logits, codes, plan.loss_weight)  # Eq. 15

    def i2t_loss(self, batch: I2TBatch) -> torch.Tensor:
        codes, ids, mask = batch.extras["codes"], batch.text_ids, batch.text_mask
        N = codes.shape[1]
        layout = pack_layout(N, mask, 0)  # clean image as a bidirectional prefix, causal text
        segment = layout.segment.clone()
        segment[:N] = IMAGE
        positions = layout.position_ids
        if self.cfg.image_positions == "fixed":  # the image keeps its T2I ids, text starts at 0
            text = (positions[:, N:] - N).clamp_min(0)
            positions = torch.cat([self._image_slot_ids(N, positions.device).expand(len(ids), -1), text], 1)
        tokens = torch.cat([self._code_embeddings(codes), self.model.embed(ids)], dim=1)
        hidden = self.model.hidden(tokens, segment, positions, layout.allowed)
        logits = self.model.logits(hidden[:, layout.text], 0, self.cfg.text_vocab)
        return i2t_loss(logits, ids, batch.answer_mask)  # Eq. 2

    # --- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate_tokens(
        self,
        prompts: Sequence[str],
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """MaskGIT decoding: each step samples every masked code, keeps the most confident ones,
        and re-masks the rest on a cosine schedule; logits use classifier-free guidance."""
        scale = self.options.guidance_scale if guidance_scale is None else guidance_scale
        steps = steps or self.options.generation_steps
        device = self.device
        B, N = len(prompts), self.num_tokens
        text = self.text_tokenizer.batch(list(prompts), self.cfg.max_text_len)
        ids, mask = self.with_empty_prompt(text["ids"].to(device), text["mask"].to(device))
        codes = torch.zeros(B, N, dtype=torch.long, device=device)
        known = torch.zeros(B, N, dtype=torch.bool, device=device)
        for step in range(steps):
            image_ids = torch.where(known, codes + self.cfg.code_offset, self.cfg.mask_id)
            logits = self._image_logits(ids, mask, image_ids.repeat(2, 1)).float()
            cond, uncond = logits[:B], logits[B:]
            guided = uncond + (1.0 + scale) * (cond - uncond) if scale > 0 else cond
            # sample only where the code is still unknown
            probs = (guided[~known] / self.options.temperature).softmax(-1)  # (M, K)
            picked = sample_categorical(probs, generator)  # (M,)
            sampled = codes.clone()
            sampled[~known] = picked
            confidence = torch.zeros(B, N, device=device)
            confidence[~known] = probs.gather(-1, picked.unsqueeze(-1)).squeeze(-1).clamp_min(1e-30).log()
            anneal = self.options.generation_temperature * (1.0 - (step + 1) / steps)
            confidence = confidence + anneal * gumbel_noise((B, N), generator, confidence)  # annealed
            confidence = confidence.masked_fill(known, math.inf)
            still_masked = math.floor(N * math.cos(0.5 * math.pi * (step + 1) / steps))
            order = confidence.argsort(dim=-1, descending=True, stable=True)
            keep = torch.zeros_like(known).scatter(1, order[:, : N - still_masked], True)
            codes = torch.where(keep & ~known, sampled, codes)
            known = keep
        return codes

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.image_tokenizer.decode(tokens.cpu())

    # --- storage ------------------------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        return {"model": self.cfg.to_dict(), "words": self.text_tokenizer.words}

    def save_components(self, path: Path) -> None:
        self.image_tokenizer.save(path / "image_tokenizer.safetensors")

    @classmethod
    def from_saved(cls, folder: Path, config: dict[str, Any], options: TinyOptions) -> TinyBackbone:
        # a config saved before image_positions existed was trained with the legacy numbering
        legacy = {"image_positions": "after_text"}
        model_cfg = TinyConfig(**{**legacy, **config["model"], "dropout": options.dropout})
        backbone = cls(
            model_cfg,
            WordTokenizer(config["words"]),
            PatchTokenizer.load(folder / "image_tokenizer.safetensors"),
            options,
        )
        backbone.load_state_dict(load_weights(folder))
        return backbone
