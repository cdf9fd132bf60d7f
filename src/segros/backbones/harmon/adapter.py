"""Harmon behind the backbone protocol: grounding, SeGroS plans, DiffLoss, I2T, generation, storage.

How the plan maps onto Harmon (paper Sec. 3, Fig. 6, appendix 11.0.2):

- Grounding embeddings: Qwen's input embeddings of the caption tokens, and for image tokens the
  MAR encoder's output on the *clean* image (all tokens visible) projected by ``proj_in`` into the
  LLM space, buffers excluded. Computed once per batch without gradient (MAR dropout off) and
  cached in the batch; the hints are the same features at ``plan.hint_idx``, so **no gradient
  flows into the hints** (as RecA feeds its dense visual prompt, a fixed condition).
- Corrupted input: the plan's ``seen`` tokens stay visible; the MAR encoder drops the rest, which
  needs equal visible counts per sample (the ``truncnorm`` schedule draws one ratio per batch;
  unequal counts raise). The plan masks ``floor(gamma N)`` tokens where upstream's
  ``random_masking`` masks ``ceil(gamma N)``: at N = 1024 and gamma in [0.7, 1] that is at most one
  token more visible, and gamma = 1 masks everything in both.
- Sequence: ``[hints | text | visible tokens + buffers]`` through Qwen with the Fig. 6 mask from
  :func:`segros.sequence.pack_layout`. Text and image keep exactly their generation-time position
  ids; the hints are numbered by ``plan.hint_position``: ``prefix`` (default) gives hint ``k`` of K
  the id ``k - K`` (``-K .. -1``, which Qwen's rotary embedding takes as it is: only differences
  matter), so the LLM position tells a hint's order, not its slot; ``slot`` (an ablation) gives each
  hint the id its image slot has when the whole image is visible (text length + grid index). The
  hint *features* carry their slot either way: they come out of the MAR encoder, which adds its own
  learned position table. ``plan.hint_valid()`` (``method.hint_prob``) turns a sample's dropped hints
  into padding nobody attends to. Within the image part, ``image_attention``
  ``causal`` (default) keeps Harmon's own causal attention among image tokens, with which the
  released weights were trained (buffers sit at the end so they see every visible token);
  ``full`` makes the image block bidirectional as Fig. 6 draws it. Generation uses the same rule.
- Loss (Eq. 17): residual ``x_enc + proj_out(z_llm)`` -> MAR decoder -> DiffLoss at the plan's
  targets only, weighted by ``plan.loss_weight`` (drop-loss: 0 on non-target masked tokens), each
  target repeated ``diffusion_batch_mul`` times with its own timestep and noise.
- I2T (Eq. 2): Harmon's understanding layout, ``<image>`` expanded to all tokens + buffers inside
  the chat template, plain causal attention, gradient into the visual features scaled by 0.1;
  NLL on the answer of the first LLaVA turn.
- Images: T2I images are centre-cropped to a square and resized (upstream crops a random square,
  ``crop2square``); I2T images are padded to a square with grey as upstream.
- Generation: MAR iterative decoding (random order, cosine schedule), CFG against the prompt
  ``Generate an image.`` (``guidance_scale`` 1 = none, as upstream's ``cfg``), DiffLoss sampling with
  temperature, every draw from the given ``torch.Generator``.

The VAE is held outside the module tree, as upstream keeps ``vae.*`` out of its state dict: the
backbone's state dict is exactly the Harmon model's (``model.llm.*``, ``model.mar.*``,
``model.proj_*``), and the VAE moves with ``.to()`` through ``_apply``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

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
from segros.backbones.files import load_weights, plain_state
from segros.backbones.harmon import text as T
from segros.backbones.harmon import weights as W
from segros.backbones.harmon.diffloss import diffusion_loss
from segros.backbones.harmon.mar import check_equal_visible, mask_by_order, random_orders
from segros.backbones.harmon.model import Harmon, HarmonConfig, scale_gradient
from segros.backbones.harmon.vae import AutoencoderKL
from segros.backbones.image_cache import ImageFields
from segros.backbones.images import pad_square, square_batch, stack_uint8, to_signed_unit
from segros.data.corpora import CorpusName
from segros.data.corpora import words as corpus_words
from segros.losses import i2t_loss
from segros.plan import SupervisionPlan
from segros.sequence import IMAGE, pack_layout


class HarmonOptions(BackboneOptions):
    """The ``model:`` section of a config for Harmon (``init_from``: a segros folder, or a folder /
    hub id with the upstream release, wusize/harmon; None: random weights, tiny smoke runs)."""

    name: Literal["harmon"] = "harmon"
    size: Literal["0.5b", "1.5b", "tiny"] = "0.5b"
    checkpoint_file: str | None = None  # in init_from; default harmon_{size}.pth (e.g. harmon_1.5b-o.pth)
    vae: str | None = None  # folder / hub id with kl16.ckpt; default: init_from
    tokenizer: str | None = None  # folder / hub id; default Qwen/Qwen2.5-{size}-Instruct (tiny: built-in)
    # tiny without a tokenizer: the corpus (segros.data.corpora) whose words the built-in one holds
    corpus: CorpusName = "shapes"
    image_size: int = Field(512, ge=32, le=2048)  # Harmon trains and samples at 512 px
    max_text_len: int = Field(128, ge=8, le=4096)
    diffusion_batch_mul: int = Field(4, ge=1, le=64)
    i2t_grad_scale: float = Field(0.1, ge=0.0)  # gradient into visual features from the I2T loss
    image_attention: Literal["causal", "full"] = "causal"
    gradient_checkpointing: bool = False  # activation checkpointing of the LLM, MAR and DiffLoss
    generation_steps: int = Field(64, ge=1, le=1024)
    guidance_scale: float = Field(3.0, ge=0.0)
    cfg_schedule: Literal["constant", "linear"] = "constant"
    temperature: float = Field(1.0, gt=0.0)  # DiffLoss sampling temperature (upstream's name)
    diffusion_steps: int = Field(100, ge=1, le=1000)


# --- images ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


# --- the backbone ---------------------------------------------------------------------------------


class HarmonBackbone(Backbone):
    """Harmon-0.5B / 1.5B (or a tiny random configuration); see the module docstring."""

    name = "harmon"
    Options = HarmonOptions
    reload_options = frozenset(
        {
            "max_text_len",
            "caption_dropout",
            "diffusion_batch_mul",
            "i2t_grad_scale",
            "image_attention",
            "gradient_checkpointing",
            "generation_steps",
            "guidance_scale",
            "cfg_schedule",
            "temperature",
            "diffusion_steps",
        }
    )
    saved_files = ("model.safetensors", "vae.safetensors", "tokenizer")
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")  # Qwen2 attention
    block_classes = ("Block",)  # the MAR encoder and decoder blocks; Qwen2 names its own
    mask_schedule = "truncnorm"
    mask_per_batch = True
    capabilities = Capabilities(
        masks_tokens=True, trains_image_to_text=True, generation="masked-autoregressive"
    )

    def __init__(self, cfg: HarmonConfig, tokenizer: Any, options: HarmonOptions) -> None:
        super().__init__()
        self.options = options
        self.model = Harmon(cfg)
        # MAR's class table is never used by Harmon (buffers take fake_latent): frozen, so that DDP
        # does not wait for its gradient; it stays in the state dict for the released key set
        self.model.mar.class_emb.requires_grad_(False)
        self.model.mar.grad_checkpointing = options.gradient_checkpointing
        self.model.mar.diffloss.net.grad_checkpointing = options.gradient_checkpointing
        if options.gradient_checkpointing:  # transformers 5 renamed it; the old name warns
            llm = self.model.llm
            getattr(llm, "activation_checkpointing_enable", llm.gradient_checkpointing_enable)()
        self._vae = [AutoencoderKL(cfg.vae).requires_grad_(False).eval()]  # a list: not a submodule
        self.text_tokenizer = tokenizer
        self.image_size = options.image_size
        stride = cfg.vae.stride * cfg.mar.patch_size
        if options.image_size % stride:
            raise ValueError(f"model.image_size must be a multiple of {stride}, got {options.image_size}")
        self.token_grid = (options.image_size // stride, options.image_size // stride)
        self._null_ids = T.encode_null(tokenizer)
        vocab = cfg.llm["vocab_size"]
        if len(tokenizer) > vocab:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM only {vocab} embeddings")

    @property
    def cfg(self) -> HarmonConfig:
        return self.model.cfg

    @property
    def vae(self) -> AutoencoderKL:
        return self._vae[0]

    def _apply(self, fn: Any, recurse: bool = True) -> HarmonBackbone:  # moves/casts the VAE along
        super()._apply(fn, recurse)
        self._vae[0]._apply(fn, recurse)
        return self

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def build(cls, options: HarmonOptions) -> HarmonBackbone:
        """Random weights of ``size``."""
        return cls(HarmonConfig.for_size(options.size), _tokenizer(options), options)

    @classmethod
    def from_upstream(cls, source: str, options: HarmonOptions) -> HarmonBackbone:
        """The released ``harmon_<size>.pth`` in ``source`` (``wusize/harmon`` or a folder) and
        ``kl16.ckpt`` (``model.vae``, default ``source``), both located before anything is built
        (:func:`weights.release_files`), then loaded by :func:`weights.load_release`."""
        tokenizer = _tokenizer(options)
        harmon_pth, kl16_ckpt = W.release_files(source, options.vae, options.checkpoint_file, options.size)
        backbone = cls(HarmonConfig.for_size(options.size), tokenizer, options)
        W.load_release(backbone.model, backbone.vae, harmon_pth, kl16_ckpt)
        return backbone

    # --- data -------------------------------------------------------------------------------------
    def pixel_fields(self, images: Sequence[Any]) -> ImageFields:
        pixels = square_batch(list(images), self.image_size)
        return {"images": pixels, "pixels": to_signed_unit(pixels)}  # the VAE runs in the forward

    def cache_fields(self, images: Sequence[Any]) -> ImageFields:
        """VAE latents (what the MAR encoder, and so the hints, read), not pixels."""
        return {"latents": self.encode_latents(self.encode_images(images)["pixels"]).cpu()}

    def image_encoders(self) -> dict[str, Any]:
        return {"vae": self.vae}

    def collate_t2i(self, records: Sequence[Any]) -> T2IBatch:
        text = T.encode_t2i(self.text_tokenizer, [r.caption for r in records], self.options.max_text_len)
        return self.t2i_batch(records, **text)

    def collate_i2t(self, records: Sequence[Any]) -> I2TBatch:
        """The question, header and answer after the image are ``text_ids``; the constant user
        header before it is ``extras["prefix_ids"]``, the image ``extras["pixels"]``."""
        images = stack_uint8([pad_square(r.image, self.image_size) for r in records])
        # Harmon is trained here on the first question-answer turn of each conversation
        turns = [r.turns[0] for r in records]
        text = T.encode_i2t(self.text_tokenizer, turns, self.options.max_text_len)
        prefix = text["prefix_ids"].expand(len(records), -1)  # one row per sample, as every extra
        extras = {"pixels": to_signed_unit(images), "prefix_ids": prefix}
        return I2TBatch(text["tail_ids"], text["tail_mask"], text["answer_mask"], extras=extras)

    # --- encoders ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, N, 16) scaled posterior means (Harmon encodes with the mode, not a sample)."""
        vae = self.vae
        mean, _ = vae.encode(pixels.to(self.device, next(vae.parameters()).dtype))
        return (mean * self.cfg.vae_scale).flatten(2).transpose(1, 2).float()

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, 16) latents -> (B, H, W, 3) uint8."""
        h, w = self.token_grid
        z = (tokens / self.cfg.vae_scale).transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        x = self.vae.decode(z.to(next(self.vae.parameters()).dtype)).float()
        return (127.5 * x + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def _latents(self, batch: T2IBatch | I2TBatch) -> torch.Tensor:
        """VAE latents: pre-encoded by the cache, else encoded once per batch (memo)."""
        if "latents" in batch.extras:
            return batch.extras["latents"]
        if "latents" not in batch.memo:
            batch.memo["latents"] = self.encode_latents(batch.extras["pixels"])
        return batch.memo["latents"]

    def _clean_features(self, batch: T2IBatch) -> torch.Tensor:
        """(B, N, H): ``proj_in`` of the MAR encoder on the clean image, buffers excluded; no
        gradient, dropout off, computed once per batch (grounding and hints share it)."""
        if "clean_features" not in batch.memo:
            x = self._latents(batch)
            with torch.no_grad(), _eval_mode(self.model):
                visible = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
                _, z_enc = self.model.visual_features(x, visible, self.token_grid)
            batch.memo["clean_features"] = z_enc[:, : x.shape[1]]
        return batch.memo["clean_features"]

    # --- the SeGroS seam --------------------------------------------------------------------------
    def grounding_inputs(self, batch: T2IBatch) -> GroundingInputs:
        with torch.no_grad():  # detached: checkpointing's input hook marks embeddings requires_grad
            text_emb = self.model.embed_text(batch.text_ids.to(self.device)).detach()
        return GroundingInputs.of_batch(batch, text_emb, self._clean_features(batch))

    def hint_embeddings(self, batch: T2IBatch, hint_idx: torch.Tensor) -> torch.Tensor:
        feats = self._clean_features(batch)
        return gather_tokens(feats, hint_idx)

    @property
    def pad_id(self) -> int:
        return T.pad_id(self.text_tokenizer)

    def empty_prompt(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Harmon's classifier-free-guidance prompt, ``Generate an image.`` in the chat template."""
        ids = torch.tensor(self._null_ids, device=device).expand(batch_size, -1)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def _allowed(self, layout: Any) -> torch.Tensor:
        """The Fig. 6 mask, with Harmon's causal attention among image tokens unless ``full``."""
        if self.options.image_attention == "full":
            return layout.allowed
        S = layout.segment.shape[0]
        image = layout.segment == IMAGE
        idx = torch.arange(S, device=image.device)
        future = image.view(S, 1) & image.view(1, S) & (idx.view(1, S) > idx.view(S, 1))
        return layout.allowed & ~future

    def _denoiser_condition(
        self,
        x: torch.Tensor,
        masked: torch.Tensor,
        ids: torch.Tensor,
        text_mask: torch.Tensor,
        hints: PlanHints | None = None,
    ) -> torch.Tensor:
        """MAR decoder output (B, N, D) for latents ``x`` with ``masked`` tokens hidden, after
        ``[hints | text | visible + buffers]`` went through the LLM (Fig. 6); ``hints`` from
        :meth:`plan_hints` (None: generation)."""
        x_enc, z_enc = self.model.visual_features(x, masked, self.token_grid)
        layout = hinted_layout(hints, text_mask, z_enc.shape[1])
        text = self.model.embed_text(ids)
        parts = [text, z_enc.to(text.dtype)]
        if hints is not None:
            parts.insert(0, hints.embeddings.to(text.dtype))
        hidden = self.model.llm_hidden(torch.cat(parts, dim=1), self._allowed(layout), layout.position_ids)
        x_dec = self.model.decoder_input(x_enc, hidden[:, layout.image])
        return self.model.mar.forward_mae_decoder(x_dec, masked, self.token_grid)

    def reconstruction_loss(self, batch: T2IBatch, plan: SupervisionPlan) -> torch.Tensor:
        x = self._latents(batch)
        masked = ~plan.seen
        check_equal_visible(masked)
        ids, text_mask = self.condition(batch, plan.text_condition)
        z = self._denoiser_condition(x, masked, ids, text_mask, self.plan_hints(batch, plan))
        return diffusion_loss(
            self.model.mar.diffloss, z, x, plan.loss_weight, self.options.diffusion_batch_mul
        )

    def i2t_loss(self, batch: I2TBatch) -> torch.Tensor:
        x = self._latents(batch)
        B, device = x.shape[0], x.device
        visible = torch.zeros(x.shape[:2], dtype=torch.bool, device=device)
        _, z_enc = self.model.visual_features(x, visible, self.token_grid)
        z_enc = scale_gradient(z_enc, self.options.i2t_grad_scale)
        prefix = batch.extras["prefix_ids"][0].to(device)  # the same header on every row
        tail, tail_mask = batch.text_ids.to(device), batch.text_mask.to(device)
        embeds = torch.cat(
            [
                self.model.embed_text(prefix).expand(B, -1, -1),
                z_enc.to(self.model.llm.dtype),
                self.model.embed_text(tail),
            ],
            dim=1,
        )
        start = prefix.shape[0] + z_enc.shape[1]
        full_mask = torch.cat([torch.ones(B, start, dtype=torch.bool, device=device), tail_mask], dim=1)
        layout = pack_layout(0, full_mask, 0)  # causal with right padding: Harmon's understanding path
        hidden = self.model.llm_hidden(embeds, layout.allowed, layout.position_ids)
        logits = self.model.llm.lm_head(hidden[:, start:])
        return i2t_loss(logits, tail, batch.answer_mask.to(device))  # Eq. 2

    # --- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_tokens(
        self,
        prompts: Sequence[str],
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """MAR decoding (upstream ``Harmon.sample``): each step predicts the masked tokens, samples
        the ones the cosine schedule unmasks next (in a random order) with DiffLoss, and keeps them."""
        o = self.options
        cfg = o.guidance_scale if guidance_scale is None else guidance_scale
        steps = steps or o.generation_steps
        device, B, N = self.device, len(prompts), self.num_tokens
        self.model.mar.diffloss.set_sampling_steps(o.diffusion_steps)
        text = T.encode_t2i(self.text_tokenizer, list(prompts), o.max_text_len)
        ids, tmask = text["text_ids"].to(device), text["text_mask"].to(device)
        guided = cfg != 1.0
        if guided:
            ids, tmask = self.with_empty_prompt(ids, tmask)
        copies = 2 if guided else 1
        orders = random_orders(B, N, generator).to(device)
        tokens = torch.zeros(B, N, self.cfg.mar.vae_embed_dim, device=device)
        masked = torch.ones(B, N, dtype=torch.bool, device=device)
        with _eval_mode(self):
            for step in range(steps):
                z = self._denoiser_condition(
                    tokens.repeat(copies, 1, 1), masked.repeat(copies, 1), ids, tmask
                )
                remaining = int(masked[0].sum())
                mask_len = math.floor(N * math.cos(math.pi / 2 * (step + 1) / steps))
                mask_len = max(1, min(remaining - 1, mask_len))
                masked_next = mask_by_order(mask_len, orders)
                to_pred = masked if step == steps - 1 else masked & ~masked_next
                if bool(to_pred.any()):
                    cond = z[:B][to_pred]
                    rows = torch.cat([cond, z[B:][to_pred]]) if guided else cond
                    cfg_iter = cfg if o.cfg_schedule == "constant" else 1 + (cfg - 1) * (N - mask_len) / N
                    sampled = self.model.mar.diffloss.sample(rows, o.temperature, cfg_iter, generator)
                    tokens[to_pred] = sampled[: cond.shape[0]].to(tokens.dtype)
                masked = masked_next if step < steps - 1 else torch.zeros_like(masked)
        return tokens

    # --- storage --------------------------------------------------------------------------------
    # model.safetensors is this module's state dict (a tied lm_head stored as a copy); the VAE,
    # outside the module tree, goes to vae.safetensors, the tokenizer to tokenizer/.
    def architecture(self) -> dict[str, Any]:
        return {"model": self.cfg.to_dict()}

    def save_components(self, path: Path) -> None:
        save_file(plain_state(self.vae.state_dict()), str(path / "vae.safetensors"))
        self.text_tokenizer.save_pretrained(str(path / "tokenizer"))

    @classmethod
    def from_saved(cls, folder: Path, config: dict[str, Any], options: HarmonOptions) -> HarmonBackbone:
        tokenizer = T.load_tokenizer(str(folder / "tokenizer"))
        backbone = cls(HarmonConfig.from_dict(config["model"]), tokenizer, options)
        backbone.load_state_dict(load_weights(folder))
        backbone.vae.load_state_dict(load_file(str(folder / "vae.safetensors")))
        return backbone


def _tokenizer(options: HarmonOptions) -> Any:
    """The Qwen2.5 tokenizer of ``options`` (``model.tokenizer``, default the size's), or for
    ``tiny`` without one the built-in word-level one over the corpus's words."""
    source = options.tokenizer or T.QWEN_TOKENIZERS.get(options.size)
    return T.load_tokenizer(source, options.size, corpus_words(options.corpus))
