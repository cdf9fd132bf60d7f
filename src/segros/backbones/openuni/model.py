"""OpenUni's network: its architectures as plain dicts of the libraries' config arguments, the
connector's initialisation and the flow-matching loss.

One dict per released variant (``b-512`` = OpenUni-B-512, ``l-512`` = OpenUni-L-512) and a tiny
random one for tests and CPU smoke runs. Each names the arguments of the classes segros builds
OpenUni from: transformers' ``InternVLConfig`` (the MLLM, HF format) and ``SiglipVisionConfig``
(the connector's pre-LN encoder layers), diffusers' ``SanaTransformer2DModel``,
``AutoencoderDC`` and the two schedulers. Where every value comes from upstream is written in
docs/upstream/openuni.md (sections 1-5); a saved checkpoint stores the dict it was built from,
so a reload never depends on these tables.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

# --- InternVL3 (MLLM): InternViT-300M-448px + Qwen2.5 LLM, in transformers' HF format ----------
_INTERNVIT_300M = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-6,
    "image_size": 448,
    "patch_size": 14,
    "attention_bias": True,  # the original config's qkv_bias
    "use_qk_norm": False,  # the original config's qk_normalization
    "layer_scale_init_value": 0.1,
    "use_mean_pooling": True,  # InternViT has no final norm: HF's layernorm is then an Identity
}
_QWEN25_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
    "max_position_embeddings": 32768,
    "vocab_size": 151674,
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
_QWEN25_15B = {
    **_QWEN25_05B,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
}
IMG_CONTEXT_ID = 151667  # <IMG_CONTEXT> in the InternVL3 tokenizer


def internvl_config(vision: dict[str, Any], text: dict[str, Any], image_token_id: int) -> dict[str, Any]:
    """``InternVLConfig`` arguments: the vision tower and LLM with InternVL3's pixel shuffle (0.5)."""
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 // 4
    return {
        "vision_config": dict(vision),
        "text_config": dict(text),
        "image_token_id": image_token_id,
        "image_seq_length": tokens,
        "downsample_ratio": 0.5,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": text.get("tie_word_embeddings", False),
    }


# --- SANA DiT and the DC-AE f32c32 autoencoder (diffusers) ---------------------------------------
_SANA_600M_512 = {
    "in_channels": 32,
    "out_channels": 32,
    "num_attention_heads": 36,
    "attention_head_dim": 32,
    "num_layers": 28,
    "num_cross_attention_heads": 16,
    "cross_attention_head_dim": 72,
    "cross_attention_dim": 1152,
    "caption_channels": 2304,
    "mlp_ratio": 2.5,
    "dropout": 0.0,
    "attention_bias": False,
    "sample_size": 16,
    "patch_size": 1,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "interpolation_scale": None,
}
_SANA_1600M_512 = {
    **_SANA_600M_512,
    "num_attention_heads": 70,
    "num_layers": 20,
    "num_cross_attention_heads": 20,
    "cross_attention_head_dim": 112,
    "cross_attention_dim": 2240,
}
_DCAE_F32C32 = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "upsample_block_type": "interpolate",
    "downsample_block_type": "Conv",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}
# SANA's scheduler/scheduler_config.json: DPM-Solver++ for sampling; the same dict read by
# FlowMatchEulerDiscreteScheduler for training ignores flow_shift, so training uses shift 1
SANA_SCHEDULER = {
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
    "num_train_timesteps": 1000,
    "lower_order_final": True,
}


def connector_config(hidden: int, intermediate: int, heads: int, layers: int = 6) -> dict[str, Any]:
    """``SiglipVisionConfig`` arguments of upstream's ``ConnectorConfig`` (its defaults: GELU-tanh,
    LayerNorm eps 1e-6, no dropout): pre-LN bidirectional encoder layers, no final norm."""
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
    }


ARCHITECTURES: dict[str, dict[str, Any]] = {
    "b-512": {
        "mllm": internvl_config(_INTERNVIT_300M, _QWEN25_05B, IMG_CONTEXT_ID),
        "sana": _SANA_600M_512,
        "vae": _DCAE_F32C32,
        "scheduler": SANA_SCHEDULER,
        "connector": connector_config(896, 3072, 14),
        "num_queries": 256,
    },
    "l-512": {
        "mllm": internvl_config(_INTERNVIT_300M, _QWEN25_15B, IMG_CONTEXT_ID),
        "sana": _SANA_1600M_512,
        "vae": _DCAE_F32C32,
        "scheduler": SANA_SCHEDULER,
        "connector": connector_config(1536, 8960, 24),
        "num_queries": 256,
    },
}

