"""The backbone contract: what a UMM adapter provides so the trainer can run any method on it.

SeGroS decides *which* image tokens play which role (a :class:`~segros.plan.SupervisionPlan`);
the backbone decides *how* they are encoded and reconstructed. The trainer only ever talks to
this class, so adding a backbone means writing one subclass and registering it
(:mod:`segros.backbones.registry`); the trainer does not change. docs/design.md describes the
contract and the data flow of a step; tests/test_backbone_contract.py runs every registered
backbone through it.

One training step, as the trainer runs it (:mod:`segros.supervision`)::

    batch = backbone.collate_t2i(records)                  # CPU (loader workers): text, pixels
    batch = backbone.encode_t2i(batch.to(device))          # frozen encoders on the device (codes)
    batch = backbone.drop_captions(batch, generator)       # caption dropout, for guidance
    gamma = sample_ratio(backbone, len(batch), generator)  # the backbone's masking schedule
    plan = ground_and_plan(backbone, batch, cfg, gamma, generator, model=model)
    terms = model(batch, plan=plan, i2t=i2t_batch)         # {"recon": ..., "i2t": ...}

Every call goes through ``forward`` so that DDP / FSDP / DeepSpeed wrappers see it.

What an adapter must provide (docs/write-a-backbone.md: the files of an adapter package):

- the class attributes: ``name``, ``Options``, ``capabilities`` (:class:`Capabilities`),
  ``token_grid`` / ``image_size`` and the optional ones below;
- ``collate_t2i`` / ``collate_i2t`` and ``pixel_fields`` (``encode_pixels`` where frozen
  encoders run outside the forward): the typed batches;
- ``grounding_inputs``: caption-token embeddings from the input embedding table, a mask that
  is True only on caption tokens (never padding, BOS/EOS or template tokens), and image-token
  embeddings in the same space, all from *before* the transformer (docs/design.md).
- ``hint_embeddings``: embeddings of the hint tokens at the plan's positions; they may come
  from another encoder and grid (``hint_grid``), as Show-o's CLIP path does. A reconstruction
  takes the plan's hints only through :meth:`Backbone.plan_hints`.
- ``reconstruction_loss``: the backbone's native loss on the plan's targets, with the hints
  prepended in the Fig. 6 layout and ``plan.text_condition`` honoured (``condition``).
- ``i2t_loss``: next-token NLL of answers given image and question (Eq. 2).
- ``generate_tokens`` / ``decode_tokens``: image tokens from prompts, seeded, and their pixels
  (``generate`` chains them, for evaluation).
- ``empty_prompt`` / ``pad_id``: the caption-less prompt; caption dropout, RecA's condition and
  the guidance pair are built from it (:mod:`segros.backbones.conditioning`).
- ``build`` (random weights), ``from_upstream`` (a published checkpoint), ``from_saved`` (a
  segros folder), ``architecture`` / ``save_components``: the adapter's parts of the
  construction and storage skeleton of :mod:`segros.backbones.files`.

What every adapter shares lives in the mixins :class:`Backbone` is made of, one concern each:
:mod:`segros.backbones.files` (construction, storage, weight-loading helpers),
:mod:`segros.backbones.conditioning` (the prompt a reconstruction is conditioned on),
:mod:`segros.backbones.image_cache` (image fields and the pre-encoded cache),
:mod:`segros.backbones.compile_units` (the transformer blocks ``run.compile`` and FSDP use) and
:mod:`segros.backbones.batch_rows` (moving and joining batches).
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from segros.backbones.batch_rows import BatchMethods
from segros.backbones.compile_units import CompileUnits
from segros.backbones.conditioning import PromptConditioning
from segros.backbones.files import BackboneFiles
from segros.backbones.image_cache import ImageCache
from segros.plan import SupervisionPlan
from segros.sequence import PackedLayout, pack_layout


@dataclass
class T2IBatch(BatchMethods):
    """Image-caption records collated by :meth:`Backbone.collate_t2i` (CPU tensors, B samples).

    The named fields are what the trainer, the logger and the tools read or write; everything
    only the adapter reads lives in ``extras`` (its encoded images: codes, latents, CLIP pixels)
    and ``memo`` (what it computes once per batch and reuses within the step).
    """

    captions: list[str]
    text_ids: torch.Tensor  # (B, L) long: each caption inside the backbone's prompt template
    text_mask: torch.Tensor  # (B, L) bool: real tokens, not padding
    caption_mask: torch.Tensor  # (B, L) bool: the caption's own tokens (what the grounding reads)
    images: torch.Tensor | None = None  # (B, H, W, 3) uint8 as the model sees them; None from a cache
    caption_stopword: torch.Tensor | None = None  # (B, L) bool: caption tokens of function words
    drop_caption: torch.Tensor | None = None  # (B,) bool: condition on the empty prompt instead
    extras: dict[str, Any] = field(default_factory=dict)  # backbone-private inputs, (B, ...) each
    memo: dict[str, Any] = field(default_factory=dict)  # backbone-private, derived once per batch

    #: the fields that are (B, text width): cut or padded together by :meth:`cat`
    text_fields: ClassVar[tuple[str, ...]] = ("text_ids", "text_mask", "caption_mask", "caption_stopword")


@dataclass
class I2TBatch(BatchMethods):
    """Image-question-answer records collated by :meth:`Backbone.collate_i2t` (CPU tensors)."""

    text_ids: torch.Tensor  # (B, T) long: question and answer in the backbone's chat template
    text_mask: torch.Tensor  # (B, T) bool: real tokens
    answer_mask: torch.Tensor  # (B, T) bool: answer tokens (they carry the loss, Eq. 2)
    extras: dict[str, Any] = field(default_factory=dict)  # backbone-private (the image), (B, ...) each
    memo: dict[str, Any] = field(default_factory=dict)  # backbone-private, derived once per batch

    text_fields: ClassVar[tuple[str, ...]] = ("text_ids", "text_mask", "answer_mask")


class BackboneOptions(BaseModel):
    """The ``model:`` section of a config: the options every backbone has. An adapter's
    ``Options`` subclasses it with its own (and narrows ``name`` to its registry name)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    # a folder save_pretrained wrote (reloaded, see Backbone.reload_options), or what the adapter's
    # from_upstream() reads: a published release (hub id or folder); None: random weights (build())
    init_from: str | None = None
    # probability that a training caption is replaced by the empty prompt, so the model learns the
    # unconditional branch of classifier-free guidance (Show-o's cond_dropout_prob)
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)


