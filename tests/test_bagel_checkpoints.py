"""BAGEL's published checkpoint layout (docs/upstream/bagel.md sections 1-2): a tiny random model
written as ``ByteDance-Seed/BAGEL-7B-MoT`` ships its folder loads back bit-identically, the files
hold upstream's key names (the model's and FLUX's LDM autoencoder keys, derived here from upstream's
module definitions), and at the published size every name and shape agrees, on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from segros.backbones.bagel import weights as W
from segros.backbones.bagel.adapter import BagelBackbone, BagelOptions
from segros.backbones.bagel.model import BagelNet

TINY = {"size": "tiny", "image_size": 32, "vit_image_size": 32, "generation_steps": 2}


def ldm_autoencoder_keys(ch: int, ch_mult: list[int], num_res_blocks: int) -> set[str]:
    """The state-dict keys of upstream's ``AutoEncoder`` (modeling/autoencoder.py: Encoder, Decoder,
    ResnetBlock with ``nin_shortcut`` when the width changes, AttnBlock as 1x1 convolutions)."""
    keys: set[str] = set()

    def param(prefix: str, *names: str) -> None:
        keys.update(f"{prefix}.{n}.{p}" for n in names for p in ("weight", "bias"))

    def resnet(prefix: str, cin: int, cout: int) -> None:
        param(prefix, "norm1", "conv1", "norm2", "conv2", *(["nin_shortcut"] if cin != cout else []))

    def mid(prefix: str, width: int) -> None:
        resnet(f"{prefix}.mid.block_1", width, width)
        param(f"{prefix}.mid.attn_1", "norm", "q", "k", "v", "proj_out")
        resnet(f"{prefix}.mid.block_2", width, width)

    n = len(ch_mult)
    param("encoder", "conv_in", "norm_out", "conv_out")
    width = ch
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", width, ch * m)
            width = ch * m
        if i != n - 1:
            param(f"encoder.down.{i}.downsample", "conv")
    mid("encoder", width)
    param("decoder", "conv_in", "norm_out", "conv_out")
    mid("decoder", ch * ch_mult[-1])
    width = ch * ch_mult[-1]
    for i in reversed(range(n)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", width, ch * ch_mult[i])
            width = ch * ch_mult[i]
        if i != 0:
            param(f"decoder.up.{i}.upsample", "conv")
    return keys


@pytest.fixture(scope="module")
def tiny() -> BagelBackbone:
    torch.manual_seed(0)
    bb = BagelBackbone.from_options(BagelOptions(**TINY))
    with torch.no_grad():
        bb.model.llm2vae.weight.normal_(0.0, 0.2)
    return bb.eval()


def test_a_tiny_release_in_upstreams_layout_loads_bit_identically(tiny, tmp_path):
    W.write_upstream(tiny, tmp_path)
    for name in (
        "llm_config.json",
        "vit_config.json",
        "ema.safetensors",
        "ae.safetensors",
        "tokenizer_config.json",
    ):
        assert (tmp_path / name).is_file(), name
    ema = load_file(str(tmp_path / "ema.safetensors"))
    assert set(ema) == set(tiny.model.state_dict())  # upstream's names: no segros prefix
    assert "language_model.model.layers.1.self_attn.q_proj_moe_gen.weight" in ema
    assert ema["vit_model.vision_model.embeddings.patch_embedding.weight"].shape == (
        24,
        3 * 4 * 4,
    )  # a Linear
    ae = load_file(str(tmp_path / "ae.safetensors"))
    assert set(ae) == ldm_autoencoder_keys(8, [1, 2], 1)
    assert ae["encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    vit = json.loads((tmp_path / "vit_config.json").read_text())
    assert vit["num_hidden_layers"] == 3  # upstream builds one layer fewer than the file says

    loaded = BagelBackbone.from_options(BagelOptions(**TINY, init_from=str(tmp_path))).eval()
    for (k, v), (k2, v2) in zip(tiny.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    prompt = ["a photo of a green triangle"]
    assert torch.equal(
        tiny.generate(prompt, torch.Generator().manual_seed(3), steps=2),
        loaded.generate(prompt, torch.Generator().manual_seed(3), steps=2),
    )


def test_a_release_that_does_not_fit_is_refused_by_name(tiny, tmp_path):
    W.write_upstream(tiny, tmp_path)
    ema = load_file(str(tmp_path / "ema.safetensors"))
    ema["llm2vae.weight"] = ema["llm2vae.weight"][:, :-1].contiguous()
    del ema["connector.fc2.bias"]
    save_file(ema, str(tmp_path / "ema.safetensors"))
    with pytest.raises(ValueError, match=r"connector\.fc2\.bias.*llm2vae\.weight"):
        BagelBackbone.from_options(BagelOptions(**TINY, init_from=str(tmp_path)))
    (tmp_path / "ae.safetensors").unlink()
    (tmp_path / "vit_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="vit_config.json, ae.safetensors"):
        BagelBackbone.from_options(BagelOptions(**TINY, init_from=str(tmp_path)))


def published_shapes() -> dict[str, tuple[int, ...]]:
    """BAGEL-7B-MoT's parameter shapes from upstream's module definitions (qwen2_navit.py,
    modeling_qwen2.py, siglip_navit.py, modeling_utils.py, bagel.py) at the published sizes."""
    H, V, I, L, heads, kv = 3584, 152064, 18944, 28, 28, 4  # noqa: E741
    hd = H // heads
    D, DI, VL, P = 1152, 4304, 26, 14
    out = {
        "language_model.model.embed_tokens.weight": (V, H),
        "language_model.lm_head.weight": (V, H),
        "language_model.model.norm.weight": (H,),
        "language_model.model.norm_moe_gen.weight": (H,),
    }
    for i in range(L):
        pre = f"language_model.model.layers.{i}."
        for s in ("", "_moe_gen"):
            out |= {
                f"{pre}self_attn.q_proj{s}.weight": (heads * hd, H),
                f"{pre}self_attn.q_proj{s}.bias": (heads * hd,),
                f"{pre}self_attn.k_proj{s}.weight": (kv * hd, H),
                f"{pre}self_attn.k_proj{s}.bias": (kv * hd,),
                f"{pre}self_attn.v_proj{s}.weight": (kv * hd, H),
                f"{pre}self_attn.v_proj{s}.bias": (kv * hd,),
                f"{pre}self_attn.o_proj{s}.weight": (H, heads * hd),
                f"{pre}self_attn.q_norm{s}.weight": (hd,),
                f"{pre}self_attn.k_norm{s}.weight": (hd,),
                f"{pre}mlp{s}.gate_proj.weight": (I, H),
                f"{pre}mlp{s}.up_proj.weight": (I, H),
                f"{pre}mlp{s}.down_proj.weight": (H, I),
                f"{pre}input_layernorm{s}.weight": (H,),
                f"{pre}post_attention_layernorm{s}.weight": (H,),
            }
    vm = "vit_model.vision_model."
    out |= {
        f"{vm}embeddings.patch_embedding.weight": (D, 3 * P * P),
        f"{vm}embeddings.patch_embedding.bias": (D,),
        f"{vm}embeddings.position_embedding.weight": (70 * 70, D),
        f"{vm}post_layernorm.weight": (D,),
        f"{vm}post_layernorm.bias": (D,),
    }
    for i in range(VL):
        pre = f"{vm}encoder.layers.{i}."
        for n, shape in {
            "self_attn.q_proj": (D, D),
            "self_attn.k_proj": (D, D),
            "self_attn.v_proj": (D, D),
            "self_attn.out_proj": (D, D),
            "mlp.fc1": (DI, D),
            "mlp.fc2": (D, DI),
            "layer_norm1": (D,),
            "layer_norm2": (D,),
        }.items():
            out[f"{pre}{n}.weight"] = shape
            out[f"{pre}{n}.bias"] = (shape[0],)
    out |= {
        "connector.fc1.weight": (H, D),
        "connector.fc1.bias": (H,),
        "connector.fc2.weight": (H, H),
        "connector.fc2.bias": (H,),
        "vit_pos_embed.pos_embed": (70 * 70, H),
        "time_embedder.mlp.0.weight": (H, 256),
        "time_embedder.mlp.0.bias": (H,),
        "time_embedder.mlp.2.weight": (H, H),
        "time_embedder.mlp.2.bias": (H,),
        "vae2llm.weight": (H, 64),
        "vae2llm.bias": (H,),
        "llm2vae.weight": (64, H),
        "llm2vae.bias": (64,),
        "latent_pos_embed.pos_embed": (64 * 64, H),
    }
    return out


def test_published_size_names_and_shapes_match_upstream_on_the_meta_device():
    with torch.device("meta"):
        net = BagelNet(W.PUBLISHED)
        from segros.backbones.bagel import vae as V

        ae = V.build(W.PUBLISHED["vae"])
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = published_shapes()
    assert sorted(set(got) ^ set(want)) == []
    assert {k for k in got if got[k] != want[k]} == set()
    assert all(v.is_meta for v in net.state_dict().values())
    total = sum(v.numel() for k, v in net.state_dict().items() if not k.endswith("pos_embed"))
    assert 14.0e9 < total < 14.8e9  # "7B active parameters (14B total)" (upstream README L55)
    ldm = W.diffusers_to_ldm(ae.state_dict(), W.PUBLISHED["vae"])
    assert set(ldm) == ldm_autoencoder_keys(128, [1, 2, 4, 4], 2)
    assert tuple(ldm["decoder.mid.attn_1.proj_out.weight"].shape) == (512, 512, 1, 1)
    assert ae.config.latent_channels == 16 and W.vae_downsample(W.PUBLISHED["vae"]) * 2 == 16


# The two config files of the BAGEL-7B-MoT folder as released: Qwen2.5-7B-Instruct's config.json
# (its LLM initialisation) and SigLIP so400m/14-980's vision config, which names 27 layers while the
# checkpoint holds 26 (docs/upstream/bagel.md, "Published sizes": where each number comes from).
RELEASE_LLM_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
}  # fmt: skip
RELEASE_VIT_CONFIG = {
    "hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "model_type": "siglip_vision_model",
    "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
}  # fmt: skip


def test_the_release_config_files_build_the_published_names_and_shapes(tmp_path):
    """From the folder's own json files (not our table): the architecture upstream's loader builds
    (one ViT layer fewer than the file says, SigLIP's defaults where the file is silent), and on the
    meta device exactly the published names and shapes."""
    (tmp_path / "llm_config.json").write_text(json.dumps(RELEASE_LLM_CONFIG))
    (tmp_path / "vit_config.json").write_text(json.dumps(RELEASE_VIT_CONFIG))
    arch = W.release_architecture(tmp_path)
    assert arch["llm"] == W.PUBLISHED["llm"]
    assert arch["vit"] == W.PUBLISHED["vit"]
    assert {k: arch[k] for k in W.BAGEL_CONSTANTS} == W.BAGEL_CONSTANTS and arch["vae"] == W.FLUX_VAE
    with torch.device("meta"):
        net = BagelNet(arch)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == published_shapes()
    assert max(int(k.split(".")[4]) for k in got if ".encoder.layers." in k) == 25  # layers 0-25