# Published files of each variant (hub ids, or the folder names a local copy has).
RELEASES: dict[str, dict[str, str]] = {
    "b-512": {
        "checkpoint": "openuni_b_internvl3_1b_sana_0_6b_512_hf_{stage}.pth",
        "mllm": "OpenGVLab/InternVL3-1B",
        "sana": "Efficient-Large-Model/Sana_600M_512px_diffusers",
        "vae": "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers",
    },
    "l-512": {
        "checkpoint": "openuni_l_internvl3_2b_sana_1_6b_512_hf_{stage}.pth",
        "mllm": "OpenGVLab/InternVL3-2B",
        "sana": "Efficient-Large-Model/Sana_1600M_512px_diffusers",
        "vae": "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers",
    },
}


def tiny_architecture(vocab_size: int, image_token_id: int) -> dict[str, Any]:
    """A tiny random OpenUni of the same classes: 32 px images, a 4 x 4 grid of understanding
    tokens (32 px ViT input, patch 4, pixel shuffle), 8 x 8 latents (DC-AE stride 4), 8 queries."""
    vision = {
        **_INTERNVIT_300M,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 4,
    }
    text = {
        **_QWEN25_05B,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_scaling": None,
        "max_position_embeddings": 512,
        "vocab_size": vocab_size,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    return {
        "mllm": internvl_config(vision, text, image_token_id),
        "sana": {
            **_SANA_600M_512,
            "in_channels": 4,
            "out_channels": 4,
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "num_layers": 2,
            "num_cross_attention_heads": 2,
            "cross_attention_head_dim": 8,
            "cross_attention_dim": 16,
            "caption_channels": 24,
            "sample_size": 8,
        },
        "vae": {
            **_DCAE_F32C32,
            "latent_channels": 4,
            "attention_head_dim": 8,
            "encoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
            "decoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
            "encoder_block_out_channels": [8, 16, 16],
            "decoder_block_out_channels": [8, 16, 16],
            "encoder_layers_per_block": [1, 1, 1],
            "decoder_layers_per_block": [1, 1, 1],
            "encoder_qkv_multiscales": [[], [], [5]],
            "decoder_qkv_multiscales": [[], [], [5]],
        },
        "scheduler": SANA_SCHEDULER,
        "connector": connector_config(32, 64, 4, layers=2),
        "num_queries": 8,
    }


def architecture(size: str) -> dict[str, Any]:
    """A deep copy of a released variant's architecture (``b-512`` or ``l-512``)."""
    if size not in ARCHITECTURES:
        raise ValueError(f"no OpenUni architecture {size!r}; known: {', '.join(ARCHITECTURES)}")
    return copy.deepcopy(ARCHITECTURES[size])


def vae_stride(vae: dict[str, Any]) -> int:
    """Pixels per latent side: DC-AE halves the resolution between consecutive stages."""
    return 2 ** (len(vae["encoder_block_out_channels"]) - 1)


def vit_grid(mllm: dict[str, Any]) -> int:
    """Understanding tokens per side: ViT patches per side, halved by the pixel shuffle."""
    vision = mllm["vision_config"]
    return int(vision["image_size"] // vision["patch_size"] * mllm["downsample_ratio"])


# --- the trained parts and the loss ------------------------------------------------------------
def init_connector(connector: nn.Module) -> None:
    """Upstream's connector initialisation (``modeling_connector.py`` ``_init_weights``):
    Xavier-uniform attention and MLP weights, zero attention biases, MLP biases N(0, 1e-6)."""
    for layer in connector.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                     layer.self_attn.out_proj):  # fmt: skip
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)
        for fc in (layer.mlp.fc1, layer.mlp.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)


def flow_config(scheduler: dict[str, Any]) -> dict[str, Any]:
    """The train scheduler's arguments: upstream loads ``FlowMatchEulerDiscreteScheduler`` from
    SANA's DPM-Solver config, of which only ``num_train_timesteps`` is an argument it takes
    (``flow_shift`` is not its ``shift``), so it trains with shift 1."""
    return {"num_train_timesteps": scheduler.get("num_train_timesteps", 1000), "shift": 1.0}


def flow_matching_loss(
    transformer: nn.Module, scheduler: Any, x0: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """Upstream's ``diff_loss``: t uniform over the train scheduler's 1000 steps (weighting "none"),
    ``x_t = (1 - s) x_0 + s e`` (rectified flow), the DiT predicts the velocity ``e - x_0``; mean
    squared error per sample in float32, then the batch mean. Noise and t from the global RNG."""
    B = x0.shape[0]
    noise = torch.randn_like(x0)
    u = torch.rand(B)  # diffusers' compute_density_for_timestep_sampling("none")
    idx = (u * scheduler.config.num_train_timesteps).long()
    t = scheduler.timesteps[idx].to(x0.device)
    sigma = scheduler.sigmas[idx].to(x0.device, x0.dtype).view(B, *[1] * (x0.dim() - 1))
    x_t = (1.0 - sigma) * x0 + sigma * noise
    dtype = next(transformer.parameters()).dtype
    pred = transformer(
        hidden_states=x_t.to(dtype), encoder_hidden_states=cond.to(dtype), timestep=t, return_dict=False
    )[0]
    target = noise - x0
    return ((pred.float() - target.float()) ** 2).reshape(B, -1).mean(1).mean()
