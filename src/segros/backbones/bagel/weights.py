"""BAGEL's published layout: configurations by size, the FLUX autoencoder's keys, and reading and
writing a folder as ``ByteDance-Seed/BAGEL-7B-MoT`` ships it (docs/upstream/bagel.md sections 1-2).

A release folder holds ``llm_config.json``, ``vit_config.json``, ``ema.safetensors`` (the model:
:class:`~segros.backbones.bagel.model.BagelNet`'s keys exactly), ``ae.safetensors`` (FLUX's
autoencoder in its original LDM key layout, which diffusers' converter maps onto ``AutoencoderKL``)
and the tokenizer files. ``read_release`` loads it without renaming; ``write_release`` writes one
(tiny random releases for the tests), and ``write_upstream`` a trained backbone (``segros export
--format upstream``: the folder BAGEL's own inference code and RecA's scripts read).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LLM_FILE, VIT_FILE, EMA_FILE, AE_FILE = (
    "llm_config.json",
    "vit_config.json",
    "ema.safetensors",
    "ae.safetensors",
)
LLM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "rope_theta")  # fmt: skip
VIT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
            "image_size", "layer_norm_eps", "num_channels")  # fmt: skip
# what upstream's app.py sets on top of the json files (BagelConfig's arguments)
BAGEL_CONSTANTS = {
    "latent_patch_size": 2,
    "max_latent_size": 64,
    "vit_max_num_patch_per_side": 70,
    "latent_channels": 16,
}
# FLUX's autoencoder as diffusers' AutoencoderKL (upstream's load_ae parameters)
FLUX_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_quant_conv": False, "use_post_quant_conv": False, "scaling_factor": 0.3611, "shift_factor": 0.1159,
}  # fmt: skip

# BAGEL-7B-MoT: Qwen2.5-7B-Instruct and SigLIP so400m/14 at 980 px without its last layer (27 - 1).
# These sizes are the published base models' (docs section 1: not read from the release's json here).
PUBLISHED = {
    "llm": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 1e6},
    "vit": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26,
            "num_attention_heads": 16, "patch_size": 14, "image_size": 980, "layer_norm_eps": 1e-6,
            "num_channels": 3},
    **BAGEL_CONSTANTS,
    "vae": FLUX_VAE,
}  # fmt: skip


def tiny_architecture(vocab_size: int) -> dict[str, Any]:
    """A toy BAGEL of the real classes for CPU tests: 2 MoT layers (hidden 32, grouped kv heads),
    2 SigLIP layers on 4-pixel patches, a 2x VAE with 16 latent channels."""
    return {
        "llm": {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
        "vit": {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
                "patch_size": 4, "image_size": 32, "layer_norm_eps": 1e-6, "num_channels": 3},
        "latent_patch_size": 2, "max_latent_size": 16, "vit_max_num_patch_per_side": 8, "latent_channels": 16,
        "vae": {**FLUX_VAE, "layers_per_block": 1, "block_out_channels": [8, 16], "norm_num_groups": 4,
                "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2},
    }  # fmt: skip


def vae_downsample(vae: dict[str, Any]) -> int:
    return 2 ** (len(vae["block_out_channels"]) - 1)


# --- the autoencoder's two key layouts --------------------------------------------------------------
def ldm_to_diffusers(state: dict[str, torch.Tensor], vae: dict[str, Any]) -> dict[str, torch.Tensor]:
    """FLUX's ``ae.safetensors`` keys as ``AutoencoderKL``'s (diffusers' own converter)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, vae)


def diffusers_to_ldm(state: dict[str, torch.Tensor], vae: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`ldm_to_diffusers`: ``AutoencoderKL`` weights under FLUX's LDM keys (the
    mid-block attention as 1x1 convolutions), for writing ``ae.safetensors``."""
    n = len(vae["block_out_channels"])
    plain = {"conv_norm_out": "norm_out", "conv_shortcut": "nin_shortcut", "downsamplers.0": "downsample",
             "upsamplers.0": "upsample", "attentions.0": "attn_1", "group_norm": "norm", "to_q": "q",
             "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}  # fmt: skip
    out = {}
    for key, value in state.items():
        k = re.sub(r"down_blocks\.(\d+)\.resnets", r"down.\1.block", key)
        k = re.sub(r"down_blocks\.(\d+)\.", r"down.\1.", k)
        k = re.sub(r"up_blocks\.(\d+)\.resnets", lambda m: f"up.{n - 1 - int(m[1])}.block", k)
        k = re.sub(r"up_blocks\.(\d+)\.", lambda m: f"up.{n - 1 - int(m[1])}.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", k)
        k = k.replace("mid_block.", "mid.")
        for new, old in plain.items():
            k = k.replace(new, old)
        if ".attn_1." in k and k.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]
        out[k] = value
    return out


# --- release folders ---------------------------------------------------------------------------------
def release_architecture(folder: Path) -> dict[str, Any]:
    """The architecture of a release folder from its two json files, read as upstream reads them
    (transformers' ``Qwen2Config`` / ``SiglipVisionConfig``, so a field the file leaves out takes
    the library's default: the released ``vit_config.json`` names no ``layer_norm_eps``), with
    upstream's override: the ViT is built without its last layer (``num_hidden_layers - 1``)."""
    from transformers import Qwen2Config, SiglipVisionConfig

    llm = Qwen2Config.from_json_file(str(folder / LLM_FILE))
    vit = SiglipVisionConfig.from_json_file(str(folder / VIT_FILE))
    llm_arch = {k: getattr(llm, k) for k in LLM_KEYS if k != "rope_theta"}
    llm_arch["rope_theta"] = _rope_theta(llm)
    vit_arch = {k: getattr(vit, k) for k in VIT_KEYS}
    vit_arch["num_hidden_layers"] = vit.num_hidden_layers - 1
    vae_file, consts_file = folder / "segros_vae.json", folder / "segros_bagel.json"
    vae = json.loads(vae_file.read_text()) if vae_file.is_file() else FLUX_VAE
    consts = json.loads(consts_file.read_text()) if consts_file.is_file() else BAGEL_CONSTANTS
    return {"llm": llm_arch, "vit": vit_arch, **consts, "vae": vae}


def _rope_theta(config: Any) -> float:
    """``rope_theta`` of a transformers config: an attribute in older releases, a field of
    ``rope_parameters`` in transformers 5."""
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def read_release(
    folder: str | Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(architecture, model state, VAE state under diffusers' keys) of a release folder; every
    missing file is named at once."""
    folder = Path(folder).expanduser()
    missing = [f for f in (LLM_FILE, VIT_FILE, EMA_FILE, AE_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a BAGEL release folder: missing {', '.join(missing)}")
    arch = release_architecture(folder)
    return (
        arch,
        load_file(str(folder / EMA_FILE)),
        ldm_to_diffusers(load_file(str(folder / AE_FILE)), arch["vae"]),
    )


def write_release(folder: str | Path, arch: dict[str, Any], model_state: dict[str, torch.Tensor],
                  vae_state: dict[str, torch.Tensor], tokenizer: Any) -> None:  # fmt: skip
    """Write a release folder in upstream's layout. The VAE and BAGEL constants of a non-published
    size go to ``segros_vae.json`` / ``segros_bagel.json`` (upstream has them in code)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vit = {
        **arch["vit"],
        "num_hidden_layers": arch["vit"]["num_hidden_layers"] + 1,
        "model_type": "siglip_vision_model",
    }
    (folder / LLM_FILE).write_text(json.dumps({**arch["llm"], "model_type": "qwen2"}, indent=2))
    (folder / VIT_FILE).write_text(json.dumps(vit, indent=2))
    if arch["vae"] != FLUX_VAE:
        (folder / "segros_vae.json").write_text(json.dumps(arch["vae"], indent=2))
    consts = {k: arch[k] for k in BAGEL_CONSTANTS}
    if consts != BAGEL_CONSTANTS:
        (folder / "segros_bagel.json").write_text(json.dumps(consts, indent=2))
    save_file({k: v.contiguous() for k, v in model_state.items()}, str(folder / EMA_FILE))
    save_file(
        {k: v.contiguous() for k, v in diffusers_to_ldm(vae_state, arch["vae"]).items()},
        str(folder / AE_FILE),
    )
    tokenizer.save_pretrained(str(folder))


def write_upstream(backbone: Any, out: Path) -> dict[str, Any]:
    """Write ``backbone`` as a release folder in ``out``: everything upstream reads, no references."""
    write_release(
        out, backbone.arch, backbone.model.state_dict(), backbone.vae.state_dict(), backbone.text_tokenizer
    )
    return {"files": sorted(p.name for p in Path(out).iterdir()), "references": {}}
