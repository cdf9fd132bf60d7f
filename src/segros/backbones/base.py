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

What an adapter must provide (besides the class attributes and the storage hooks below):

- ``grounding_inputs``: caption-token embeddings from the input embedding table, a mask that
  is True only on caption tokens (never padding, BOS/EOS or template tokens), and image-token
  embeddings in the same space, all from *before* the transformer (docs/design.md).
- ``hint_embeddings``: embeddings of the hint tokens at the plan's positions; they may come
  from another encoder and grid (``hint_grid``), as Show-o's CLIP path does.
- ``reconstruction_loss``: the backbone's native loss on the plan's targets, with the hints
  prepended in the Fig. 6 layout and ``plan.text_condition`` honoured.
- ``i2t_loss``: next-token NLL of answers given image and question (Eq. 2).
- ``generate_tokens`` / ``decode_tokens``: image tokens from prompts, seeded, and their pixels
  (``generate`` chains them, for evaluation).
- ``empty_prompt`` / ``pad_id``: the caption-less prompt; caption dropout, RecA's condition and
  the guidance pair are built from it here (``condition``, ``with_empty_prompt``).
- ``build`` / ``architecture`` / ``save_components`` / ``from_saved``: the adapter's parts of
  ``from_options``, ``save_pretrained`` and ``from_pretrained``, whose skeleton is here.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import nn

from segros.plan import SupervisionPlan

# Image fields of a batch by name, as encode_images returns them ("images", the display pixels,
# and the backbone's own encodings); the cache stores them.
ImageFields = dict[str, torch.Tensor]


class _BatchMethods:
    """``len``, ``to(device)`` and ``replace`` for the batch dataclasses."""

    def __len__(self) -> int:
        return int(self.text_ids.shape[0])

    def to(self, device: torch.device | str) -> Any:
        """A copy with every tensor (extras and memo included) on ``device``."""

        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            is_dict = isinstance(value, dict)
            changes[f.name] = {k: move(v) for k, v in value.items()} if is_dict else move(value)
        return dataclasses.replace(self, **changes)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes``: ``extras`` is copied (so the copy may change it) and ``memo``
        starts empty (what the backbone derived from the old fields may not hold for the new)."""
        return dataclasses.replace(self, **{"extras": dict(self.extras), "memo": {}, **changes})

    @classmethod
    def cat(cls, parts: Sequence[tuple[Any, slice]], pad_id: int) -> Any:
        """The batch of the rows ``parts`` select (``(batch, rows)`` pairs), as the collate function
        would have made it from those records alone: every tensor (``extras`` too) is concatenated
        along the batch dimension, and the text fields (:attr:`text_fields`) are cut or right-padded
        (``pad_id``, masks False) to the width of the longest selected row. Text must be fixed-width
        or right-padded, as :meth:`Backbone.collate_t2i` promises. The loader builds its batches so
        from the collated chunks its workers send (:mod:`segros.data.loader`)."""
        rows = [(batch, sl) for batch, sl in parts if sl.stop > sl.start]
        if not rows:
            raise ValueError("no rows to concatenate")
        if any(batch.memo for batch, _ in rows):
            raise ValueError("cannot concatenate batches that hold memo (derived on the device)")
        width = max(int(_row_widths(batch.text_mask[sl]).max()) for batch, sl in rows)

        def text(value: torch.Tensor, pad: int | bool) -> torch.Tensor:
            value = value[:, :width]
            return F.pad(value, (0, width - value.shape[1]), value=pad) if value.shape[1] < width else value

        def join(name: str, values: list[Any]) -> Any:
            first = values[0]
            if first is None:
                if any(v is not None for v in values):
                    raise ValueError(f"field {name!r} is set in some parts only")
                return None
            if isinstance(first, torch.Tensor):
                if name in cls.text_fields:
                    pad = pad_id if first.dtype != torch.bool else False
                    values = [text(v, pad) for v in values]
                return torch.cat(values)
            if isinstance(first, list):
                return [x for v in values for x in v]
            if isinstance(first, dict):
                return {k: join(f"{name}.{k}", [v[k] for v in values]) for k in first}
            raise TypeError(f"cannot concatenate field {name!r} of type {type(first).__name__}")

        out = {}
        for f in dataclasses.fields(cls):
            if f.name == "memo":
                out[f.name] = {}
                continue
            sliced = [_rows_of(getattr(batch, f.name), sl) for batch, sl in rows]
            out[f.name] = join(f.name, sliced)
        return cls(**out)


@dataclass
class T2IBatch(_BatchMethods):
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
class I2TBatch(_BatchMethods):
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
    # build() reads: an upstream release (hub id or folder); None: random initialisation
    init_from: str | None = None
    # probability that a training caption is replaced by the empty prompt, so the model learns the
    # unconditional branch of classifier-free guidance (Show-o's cond_dropout_prob)
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)


def saved_config(folder: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a folder :meth:`Backbone.save_pretrained` wrote (it names its backbone),
    or None for anything else (a hub id, an upstream release folder, a missing path)."""
    file = Path(folder).expanduser() / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None
    return config if isinstance(config, dict) and "backbone" in config else None


def plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as safetensors stores it: contiguous CPU tensors, where a tensor sharing
    storage with an earlier one (a tied output head) becomes a copy of its own."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone().contiguous() if key in seen else v.contiguous()
        seen.add(key)
    return out


WEIGHTS_INDEX = "model.safetensors.index.json"


def _sharded(folder: Path, name: str) -> bool:
    return name == "model.safetensors" and (folder / WEIGHTS_INDEX).is_file()


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The state dict a folder holds: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` lists (``segros export --format hub``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / WEIGHTS_INDEX
    if not (folder / "model.safetensors").is_file() and index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state |= load_file(str(folder / shard))
        return state
    return load_file(str(folder / "model.safetensors"))


def _rows_of(value: Any, rows: slice) -> Any:
    """``rows`` of a batch field: a tensor's or list's, each value's of a dict; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: v[rows] for k, v in value.items()}
    return value[rows]


def _row_widths(mask: torch.Tensor) -> torch.Tensor:
    """(B,) the width of each row of a text mask up to its last real token (right padding dropped;
    a fixed-width, left-padded row ends in a real token, so it keeps its full width)."""
    cols = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * cols).amax(1)


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


class Backbone(nn.Module, ABC):
    """Base class of every UMM adapter (tiny, Show-o, Harmon, OpenUni, ...)."""

    #: the registry name (``model.name``), written as ``backbone`` into a saved ``config.json``
    name: ClassVar[str]
    #: the pydantic schema of the config's ``model:`` section
    Options: ClassVar[type[BackboneOptions]]
    #: options that only change how a loaded model runs: a config's values replace a saved
    #: checkpoint's when ``init_from`` reloads it (every other option is the checkpoint's)
    reload_options: ClassVar[frozenset[str]] = frozenset({"caption_dropout"})
    #: what a folder :meth:`save_pretrained` wrote holds besides ``config.json``
    saved_files: ClassVar[tuple[str, ...]] = ("model.safetensors",)

    options: BackboneOptions

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
    #: the side prompts are padded on (Show-o left-pads its fixed-width prompt)
    prompt_padding: ClassVar[str] = "right"
    #: class names of the repeated transformer blocks the adapter defines itself; the blocks of
    #: Hugging Face and diffusers submodels are found through their ``_no_split_modules``
    block_classes: ClassVar[tuple[str, ...]] = ()

    @property
    def num_tokens(self) -> int:
        return self.token_grid[0] * self.token_grid[1]

    @property
    def caption_dropout(self) -> float:
        """Probability of replacing a caption by the empty prompt (classifier-free guidance)."""
        return self.options.caption_dropout

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated transformer blocks that hold trainable parameters, outermost only, in
        module order: the unit ``run.compile`` compiles one by one (as torchtune does) and FSDP
        wraps. Frozen towers (a VAE, a frozen LLM) are left out."""
        names = set(self.block_classes)
        for module in self.modules():
            names.update(getattr(module, "_no_split_modules", None) or ())
        blocks: list[nn.Module] = []
        inside: list[str] = []  # prefixes of the blocks already taken
        for path, module in self.named_modules():
            if type(module).__name__ not in names or any(path.startswith(p) for p in inside):
                continue
            if any(param.requires_grad for param in module.parameters()):
                blocks.append(module)
                inside.append(path + ".")
        # repeated: a class seen once (diffusers lists SANA's patch embedding too) is no block stack
        kinds = Counter(type(b) for b in blocks)
        return [b for b in blocks if kinds[type(b)] > 1]

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: BackboneOptions) -> Backbone:
        """The backbone a config's ``model:`` section asks for: a segros folder ``init_from`` names,
        reloaded with the config's :attr:`reload_options`, else :meth:`build`."""
        if options.init_from and saved_config(options.init_from) is not None:
            runtime = options.model_dump(include=set(cls.reload_options))
            return cls.from_pretrained(options.init_from, **runtime)
        return cls.build(options)

    @classmethod
    @abstractmethod
    def build(cls, options: BackboneOptions) -> Backbone:
        """Random weights (``init_from`` None) or the upstream release ``init_from`` names."""

    @classmethod
    def refused_method_knobs(cls, method: BaseModel) -> dict[str, str]:
        """Keys of a config's ``method:`` section (the validated section) that this backbone cannot
        honour, each with the reason: a config setting one stops when it is read instead of
        training with a knob that silently does nothing. None by default."""
        return {}

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

    # --- image encoding and the pre-encoded cache (segros cache, segros.data.cache) ------------
    def pixel_fields(self, images: Sequence[Any]) -> ImageFields:
        """The CPU part of image preparation: ``"images"`` (B, H, W, 3) uint8 at the model's size
        (the display pixels, and what :meth:`encode_pixels` reads) and any other pixel transform
        the model reads (Show-o's CLIP input, Harmon's [-1, 1] pixels). Runs in loader workers."""
        raise NotImplementedError(f"{type(self).__name__} does not support the image cache")

    def encode_pixels(self, fields: ImageFields) -> ImageFields:
        """The device part: ``fields`` plus what the frozen encoders compute from them (codes), on
        the device of ``fields["images"]``. None by default (encoders that run in the forward)."""
        return fields

    def encode_images(self, images: Sequence[Any]) -> ImageFields:
        """The image fields of a t2i batch from PIL images: :meth:`encode_pixels` of
        :meth:`pixel_fields` (frozen encoders only)."""
        return self.encode_pixels(self.pixel_fields(images))

    def cache_fields(self, images: Sequence[Any]) -> ImageFields:
        """What ``segros cache`` stores per image: :meth:`encode_images` without the display
        images (``"images"``); a backbone whose encoder runs in the forward stores its output."""
        return {k: v for k, v in self.encode_images(images).items() if k != "images"}

    def image_encoders(self) -> dict[str, Any]:
        """The frozen image encoder(s) behind :meth:`cache_fields` (modules or tensors), by name:
        their weights are the cache's identity."""
        raise NotImplementedError(f"{type(self).__name__} does not support the image cache")

    def t2i_image_fields(self, records: Sequence[Any]) -> ImageFields:
        """:meth:`pixel_fields` of the records' images, or their pre-encoded fields (records from
        a cache carry ``cached``)."""
        cached = [getattr(r, "cached", None) for r in records]
        if cached and all(c is not None for c in cached):
            return {k: torch.stack([c[k] for c in cached]) for k in cached[0]}
        return self.pixel_fields([r.image for r in records])

    # --- the prompt a reconstruction is conditioned on ---------------------------------------
    @property
    @abstractmethod
    def pad_id(self) -> int:
        """The token id prompts are padded with."""

    @abstractmethod
    def empty_prompt(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of the prompt without a caption, at its own width: what a dropped caption
        becomes, RecA's condition, and the unconditional branch of classifier-free guidance."""

    def fit_prompt(
        self, ids: torch.Tensor, mask: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids and mask padded to ``width`` on :attr:`prompt_padding`'s side."""
        extra = width - ids.shape[1]
        if extra <= 0:
            return ids, mask
        pad = (extra, 0) if self.prompt_padding == "left" else (0, extra)
        return F.pad(ids, pad, value=self.pad_id), F.pad(mask, pad, value=False)

    def with_empty_prompt(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[prompts; empty prompts]`` (2B rows) at one width, for classifier-free guidance."""
        empty_ids, empty_mask = self.empty_prompt(ids.shape[0], ids.device)
        width = max(ids.shape[1], empty_ids.shape[1])
        ids, mask = self.fit_prompt(ids, mask, width)
        empty_ids, empty_mask = self.fit_prompt(empty_ids, empty_mask, width)
        return torch.cat([ids, empty_ids]), torch.cat([mask, empty_mask])

    def condition(self, batch: T2IBatch, text_condition: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt (ids, mask) a reconstruction is conditioned on: the captions, the empty
        prompt where ``batch.drop_caption`` is set, or the empty prompt for every sample when
        ``text_condition`` is False (RecA, Table 9)."""
        ids, mask = batch.text_ids, batch.text_mask
        empty_ids, empty_mask = self.empty_prompt(ids.shape[0], ids.device)
        if not text_condition:
            return empty_ids, empty_mask
        drop = batch.drop_caption
        if drop is None or not bool(drop.any()):
            return ids, mask
        width = max(ids.shape[1], empty_ids.shape[1])
        ids, mask = self.fit_prompt(ids, mask, width)
        empty_ids, empty_mask = self.fit_prompt(empty_ids, empty_mask, width)
        drop = drop.to(ids.device).unsqueeze(1)
        return torch.where(drop, empty_ids, ids), torch.where(drop, empty_mask, mask)

    def drop_captions(self, batch: T2IBatch, generator: torch.Generator | None) -> T2IBatch:
        """Draw ``batch.drop_caption``: each caption replaced by the empty prompt with probability
        :attr:`caption_dropout`, so the model learns the unconditional branch of guidance."""
        drop = torch.rand(len(batch), generator=generator) < self.caption_dropout
        batch.drop_caption = drop.to(batch.text_ids.device)
        return batch

    # --- the SeGroS seam --------------------------------------------------------------------
    @abstractmethod
    def grounding_inputs(self, batch: T2IBatch) -> GroundingInputs:
        """Text and image-token embeddings from before the transformer (no gradient needed)."""

    @abstractmethod
    def hint_embeddings(self, batch: T2IBatch, hint_idx: torch.Tensor) -> torch.Tensor:
        """(B, K, D) embeddings of the hints at ``hint_idx`` (on ``hint_grid`` if set)."""

    def plan_hints(self, batch: T2IBatch, plan: SupervisionPlan) -> dict[str, Any]:
        """The plan's visual hints as keyword arguments of a conditioning call: ``hints`` (B, K, D)
        and ``hint_idx`` (both None when the plan has none), ``hint_position`` and ``hint_valid``."""
        given = bool(plan.num_hints)
        return {
            "hints": self.hint_embeddings(batch, plan.hint_idx) if given else None,
            "hint_idx": plan.hint_idx if given else None,
            "hint_position": plan.hint_position,
            "hint_valid": plan.hint_valid(),
        }

    @abstractmethod
    def reconstruction_loss(self, batch: T2IBatch, plan: SupervisionPlan) -> torch.Tensor:
        """The native reconstruction loss on the plan's targets (Eq. 13's first term), conditioned
        on :meth:`condition`."""

    @abstractmethod
    def i2t_loss(self, batch: I2TBatch) -> torch.Tensor:
        """Next-token NLL of the answer tokens (Eq. 2)."""

    # --- inference and storage ---------------------------------------------------------------
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

    # --- storage: config.json names the backbone, its architecture and options ------------------
    def save_pretrained(
        self,
        path: str | Path,
        max_shard_size: int | str | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write ``model.safetensors`` (the module's state dict, or ``state_dict``: the full one a
        sharded engine gathered), :meth:`save_components` and, last, ``config.json``
        (``backbone``, :meth:`architecture`, ``options``) to ``path``. With ``max_shard_size`` the
        weights are cut into ``model-0000k-of-0000n.safetensors`` shards with a
        ``model.safetensors.index.json`` (huggingface_hub's layout, as the Hub serves it)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = plain_state(self.state_dict() if state_dict is None else state_dict)
        if max_shard_size is None:
            save_file(state, str(path / "model.safetensors"))
        else:
            from huggingface_hub import save_torch_state_dict

            save_torch_state_dict(state, str(path), max_shard_size=max_shard_size)
        self.save_components(path)
        config = {"backbone": self.name, **self.architecture(), "options": self.options.model_dump()}
        (path / "config.json").write_text(json.dumps(config, indent=2))

    def save_components(self, path: Path) -> None:
        """Files a reload needs besides the weights and config (tokenizers, a VAE kept outside the
        module tree); none by default."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """The ``config.json`` entries (besides backbone and options) :meth:`from_saved` rebuilds
        the modules from."""

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> Backbone:
        """Load a folder :meth:`save_pretrained` wrote, ``overrides`` replacing saved options; a
        path that is no such folder goes to :meth:`from_options` as ``init_from`` (an upstream
        release, for the backbones that read one)."""
        folder = Path(path).expanduser()
        config = saved_config(folder)
        if config is None:
            return cls.from_options(cls.Options(**{**overrides, "init_from": str(path)}))
        if config["backbone"] != cls.name:
            raise ValueError(f"{folder} holds a {config['backbone']!r} checkpoint, not {cls.name}")
        missing = [f for f in cls.saved_files if not (folder / f).exists() and not _sharded(folder, f)]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a complete {cls.name} checkpoint: missing {', '.join(missing)}"
            )
        unknown = sorted(set(config["options"]) - set(cls.Options.model_fields))
        if unknown:  # e.g. an option renamed since (docs/design.md lists the renames)
            raise ValueError(
                f"{folder / 'config.json'} has options the {cls.name} backbone does not know: "
                f"{', '.join(unknown)} (saved by an older segros? docs/design.md, 'Saved option names', "
                "lists the renamed ones: rename them in that file)"
            )
        options = cls.Options(**{**config["options"], **overrides, "init_from": None})
        return cls.from_saved(folder, config, options)

    @classmethod
    @abstractmethod
    def from_saved(cls, folder: Path, config: dict[str, Any], options: BackboneOptions) -> Backbone:
        """The backbone rebuilt from a saved ``config.json`` (with ``options`` already merged), its
        weights loaded from ``folder``."""

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