def gather_tokens(feats: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, K, D) rows of ``feats`` (B, N, D) at the token indices ``idx`` (B, K): hint embeddings
    read off an image's token features."""
    return feats.gather(1, idx.to(feats.device).unsqueeze(-1).expand(-1, -1, feats.shape[-1]))


@dataclass
class GroundingInputs:
    """Inputs of :func:`segros.grounding.ground` for one batch."""

    text_emb: torch.Tensor  # (B, L, D)
    text_valid: torch.Tensor  # (B, L) bool: caption tokens only
    image_emb: torch.Tensor  # (B, N, D)
    # (B, L) bool: caption tokens of English function words (segros.stopwords), for
    # method.text_stopwords=english; None if the backbone cannot tell
    text_stopword: torch.Tensor | None = None

    @classmethod
    def of_batch(cls, batch: T2IBatch, text_emb: torch.Tensor, image_emb: torch.Tensor) -> GroundingInputs:
        """The grounding inputs of a batch whose prompts mark their own caption tokens and caption
        stopwords (``caption_mask``, ``caption_stopword``): stopwords count on caption tokens only."""
        stopword = batch.caption_stopword
        return cls(
            text_emb=text_emb,
            text_valid=batch.caption_mask,
            image_emb=image_emb,
            text_stopword=None if stopword is None else stopword & batch.caption_mask,
        )


@dataclass(frozen=True)
class PlanHints:
    """A plan's visual hints as every adapter's conditioning call takes them: made only by
    :meth:`Backbone.plan_hints` (None where the plan has none, and in generation)."""

    embeddings: torch.Tensor  # (B, K, D): what is prepended (Fig. 6)
    idx: torch.Tensor  # (B, K): the image slot each hint came from
    position: str = "prefix"  # plan.hint_position: how the hints are numbered
    valid: torch.Tensor | None = None  # (B, K) bool: the hints each sample attends to (None: all)

    @property
    def count(self) -> int:
        return int(self.embeddings.shape[1])


def hinted_layout(hints: PlanHints | None, text_mask: torch.Tensor, num_image: int) -> PackedLayout:
    """:func:`segros.sequence.pack_layout` of ``[hints | text | image]`` for ``hints`` (or none)."""
    if hints is None:
        return pack_layout(0, text_mask, num_image, hint_position="prefix")
    return pack_layout(hints.count, text_mask, num_image, hint_idx=hints.idx, hint_position=hints.position,
                       hint_valid=hints.valid)  # fmt: skip


GenerationKind = Literal["masked", "masked-autoregressive", "flow"]
GENERATION_KINDS: tuple[str, ...] = typing.get_args(GenerationKind)


