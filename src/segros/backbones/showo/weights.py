"""Show-o's published files: finding and reading the LLM, MAGVIT-v2 and CLIP-ViT weights (what
``ShowoBackbone.from_upstream`` loads), and writing a segros Show-o back in that layout (export).
The Phi-1.5 tokenizer is :mod:`segros.backbones.showo.text`'s.

Every lookup goes through :func:`segros.backbones.hub.resolve_files`, so a folder or a hub id both
work, and an offline machine without the files stops at once naming them and the config key to set.
Weights are read with safetensors (or ``torch.load(weights_only=True)`` for CLIP's ``.bin``); nothing
is unpickled.

Published layouts (upstream ``models/modeling_utils.py`` L47-49; HF file listings):
``showlab/show-o*`` and ``showlab/magvitv2`` hold ``config.json`` + ``pytorch_model.safetensors``
(not ``model.safetensors``); the Show-o ``config.json`` is diffusers-style (``_class_name: "Showo"``,
``vocab_size``, ``llm_vocab_size``, ``codebook_size``, ``num_vq_tokens``, ``w_clip_vit``).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from segros.backbones.files import plain_state
from segros.backbones.hub import MissingCheckpointError, resolve_files
from segros.backbones.showo.model import ClipConfig

UPSTREAM_WEIGHTS = "pytorch_model.safetensors"
# Keys a published file may hold that this code recomputes rather than stores.
RECOMPUTED = ("*rotary_emb.inv_freq", "*quantize.embedding", "*quantize.power_vals")


def upstream_showo(source: str) -> tuple[dict[str, Any], Path]:
    """(config dict, weights path) of a published Show-o checkpoint (``model.init_from``)."""
    files = resolve_files(source, ["config.json", UPSTREAM_WEIGHTS], "Show-o checkpoint", "model.init_from")
    config = json.loads(files["config.json"].read_text())
    if config.get("_class_name") != "Showo":
        raise ValueError(
            f"{source}: config.json is not a Show-o config (_class_name {config.get('_class_name')!r})"
        )
    return config, files[UPSTREAM_WEIGHTS]


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, read from its header (no tensor loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def llm_sizes(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Phi sizes read off the weights (upstream takes them from ``llm_model_path``'s config, i.e.
    Phi-1.5; the weights carry the same numbers, so no extra file is needed)."""
    prefix = "showo.model.layers."
    layers = {int(k[len(prefix) :].split(".")[0]) for k in shapes if k.startswith(prefix)}
    hidden = shapes["showo.model.embed_tokens.weight"][1]
    return {
        "hidden_size": hidden,
        "num_layers": len(layers),
        "num_heads": hidden // shapes[f"{prefix}0.self_attn.q_layernorm.weight"][0],
        "intermediate_size": shapes[f"{prefix}0.mlp.fc1.weight"][0],
    }


def magvit_weights(source: str) -> Path:
    """The MAGVIT-v2 weights file (``model.magvit``, published as ``showlab/magvitv2``)."""
    return resolve_files(source, [UPSTREAM_WEIGHTS], "MAGVIT-v2 tokenizer", "model.magvit")[UPSTREAM_WEIGHTS]


def clip_files(source: str) -> tuple[Path, Path]:
    """(config.json, weights) of the CLIP vision encoder (``model.clip``)."""
    files = resolve_files(
        source,
        ["config.json"],
        "CLIP-ViT encoder",
        "model.clip",
        optional=["model.safetensors", "pytorch_model.bin"],
    )
    weights = files.get("model.safetensors") or files.get("pytorch_model.bin")
    if weights is None:
        raise MissingCheckpointError(
            f"CLIP-ViT encoder: {source} has config.json but neither model.safetensors nor "
            "pytorch_model.bin. Set model.clip to a folder that has one of them."
        )
    return files["config.json"], weights


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch file."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def clip_config(raw: dict[str, Any]) -> ClipConfig:
    """Our :class:`ClipConfig` from a published CLIP ``config.json`` (full CLIP or vision-only)."""
    vision = raw.get("vision_config", raw)
    fields = ("hidden_size", "intermediate_size", "image_size", "patch_size")
    return ClipConfig(
        **{k: vision[k] for k in fields if k in vision},
        num_layers=vision.get("num_hidden_layers", 24),
        num_heads=vision.get("num_attention_heads", 16),
    )


def clip_vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower of a full CLIP checkpoint (``vision_model.*``), with that prefix removed
    (transformers 5 names ``CLIPVisionModel``'s parameters without it)."""
    prefix = "vision_model."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _recomputed(key: str) -> bool:
    return any(fnmatch.fnmatch(key, p) for p in RECOMPUTED)


# --- the inverse: a segros Show-o as upstream's folder ---------------------------------------------
UPSTREAM_PREFIXES = ("showo.", "mm_projector.")


def upstream_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``Showo`` module's weights under upstream's names, from a segros Show-o model state dict
    (``ShowoBackbone.model``). segros keeps upstream's attribute names (``showo.*`` for Phi with its
    head, ``mm_projector.*`` for the CLIP variants), so this is the identity on those keys and
    drops anything else (what :func:`~segros.backbones.files.load_exact` reads back one to one)."""
    return {k: v for k, v in state.items() if k.startswith(UPSTREAM_PREFIXES) and not _recomputed(k)}


def upstream_config(vocab: Any, num_vq_tokens: int, w_clip_vit: bool) -> dict[str, Any]:
    """The diffusers-style ``config.json`` ``Showo.from_pretrained`` reads (upstream's constructor
    arguments; ``mask_token_id`` is what it registers itself). The LLM is built from
    ``llm_model_path``'s config, as for every published Show-o."""
    return {
        "_class_name": "Showo",
        "_diffusers_version": "0.30.1",
        "codebook_size": vocab.codebook_size,
        "llm_model_path": "microsoft/phi-1_5",
        "llm_vocab_size": vocab.llm_vocab_size,
        "load_from_showo": True,
        "mask_token_id": vocab.mask,
        "num_vq_tokens": num_vq_tokens,
        "vocab_size": vocab.size,
        "w_clip_vit": w_clip_vit,
    }


def write_upstream(backbone: Any, out: Path) -> dict[str, Any]:
    """Write ``out/config.json`` + ``out/pytorch_model.safetensors`` as the published
    ``showlab/show-o*`` folders; returns what upstream loads separately (MAGVIT-v2, the Phi-1.5
    tokenizer, CLIP), by the folder or hub id the model was built from: referenced, not copied."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(plain_state(upstream_state(backbone.model.state_dict())), str(out / UPSTREAM_WEIGHTS),
              metadata={"format": "pt"})  # fmt: skip
    config = upstream_config(backbone.vocab, backbone.num_tokens, backbone.clip is not None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    options = backbone.options
    refs = {"vq_model (MAGVIT-v2)": options.magvit, "tokenizer (Phi-1.5)": options.tokenizer}
    if backbone.clip is not None:
        refs["clip_vit"] = options.clip
    return {"files": ["config.json", UPSTREAM_WEIGHTS], "references": refs}
