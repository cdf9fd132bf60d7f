"""Expected parameter tables shared by the checkpoint tests of backbones built on Qwen2 (Harmon's
Qwen2.5 LLM, OpenUni's InternVL3 language model), written from transformers' Qwen2 classes."""

from __future__ import annotations


def qwen2_layer_shapes(
    prefix: str, layers: int, H: int, kv_dim: int, inter: int
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``layers`` Qwen2 decoder layers under ``prefix`` (``...model.layers.``):
    hidden size ``H``, key/value width ``kv_dim`` (KV heads x head dim), MLP width ``inter``."""
    out: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        p = f"{prefix}{i}."
        out |= {
            p + "self_attn.q_proj.weight": (H, H), p + "self_attn.q_proj.bias": (H,),
            p + "self_attn.k_proj.weight": (kv_dim, H), p + "self_attn.k_proj.bias": (kv_dim,),
            p + "self_attn.v_proj.weight": (kv_dim, H), p + "self_attn.v_proj.bias": (kv_dim,),
            p + "self_attn.o_proj.weight": (H, H),
            p + "mlp.gate_proj.weight": (inter, H), p + "mlp.up_proj.weight": (inter, H),
            p + "mlp.down_proj.weight": (H, inter),
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
        }  # fmt: skip
    return out
