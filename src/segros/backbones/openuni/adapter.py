"""OpenUni behind the backbone protocol: grounding, SeGroS plans, flow matching, generation, storage.

OpenUni (docs/upstream/openuni.md) = a frozen InternVL3 MLLM that reads the prompt followed by
learnable queries, a 6-layer encoder connector and a Linear into SANA's caption space, and a SANA
DiT denoising DC-AE latents with flow matching. How the plan maps onto it (paper Sec. 3, Table 7):

- Grounding embeddings: the MLLM's input embeddings of the caption tokens (template, ``<img>`` and
  padding masked out), and the image's understanding tokens as the MLLM sees them: InternViT's
  last layer on the clean image (ImageNet-normalised, bilinear to the ViT size), CLS dropped,
  pixel-shuffled and through the MLLM's projector (``mlp1``). Both live in the LLM's input space
  and come from before the LLM. ``token_grid`` is that understanding grid (16 x 16 at 448 px,
  which at 512 px equals the DC-AE latent grid); there is no separate ``hint_grid``.
- Hints: the plan's understanding tokens (no gradient: the MLLM is frozen), prepended in the
  Fig. 6 layout to the LLM's input: ``[hints | prompt | queries]``. Hints attend among themselves,
  the prompt attends to the hints and causally to itself, the queries to everything before them
  and causally among themselves (as upstream's causal LLM). Prompt and queries keep exactly their
  generation-time position ids; ``hint_position`` numbers the hints (``prefix``: ``-K .. -1``;
  ``slot``: the hint from grid cell ``i`` takes the id of query ``i``, i.e. prompt length + i).
  ``plan.hint_valid()`` turns dropped hints into padding. InternViT features carry their own
  position embedding either way.
- Loss: OpenUni is no masking model. Nothing is corrupted and the loss is upstream's flow matching
  on the whole latent (uniform t, ``x_t = (1 - s) x_0 + s e``, velocity target ``e - x_0``); a
  plan's ``seen``, ``loss_weight`` and ``mask_ratio`` are not read. The config refuses the knobs
  that only set them: its ``capabilities`` say it masks no tokens (:mod:`segros.train.capabilities`).
- The MLLM is always frozen (upstream ``freeze_lmm=True``), so there is no I2T training
  (lambda = 0, Table 7); ``i2t_loss`` is the frozen MLLM's answer NLL, for evaluation only.
- Generation: queries read out for ``[prompts; "Generate an image."]``, DPM-Solver++ (SANA's
  scheduler config) with classifier-free guidance, as upstream's ``SanaPipeline`` call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

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
from segros.backbones.files import load_weights, unwrap
from segros.backbones.image_cache import ImageFields
from segros.backbones.images import crop_square_batch, pad_square, stack_uint8, to_signed_unit
from segros.backbones.openuni import model as A
from segros.backbones.openuni import text as T
from segros.backbones.openuni import weights as W
from segros.data.corpora import CorpusName
from segros.data.corpora import words as corpus_words
from segros.losses import i2t_loss
from segros.plan import SupervisionPlan
from segros.sequence import IMAGE, pack_layout

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # InternViT's input normalisation (upstream vit_mean / vit_std)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ("text2image23m", "blip3o60k")  # upstream's pre-trained / fine-tuned .pth


class OpenUniOptions(BackboneOptions):
    """The ``model:`` section for OpenUni. ``init_from``: a segros folder, or a folder / hub id with
    the upstream ``.pth`` (``wusize/openuni``; also looked up in its ``checkpoints/``); None: random
    weights (``size: tiny`` for smoke runs)."""

    name: Literal["openuni"] = "openuni"
    size: Literal["b-512", "l-512", "tiny"] = "b-512"
    # which upstream .pth: the pre-trained one (RecA's starting point) or the BLIP3o-60k fine-tune
    stage: Literal["text2image23m", "blip3o60k"] = "text2image23m"
    checkpoint_file: str | None = None  # overrides the .pth name of size and stage
    # component folders / hub ids; default: init_from/<repo name> if that folder exists, else the hub id
    mllm: str | None = None
    sana: str | None = None
    vae: str | None = None
    tokenizer: str | None = None  # default: the MLLM's folder; tiny: a built-in word-level one
    # tiny without a tokenizer: the corpus (segros.data.corpora) whose words the built-in one holds
    corpus: CorpusName = "shapes"
    image_size: int = Field(512, ge=32, le=2048)
    max_text_len: int = Field(128, ge=8, le=4096)  # upstream's max_length for T2I prompts
    train_transformer: bool = True  # SANA trained (upstream fine-tuning: freeze_transformer=False)
    gradient_checkpointing: bool = False  # activation checkpointing of the LLM and SANA
    generation_steps: int = Field(20, ge=1, le=1000)  # DPM-Solver steps (upstream num_steps)
    guidance_scale: float = Field(4.5, ge=0.0)  # upstream cfg_scale; <= 1: none (as SanaPipeline)


class OpenUniBackbone(Backbone):
    """OpenUni-B-512 / L-512 (or a tiny random configuration); see the module docstring."""

    name = "openuni"
    Options = OpenUniOptions
    reload_options = frozenset(
        {
            "caption_dropout",
            "max_text_len",
            "train_transformer",
            "gradient_checkpointing",
            "generation_steps",
            "guidance_scale",
        }
    )
    saved_files = ("model.safetensors", "tokenizer")
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")  # SANA's self- and cross-attention
    mask_schedule = "cosine"  # drawn by the trainer, never read: the loss covers the whole latent
    # nothing is masked (flow matching on the whole latent) and the MLLM is frozen (lambda = 0)
    capabilities = Capabilities(masks_tokens=False, trains_image_to_text=False, generation="flow")

    def __init__(self, arch: dict[str, Any], tokenizer: Any, options: OpenUniOptions) -> None:
        from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
        from transformers import InternVLConfig, InternVLForConditionalGeneration, SiglipVisionConfig
        from transformers.models.siglip.modeling_siglip import SiglipEncoder

        super().__init__()
        self.options = options
        self.arch = arch
        self.text_tokenizer = tokenizer
        mllm_cfg = InternVLConfig(**arch["mllm"])
        mllm_cfg.text_config._attn_implementation = "sdpa"
        mllm_cfg.vision_config._attn_implementation = "sdpa"
        self.mllm = InternVLForConditionalGeneration(mllm_cfg).requires_grad_(False).eval()
        H = mllm_cfg.text_config.hidden_size
        if arch["connector"]["hidden_size"] != H:  # upstream's enc_proj asserts the same
            raise ValueError(
                f"the connector width {arch['connector']['hidden_size']} must equal the LLM's {H}"
            )
        conn_cfg = SiglipVisionConfig(**arch["connector"])
        conn_cfg._attn_implementation = "sdpa"
        self.connector = SiglipEncoder(conn_cfg)
        A.init_connector(self.connector)
        self.model = SanaTransformer2DModel.from_config(arch["sana"])  # the trained transformer
        self.projector = nn.Linear(H, self.model.config.caption_channels)
        Q = arch["num_queries"]
        self.meta_queries = nn.Parameter(torch.randn(Q, H) / math.sqrt(H))  # upstream: N(0, 1/sqrt(H))
        self.vae = AutoencoderDC.from_config(arch["vae"]).requires_grad_(False).eval()
        self.train_scheduler = FlowMatchEulerDiscreteScheduler.from_config(A.flow_config(arch["scheduler"]))
        self.model.requires_grad_(options.train_transformer)
        if options.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
            lm = self.mllm.model.language_model
            getattr(lm, "activation_checkpointing_enable", lm.gradient_checkpointing_enable)()

        self.image_size = options.image_size
        stride = A.vae_stride(arch["vae"])
        if options.image_size % stride:
            raise ValueError(f"model.image_size must be a multiple of {stride}, got {options.image_size}")
        self.latent_grid = (options.image_size // stride, options.image_size // stride)
        side = A.vit_grid(arch["mllm"])
        self.token_grid = (side, side)
        self.vit_size = arch["mllm"]["vision_config"]["image_size"]
        self._null_ids = T.encode_null(tokenizer)
        vocab = mllm_cfg.text_config.vocab_size
        if len(tokenizer) > vocab:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM only {vocab} embeddings")

    def train(self, mode: bool = True) -> OpenUniBackbone:
        """The frozen MLLM and VAE stay in eval mode (upstream's ``train`` keeps the VAE in eval)."""
        super().train(mode)
        self.mllm.eval()
        self.vae.eval()
        return self

    @property
    def llm(self) -> nn.Module:
        """The MLLM's language model body (a ``Qwen2Model``: no head), upstream's ``llm.model``."""
        return self.mllm.model.language_model

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def build(cls, options: OpenUniOptions) -> OpenUniBackbone:
        """Random weights of ``size``."""
        tokenizer = T.load_tokenizer(options.tokenizer, options.size, corpus_words(options.corpus))
        return cls(default_architecture(options.size, tokenizer), tokenizer, options)

    @classmethod
    def from_upstream(cls, source: str, options: OpenUniOptions) -> OpenUniBackbone:
        """Build from upstream's files: the ``.pth`` in ``source`` (``wusize/openuni`` or a folder),
        the MLLM folder (original or HF InternVL format), the SANA folder (``transformer/``,
        ``scheduler/``) and the DC-AE folder, each found by :func:`weights.gather`; every missing
        file is named at once, before anything is built."""
        release = A.RELEASES.get(options.size)
        if release is None and not (
            options.mllm and options.sana and options.vae and options.checkpoint_file
        ):
            raise ValueError(
                f"size {options.size!r} has no published release: set model.mllm, model.sana, model.vae "
                "and model.checkpoint_file"
            )
        release = release or {}
        pth = options.checkpoint_file or release["checkpoint"].format(stage=options.stage)
        sources = {
            "init_from": source,
            "mllm": options.mllm or W.locate(source, release.get("mllm", "")),
            "sana": options.sana or W.locate(source, release.get("sana", "")),
            "vae": options.vae or W.locate(source, release.get("vae", "")),
        }
        sources["tokenizer"] = options.tokenizer or sources["mllm"]
        files = W.gather(sources, W.checkpoint_file(source, pth))
        tokenizer = T.load_tokenizer(str(files["tokenizer"]), options.size)
        image_token = int(tokenizer.convert_tokens_to_ids(T.IMG_CONTEXT))
        mllm_config = files["mllm_config"]
        mllm_state = W.read_safetensors(files["mllm_files"])
        if W.is_original_internvl(mllm_state):
            mllm_arch = A.internvl_config(*W.hf_internvl_parts(mllm_config), image_token)
            mllm_state = W.internvl_to_hf(mllm_state)
        else:  # an HF-format copy: its config.json is InternVLConfig's already
            mllm_arch = {k: v for k, v in mllm_config.items() if not k.startswith(("_", "architectures"))}
        template = default_architecture(options.size, tokenizer)
        arch = {
            "mllm": mllm_arch,
            "sana": W.plain_config(files["sana_config"]),
            "vae": W.plain_config(files["vae_config"]),
            "scheduler": W.plain_config(files["scheduler"]),
            "connector": template["connector"],
            "num_queries": template["num_queries"],
        }
        pth_state = unwrap(torch.load(files["pth"], map_location="cpu", weights_only=True), files["pth"])
        if "meta_queries" in pth_state:
            arch["num_queries"] = int(pth_state["meta_queries"].shape[0])
        backbone = cls(arch, tokenizer, options)
        W.load_release(backbone, files, sources, mllm_state, pth_state)
        return backbone

    # --- data -------------------------------------------------------------------------------------
    def pixel_fields(self, images: Sequence[Any]) -> ImageFields:
        pixels = crop_square_batch(list(images), self.image_size)
        return {"images": pixels, "pixels": to_signed_unit(pixels)}  # encoders run in the forward

    def cache_fields(self, images: Sequence[Any]) -> ImageFields:
        """DC-AE latents (the flow-matching target) and understanding tokens (grounding, hints)."""
        pixels = self.encode_images(images)["pixels"]
        return {"latents": self.encode_latents(pixels).cpu(), "vit_embeds": self.understanding(pixels).cpu()}

    def image_encoders(self) -> dict[str, Any]:
        return {"vae": self.vae, "vision_tower": self.mllm.model.vision_tower,
                "projector": self.mllm.model.multi_modal_projector}  # fmt: skip

    def collate_t2i(self, records: Sequence[Any]) -> T2IBatch:
        text = T.encode_t2i(self.text_tokenizer, [r.caption for r in records], self.options.max_text_len)
        return self.t2i_batch(records, **text)

    def collate_i2t(self, records: Sequence[Any]) -> I2TBatch:
        """Question and answer after the image tokens are ``text_ids``; the constant header before
        them ``extras["prefix_ids"]``, the image ``extras["pixels"]`` (padded square, as InternVL)."""
        images = stack_uint8([pad_square(r.image, self.image_size) for r in records])
        text = T.encode_i2t(self.text_tokenizer, [r.turns[0] for r in records], self.options.max_text_len)
        prefix = text["prefix_ids"].expand(len(records), -1)  # one row per sample, as every extra
        extras = {"pixels": to_signed_unit(images), "prefix_ids": prefix}
        return I2TBatch(text["tail_ids"], text["tail_mask"], text["answer_mask"], extras=extras)

    # --- encoders ---------------------------------------------------------------------------------
    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) DC-AE latents times the scaling factor (upstream ``pixels_to_latents``)."""
        z = self.vae.encode(pixels.to(self.device, self._vae_dtype()), return_dict=False)[0]
        return (z * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, H, W, 3) uint8 (upstream ``latents_to_pixels`` and its scripts'
        ``clamp(127.5 x + 128)``)."""
        z = tokens.to(self.device, self._vae_dtype()) / self.vae.config.scaling_factor
        x = self.vae.decode(z, return_dict=False)[0].float()
        return (127.5 * x + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()

    @torch.no_grad()
    def understanding(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, N, H) understanding tokens of [-1, 1] pixels (upstream ``get_semantic_features``):
        [0, 1], ImageNet mean / std, bilinear to the ViT size, InternViT's last layer without CLS,
        pixel shuffle and the MLLM's projector."""
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        x = ((pixels.to(self.device).float() + 1.0) / 2 - mean) / std
        x = F.interpolate(x, size=(self.vit_size, self.vit_size), mode="bilinear")
        out = self.mllm.model.get_image_features(
            pixel_values=x, vision_feature_layer=-1, vision_feature_select_strategy="default"
        )
        return out.pooler_output

    def _latents(self, batch: T2IBatch) -> torch.Tensor:
        if "latents" in batch.extras:
            return batch.extras["latents"].to(self.device)
        if "latents" not in batch.memo:
            batch.memo["latents"] = self.encode_latents(batch.extras["pixels"])
        return batch.memo["latents"]

    def _vit(self, batch: T2IBatch | I2TBatch) -> torch.Tensor:
        if "vit_embeds" in batch.extras:
            return batch.extras["vit_embeds"].to(self.device)
        if "vit_embeds" not in batch.memo:
            batch.memo["vit_embeds"] = self.understanding(batch.extras["pixels"])
        return batch.memo["vit_embeds"]

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids.to(self.device))

    # --- the SeGroS seam --------------------------------------------------------------------------
    def grounding_inputs(self, batch: T2IBatch) -> GroundingInputs:
        with torch.no_grad():
            text_emb = self.embed_text(batch.text_ids).detach()
        return GroundingInputs.of_batch(batch, text_emb, self._vit(batch))

    def hint_embeddings(self, batch: T2IBatch, hint_idx: torch.Tensor) -> torch.Tensor:
        feats = self._vit(batch)
        return gather_tokens(feats, hint_idx)

    @property
    def pad_id(self) -> int:
        return T.PAD_ID

    def empty_prompt(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream's classifier-free-guidance prompt: ``Generate an image.`` in the template + ``<img>``."""
        ids = torch.tensor(self._null_ids, device=device).expand(batch_size, -1)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def caption_states(
        self,
        ids: torch.Tensor,
        text_mask: torch.Tensor,
        hints: PlanHints | None = None,
    ) -> torch.Tensor:
        """(B, Q, caption_channels): the queries read out through the LLM after ``[hints | prompt]``
        (last layer after the final norm, upstream ``last_hidden_state[:, -num_queries:]``), then
        connector and projector (upstream ``llm2dit`` with ``enc_proj``): SANA's caption input.
        ``hints`` from :meth:`plan_hints` (None: generation)."""
        ids, text_mask = ids.to(self.device), text_mask.to(self.device)
        B, Q = ids.shape[0], self.meta_queries.shape[0]
        layout = hinted_layout(hints, text_mask, Q)
        S = layout.segment.shape[0]
        queries = layout.segment == IMAGE
        order = torch.arange(S, device=self.device)
        later = queries.view(S, 1) & queries.view(1, S) & (order.view(1, S) > order.view(S, 1))
        allowed = layout.allowed & ~later  # queries causal among themselves, as in upstream's LLM
        text = self.embed_text(ids)
        parts = [text, self.meta_queries.to(text.dtype).expand(B, -1, -1)]
        if hints is not None:
            parts.insert(0, hints.embeddings.to(text.dtype))
        out = self.llm(
            inputs_embeds=torch.cat(parts, dim=1),
            attention_mask=allowed.unsqueeze(1),
            position_ids=layout.position_ids,
        )
        h = out.last_hidden_state[:, layout.image]
        return self.projector(self.connector(inputs_embeds=h).last_hidden_state)

    def reconstruction_loss(self, batch: T2IBatch, plan: SupervisionPlan) -> torch.Tensor:
        """Upstream's flow-matching loss (``diff_loss``) on the whole latent, conditioned on the
        queries read after ``[hints | prompt]``. The plan's seen / targets are not read."""
        x0 = self._latents(batch)
        ids, text_mask = self.condition(batch, plan.text_condition)
        cond = self.caption_states(ids, text_mask, self.plan_hints(batch, plan))
        return A.flow_matching_loss(self.model, self.train_scheduler, x0, cond)

    def i2t_loss(self, batch: I2TBatch) -> torch.Tensor:
        """NLL of the answer tokens (Eq. 2) by the frozen MLLM: ``<img>`` + image tokens + ``</img>``
        and the question in InternVL's chat format, causal attention. No trainable parameter is
        reached (lambda = 0 on OpenUni); it measures the understanding the MLLM keeps."""
        vit = self._vit(batch)
        B = vit.shape[0]
        prefix = batch.extras["prefix_ids"][0].to(self.device)  # the same header on every row
        tail, tail_mask = batch.text_ids.to(self.device), batch.text_mask.to(self.device)
        embeds = torch.cat(
            [self.embed_text(prefix).expand(B, -1, -1), vit.to(self.llm.dtype), self.embed_text(tail)], dim=1
        )
        start = prefix.shape[0] + vit.shape[1]
        mask = torch.cat([torch.ones(B, start, dtype=torch.bool, device=self.device), tail_mask], dim=1)
        layout = pack_layout(0, mask, 0)  # causal over [header | image | question, answer], right padding
        hidden = self.llm(
            inputs_embeds=embeds, attention_mask=layout.allowed.unsqueeze(1), position_ids=layout.position_ids
        ).last_hidden_state
        logits = self.mllm.lm_head(hidden[:, start:])
        return i2t_loss(logits, tail, batch.answer_mask.to(self.device))

    # --- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_tokens(
        self,
        prompts: Sequence[str],
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """(B, C, h, w) latents by DPM-Solver++ from Gaussian noise drawn with ``generator``; the
        loop of diffusers' ``SanaPipeline`` upstream calls (CFG ``u + s (c - u)``, timestep times
        ``timestep_scale``). As that pipeline, guidance applies only above 1: at any scale
        ``<= 1`` (0 included) the unconditional half is never run and the conditional velocity
        alone is used (``SanaPipeline.do_classifier_free_guidance`` is ``guidance_scale > 1``)."""
        from diffusers import DPMSolverMultistepScheduler

        cfg = self.options.guidance_scale if guidance_scale is None else guidance_scale
        steps = steps or self.options.generation_steps
        B = len(prompts)
        text = T.encode_t2i(self.text_tokenizer, list(prompts), self.options.max_text_len)
        ids, mask = text["text_ids"].to(self.device), text["text_mask"].to(self.device)
        guided = cfg > 1.0  # diffusers' SanaPipeline: do_classifier_free_guidance
        if guided:
            ids, mask = self.with_empty_prompt(ids, mask)
        was = self.training
        self.eval()
        try:
            cond = self.caption_states(ids, mask)
            scheduler = DPMSolverMultistepScheduler.from_config(self.arch["scheduler"])
            scheduler.set_timesteps(steps, device=self.device)
            C = self.model.config.in_channels
            noise_device = generator.device if generator is not None else torch.device("cpu")
            latents = torch.randn((B, C, *self.latent_grid), generator=generator, device=noise_device)
            latents = latents.to(self.device)
            dtype = next(self.model.parameters()).dtype
            for t in scheduler.timesteps:
                x = torch.cat([latents, latents]) if guided else latents
                timestep = t.expand(x.shape[0]) * self.model.config.timestep_scale
                v = self.model(
                    x.to(dtype), encoder_hidden_states=cond.to(dtype), timestep=timestep, return_dict=False
                )[0].float()
                if guided:
                    v_cond, v_uncond = v.chunk(2)
                    v = v_uncond + cfg * (v_cond - v_uncond)
                latents = scheduler.step(v, t, latents, return_dict=False)[0]
        finally:
            self.train(was)
        return latents

    # --- storage ----------------------------------------------------------------------------------
    # model.safetensors is this module's state dict: mllm.*, connector.*, projector.*, meta_queries,
    # model.* (SANA) and vae.*; the architecture dicts go to config.json, the tokenizer to tokenizer/.
    def architecture(self) -> dict[str, Any]:
        return {"arch": self.arch}

    def save_components(self, path: Path) -> None:
        self.text_tokenizer.save_pretrained(str(path / "tokenizer"))

    @classmethod
    def from_saved(cls, folder: Path, config: dict[str, Any], options: OpenUniOptions) -> OpenUniBackbone:
        tokenizer = T.load_tokenizer(str(folder / "tokenizer"), options.size)
        backbone = cls(config["arch"], tokenizer, options)
        backbone.load_state_dict(load_weights(folder))
        return backbone


def default_architecture(size: str, tokenizer: Any) -> dict[str, Any]:
    """The architecture of ``size`` with random weights (tiny: sized to the tokenizer)."""
    if size == "tiny":
        return A.tiny_architecture(len(tokenizer), int(tokenizer.convert_tokens_to_ids(T.IMG_CONTEXT)))
    return A.architecture(size)