@dataclass(frozen=True)
class Capabilities:
    """What a backbone's training can honour, declared once on its class (``capabilities``) and
    read by the config layer (:mod:`segros.train.capabilities`), which refuses a method knob the
    backbone would silently ignore. A backbone never reads the trainer's config schema.

    - ``masks_tokens``: the corrupted input hides image tokens (MaskGIT, MAR), so a plan's
      ``seen`` tokens, its masking ratio and drop-loss targets mean something. False for a model
      whose loss covers every image token (flow matching on the whole latent).
    - ``trains_image_to_text``: the image-to-text loss reaches trainable weights, so
      ``i2t_weight > 0`` trains something (False where the understanding model is frozen).
    - ``generation``: how images are made: ``masked`` (parallel decoding of discrete codes),
      ``masked-autoregressive`` (MAR: continuous tokens unmasked in steps, a diffusion head),
      ``flow`` (a denoiser integrating a flow from noise).
    """

    masks_tokens: bool
    trains_image_to_text: bool
    generation: GenerationKind

    def __post_init__(self) -> None:
        if self.generation not in GENERATION_KINDS:
            kinds = ", ".join(GENERATION_KINDS)
            raise ValueError(f"generation must be one of {kinds}, got {self.generation!r}")


class Backbone(nn.Module, BackboneFiles, PromptConditioning, ImageCache, CompileUnits, ABC):
    """Base class of every UMM adapter (tiny, Show-o, Harmon, OpenUni, ...).

    This class is the contract; its mixins hold what every adapter shares: construction and
    storage (:class:`~segros.backbones.files.BackboneFiles`), the conditioning prompt and caption
    dropout (:class:`~segros.backbones.conditioning.PromptConditioning`), image fields and the
    cache (:class:`~segros.backbones.image_cache.ImageCache`) and the compile units
    (:class:`~segros.backbones.compile_units.CompileUnits`). ``nn.Module`` stays the first base and
    the mixins declare ``__slots__ = ()``: FSDP2 swaps an instance's class for a subclass of
    ``(FSDPModule, cls)``, which needs the instance layout to be ``nn.Module``'s.
    """

    # name, Options, reload_options, saved_files: see BackboneFiles
    Options: ClassVar[type[BackboneOptions]]
    options: BackboneOptions
    #: what method knobs the backbone can honour (checked against a config's ``method:``)
    capabilities: ClassVar[Capabilities]

    #: side in pixels of the images the backbone trains on (synthetic sources render at it).
    image_size: int
    #: (h, w) of the generation tokens the plan indexes.
    token_grid: tuple[int, int]
    #: (h, w) of the hint encoder when it differs from ``token_grid`` (else None).
    hint_grid: tuple[int, int] | None = None
    #: masking-ratio schedule of the backbone (see :mod:`segros.schedules`).
    mask_schedule: str = "cosine"
    #: one masking ratio per batch (MAR encoders drop masked tokens), None = schedule default.
    mask_per_batch: bool | None = None
    #: peft ``target_modules`` LoRA adapts by default (``lora.targets``), inside ``self.model``,
    #: the backbone's transformer; never the input embedding table the grounding reads.
    lora_targets: tuple[str, ...] = ()
    #: the trained network (every adapter has one; LoRA adapts inside it)
    model: nn.Module

    @property
    def num_tokens(self) -> int:
        return self.token_grid[0] * self.token_grid[1]

    @property
    def device(self) -> torch.device:
        """Where the trained network's weights are: prompts and encoded batches go there."""
        return next(self.model.parameters()).device

    # --- data: a CPU part (loader workers) and a device part (the frozen encoders) -------------
    @abstractmethod
    def collate_t2i(self, records: Sequence[Any]) -> T2IBatch:
        """Image-caption records collated into CPU tensors: tokenised captions and the images'
        :meth:`pixel_fields` (or a cache's encodings). Runs in DataLoader workers, so no frozen
        encoder runs here and nothing touches the model's device; the text is fixed-width or
        right-padded to the longest row (:meth:`T2IBatch.cat` relies on it)."""

    @abstractmethod
    def collate_i2t(self, records: Sequence[Any]) -> I2TBatch:
        """Image-question-answer records collated into CPU tensors, as :meth:`collate_t2i`; images
        the frozen encoders still have to read go in ``extras["images"]``."""

    def encode_t2i(self, batch: T2IBatch) -> T2IBatch:
        """The device part: what the frozen encoders compute from ``batch.images`` (:meth:`encode_pixels`,
        e.g. codes) added to ``extras``, on the batch's device. A batch from a cache (no images) is
        already encoded."""
        if batch.images is None:
            return batch
        fields = self.encode_pixels({"images": batch.images, **batch.extras})
        fields.pop("images")
        return batch.replace(extras=fields)

    def encode_i2t(self, batch: I2TBatch) -> I2TBatch:
        """The device part of an I2T batch: :meth:`encode_pixels` of ``extras["images"]``, which
        it replaces (an adapter whose encoders run in the forward leaves no ``images`` there)."""
        if "images" not in batch.extras:
            return batch
        fields = self.encode_pixels(dict(batch.extras))
        fields.pop("images")
        return batch.replace(extras=fields)

    def prepare_t2i(self, records: Sequence[Any]) -> T2IBatch:
        """:meth:`collate_t2i` then :meth:`encode_t2i`: the batch a step trains on, in one call."""
        return self.encode_t2i(self.collate_t2i(records))

    def prepare_i2t(self, records: Sequence[Any]) -> I2TBatch:
        """:meth:`collate_i2t` then :meth:`encode_i2t`."""
        return self.encode_i2t(self.collate_i2t(records))

    def t2i_batch(
        self,
        records: Sequence[Any],
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        caption_mask: torch.Tensor,
        caption_stopword: torch.Tensor | None = None,
    ) -> T2IBatch:
        """A :class:`T2IBatch` of tokenised captions and the records' :meth:`t2i_image_fields`
        (the display images to ``images``, the pixel transforms or cached encodings to ``extras``)."""
        fields = dict(self.t2i_image_fields(records))
        return T2IBatch(
            captions=[r.caption for r in records],
            text_ids=text_ids,
            text_mask=text_mask,
            caption_mask=caption_mask,
            images=fields.pop("images", None),
            caption_stopword=caption_stopword,
            extras=fields,
        )

    # --- the SeGroS seam --------------------------------------------------------------------
    @abstractmethod
    def grounding_inputs(self, batch: T2IBatch) -> GroundingInputs:
        """Text and image-token embeddings from before the transformer (no gradient needed)."""

    @abstractmethod
    def hint_embeddings(self, batch: T2IBatch, hint_idx: torch.Tensor) -> torch.Tensor:
        """(B, K, D) embeddings of the hints at ``hint_idx`` (on ``hint_grid`` if set)."""

    def plan_hints(self, batch: T2IBatch, plan: SupervisionPlan) -> PlanHints | None:
        """The plan's visual hints (:meth:`hint_embeddings` at its positions, their numbering and
        dropout) as the adapter's conditioning call takes them; None when the plan has none. The
        only way a reconstruction gets its hints."""
        if not plan.num_hints:
            return None
        embeddings = self.hint_embeddings(batch, plan.hint_idx)
        return PlanHints(embeddings, plan.hint_idx, plan.hint_position, plan.hint_valid())

    @abstractmethod
    def reconstruction_loss(self, batch: T2IBatch, plan: SupervisionPlan) -> torch.Tensor:
        """The native reconstruction loss on the plan's targets (Eq. 13's first term), conditioned
        on :meth:`condition`."""

    @abstractmethod
    def i2t_loss(self, batch: I2TBatch) -> torch.Tensor:
        """Next-token NLL of the answer tokens (Eq. 2)."""

    # --- inference ---------------------------------------------------------------------------
    @abstractmethod
    def generate_tokens(
        self,
        prompts: Sequence[str],
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Image tokens (codes or latents) for the prompts by the backbone's own decoding, seeded
        by ``generator``; ``None`` takes the backbone's default guidance and step count."""

    @abstractmethod
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 images, on the CPU, from :meth:`generate_tokens`' output."""

    def generate(
        self,
        prompts: Sequence[str],
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """(B, H, W, 3) uint8 images for the prompts."""
        return self.decode_tokens(self.generate_tokens(prompts, generator, guidance_scale, steps))

    # --- the single entry point wrappers see ---------------------------------------------------
    def forward(
        self,
        batch: T2IBatch,
        plan: SupervisionPlan | None = None,
        i2t: I2TBatch | None = None,
        mode: str = "loss",
    ) -> GroundingInputs | dict[str, torch.Tensor]:
        """``mode="ground"`` returns :class:`GroundingInputs`; ``"loss"`` returns loss terms."""
        if mode == "ground":
            return self.grounding_inputs(batch)
        if mode != "loss":
            raise ValueError(f"mode must be 'ground' or 'loss', got {mode!r}")
        if plan is None:
            raise ValueError("a supervision plan is required for mode='loss'")
        terms = {"recon": self.reconstruction_loss(batch, plan)}
        if i2t is not None:
            terms["i2t"] = self.i2t_loss(i2t)
        return terms
