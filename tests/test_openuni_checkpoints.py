"""OpenUni's published layout: full-size names and shapes against a table written from upstream,
InternVL's original checkpoint mapped onto transformers' HF classes, a folder in upstream's layout
loading as it is, and missing files named offline (docs/upstream/openuni.md sections 1-5, 8)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from qwen_helpers import qwen2_layer_shapes
from safetensors.torch import save_file

from segros.backbones.hub import MissingCheckpointError
from segros.backbones.openuni import model as A
from segros.backbones.openuni import text as T
from segros.backbones.openuni import weights as W
from segros.backbones.openuni.adapter import OpenUniBackbone, OpenUniOptions
from segros.data.shapes import vocabulary

# --- the table, from upstream ----------------------------------------------------------------------
# InternVL3-1B / 2B = InternViT-300M-448px (1024 wide, 24 layers, MLP 4096, patch 14) + Qwen2.5-0.5B /
# 1.5B (hidden, MLP, layers, heads, KV heads; vocabulary 151674, untied head); SANA-0.6B / 1.6B-512px
# (layers, inner width, caption channels 2304, 32 latent channels, patch 1); OpenUni's connector
# (configs/models/openuni_{b,l}_*_512_hf.py: hidden, intermediate, 6 layers, heads) and 256 queries.
UPSTREAM = {
    "b-512": {"llm": (896, 4864, 24, 14, 2), "sana": (28, 1152), "connector": (896, 3072)},
    "l-512": {"llm": (1536, 8960, 28, 12, 2), "sana": (20, 2240), "connector": (1536, 8960)},
}
# parameter totals: MLLM x 2 bytes = the bf16 model.safetensors of InternVL3-1B (1.88 GB) / -2B
# (4.18 GB); SANA-1.6B x 4 bytes = its fp32 transformer files (5 GB + 1.42 GB); DC-AE 1.25 GB fp32
TOTALS = {
    "b-512": {"mllm": 938_193_024, "model": 591_747_872, "vae": 312_250_275},
    "l-512": {"mllm": 2_088_957_440, "model": 1_604_462_752, "vae": 312_250_275},
}


def original_internvl_shapes(H: int, inter: int, L: int, heads: int, kv: int) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of InternVLChatModel as upstream's vendored modeling files define
    them (InternVisionModel: class/position/patch embeddings, layers with fused qkv and ls1/ls2;
    mlp1 = LayerNorm, Linear, GELU, Linear; language_model = Qwen2ForCausalLM)."""
    D, DI, V, hd = 1024, 4096, 151674, H // heads
    out: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, D),
        "vision_model.embeddings.position_embedding": (1, (448 // 14) ** 2 + 1, D),
        "vision_model.embeddings.patch_embedding.weight": (D, 3, 14, 14),
        "vision_model.embeddings.patch_embedding.bias": (D,),
        "mlp1.0.weight": (4 * D,), "mlp1.0.bias": (4 * D,),
        "mlp1.1.weight": (H, 4 * D), "mlp1.1.bias": (H,),
        "mlp1.3.weight": (H, H), "mlp1.3.bias": (H,),
        "language_model.model.embed_tokens.weight": (V, H),
        "language_model.model.norm.weight": (H,),
        "language_model.lm_head.weight": (V, H),
    }  # fmt: skip
    for i in range(24):
        p = f"vision_model.encoder.layers.{i}."
        out |= {
            p + "ls1": (D,), p + "ls2": (D,),
            p + "attn.qkv.weight": (3 * D, D), p + "attn.qkv.bias": (3 * D,),
            p + "attn.proj.weight": (D, D), p + "attn.proj.bias": (D,),
            p + "norm1.weight": (D,), p + "norm1.bias": (D,),
            p + "norm2.weight": (D,), p + "norm2.bias": (D,),
            p + "mlp.fc1.weight": (DI, D), p + "mlp.fc1.bias": (DI,),
            p + "mlp.fc2.weight": (D, DI), p + "mlp.fc2.bias": (D,),
        }  # fmt: skip
    out |= qwen2_layer_shapes("language_model.model.layers.", L, H, kv * hd, inter)
    return out


def openuni_pth_shapes(H: int, inter: int, sana: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """The trained parts under upstream's attribute names: meta_queries, connector (ConnectorEncoder:
    6 pre-LN encoder layers) and projector (Linear H -> 2304)."""
    out: dict[str, tuple[int, ...]] = {
        "meta_queries": (256, H),
        "projector.weight": (2304, H),
        "projector.bias": (2304,),
    }
    for i in range(6):
        p = f"connector.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out |= {f"{p}self_attn.{proj}.weight": (H, H), f"{p}self_attn.{proj}.bias": (H,)}
        out |= {
            p + "layer_norm1.weight": (H,), p + "layer_norm1.bias": (H,),
            p + "layer_norm2.weight": (H,), p + "layer_norm2.bias": (H,),
            p + "mlp.fc1.weight": (inter, H), p + "mlp.fc1.bias": (inter,),
            p + "mlp.fc2.weight": (H, inter), p + "mlp.fc2.bias": (H,),
        }  # fmt: skip
    return out


def meta_backbone(size: str) -> OpenUniBackbone:
    with torch.device("meta"):
        return OpenUniBackbone(
            A.architecture(size), T.word_level_tokenizer(vocabulary()), OpenUniOptions(size=size)
        )


@pytest.mark.parametrize("size", ["b-512", "l-512"])
def test_full_size_names_and_shapes_match_the_upstream_table(size):
    bb = meta_backbone(size)
    got = {k: tuple(v.shape) for k, v in bb.state_dict().items()}
    up = UPSTREAM[size]
    # the MLLM: upstream's original names through the documented mapping are exactly our modules
    original = {k: torch.empty(s, device="meta") for k, s in original_internvl_shapes(*up["llm"]).items()}
    want = {"mllm." + k: tuple(v.shape) for k, v in W.internvl_to_hf(original).items()}
    mine = {k: s for k, s in got.items() if k.startswith("mllm.")}
    assert sorted(set(want) ^ set(mine)) == [] and {k for k in want if want[k] != mine[k]} == set()
    # the trained parts of the .pth: the same names and shapes
    pth = openuni_pth_shapes(*up["connector"], up["sana"])
    trained = {k: s for k, s in got.items() if k.startswith(("meta_queries", "connector.", "projector."))}
    assert trained == pth
    # SANA and the DC-AE are diffusers' own classes in upstream too: totals and the seams
    layers, inner = up["sana"]
    totals = {
        g: sum(v.numel() for k, v in bb.state_dict().items() if k.startswith(g + ".")) for g in TOTALS[size]
    }
    assert totals == TOTALS[size]
    assert got["model.caption_projection.linear_1.weight"] == (inner, 2304)
    assert got["model.patch_embed.proj.weight"] == (inner, 32, 1, 1) and got["model.proj_out.weight"] == (
        32,
        inner,
    )
    assert (
        max(int(m[1]) for k in got if (m := re.match(r"model\.transformer_blocks\.(\d+)\.", k))) == layers - 1
    )
    assert got["vae.encoder.conv_in.weight"] == (128, 3, 3, 3) and got["vae.decoder.conv_in.weight"] == (
        1024,
        32,
        3,
        3,
    )
    # the grids: 448 px / 14 / 2 = 16 understanding tokens per side; 512 px / 32 = 16 latents per side
    assert bb.token_grid == (16, 16) and bb.latent_grid == (16, 16) and bb.meta_queries.shape[0] == 256


# --- InternVL's original checkpoint ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return OpenUniBackbone.from_options(OpenUniOptions(size="tiny", image_size=32))


def to_original(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A tiny HF InternVL state dict written back under upstream's original names (what
    ``OpenGVLab/InternVL3-*`` ships): q, k, v fused into attn.qkv, ls1/ls2, norm1/2, mlp1.{0,1,3}."""
    out: dict[str, torch.Tensor] = {}
    for k, v in hf.items():
        m = re.match(r"model\.vision_tower\.encoder\.layer\.(\d+)\.(.*)$", k)
        if m:
            i, rest = m.groups()
            if rest.startswith("attention.q_proj."):
                kind = rest.rsplit(".", 1)[1]
                parts = [hf[f"model.vision_tower.encoder.layer.{i}.attention.{p}_proj.{kind}"] for p in "qkv"]
                out[f"vision_model.encoder.layers.{i}.attn.qkv.{kind}"] = torch.cat(parts)
                continue
            if rest.startswith(("attention.k_proj.", "attention.v_proj.")):
                continue
            rest = {"lambda_1": "ls1", "lambda_2": "ls2"}.get(rest, rest)
            rest = rest.replace("attention.projection_layer.", "attn.proj.")
            rest = rest.replace("layernorm_before.", "norm1.").replace("layernorm_after.", "norm2.")
            out[f"vision_model.encoder.layers.{i}.{rest}"] = v
            continue
        for hf_name, name in (
            ("model.vision_tower.embeddings.cls_token", "vision_model.embeddings.class_embedding"),
            (
                "model.vision_tower.embeddings.position_embeddings",
                "vision_model.embeddings.position_embedding",
            ),
            (
                "model.vision_tower.embeddings.patch_embeddings.projection.",
                "vision_model.embeddings.patch_embedding.",
            ),
            ("model.multi_modal_projector.layer_norm.", "mlp1.0."),
            ("model.multi_modal_projector.linear_1.", "mlp1.1."),
            ("model.multi_modal_projector.linear_2.", "mlp1.3."),
            ("model.language_model.", "language_model.model."),
            ("lm_head.", "language_model.lm_head."),
        ):
            if k.startswith(hf_name):
                out[name + k[len(hf_name) :]] = v
                break
        else:
            raise AssertionError(f"no original name for {k}")
    return out


def test_the_original_checkpoint_maps_onto_the_hf_classes(tiny):
    hf = tiny.mllm.state_dict()
    original = to_original(hf)
    assert any(k.endswith("attn.qkv.weight") for k in original) and W.is_original_internvl(original)
    mapped = W.internvl_to_hf(original)
    assert sorted(mapped) == sorted(hf) and all(torch.equal(mapped[k], hf[k]) for k in hf)
    with pytest.raises(ValueError, match="no known layout.*vision_model.extra"):
        W.internvl_to_hf({**original, "vision_model.extra": torch.zeros(1)})


def original_config(arch: dict) -> dict:
    """An InternVLChatConfig config.json (upstream configuration_internvl_chat.py / _intern_vit.py
    field names) describing the tiny MLLM."""
    v, t = arch["mllm"]["vision_config"], arch["mllm"]["text_config"]
    return {
        "architectures": ["InternVLChatModel"],
        "vision_config": {"architectures": ["InternVisionModel"], "hidden_size": v["hidden_size"],
                          "intermediate_size": v["intermediate_size"],
                          "num_hidden_layers": v["num_hidden_layers"],
                          "num_attention_heads": v["num_attention_heads"], "image_size": v["image_size"],
                          "patch_size": v["patch_size"], "qkv_bias": True, "qk_normalization": False,
                          "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu",
                          "initializer_factor": 0.1, "use_flash_attn": True},
        "llm_config": {"architectures": ["Qwen2ForCausalLM"], **{k: t[k] for k in t if k != "model_type"}},
        "force_image_size": v["image_size"], "downsample_ratio": 0.5, "select_layer": -1,
        "ps_version": "v2", "template": "internvl2_5",
    }  # fmt: skip


def write_release(bb: OpenUniBackbone, root, stage_keys: bool = True) -> dict:
    """A tiny OpenUni laid out as upstream's files are: the MLLM folder in InternVL's original format
    (config.json, model.safetensors, tokenizer), the SANA folder (transformer/, scheduler/), the DC-AE
    folder and checkpoints/<name>.pth with the trained parts (fine-tuned: SANA too) by upstream names."""
    from diffusers import DPMSolverMultistepScheduler

    mllm, sana, vae = root / "InternVL3-tiny", root / "Sana_tiny_diffusers", root / "dc-ae-tiny"
    mllm.mkdir(parents=True)
    (mllm / "config.json").write_text(json.dumps(original_config(bb.arch)))
    save_file(
        {k: v.contiguous() for k, v in to_original(bb.mllm.state_dict()).items()},
        str(mllm / "model.safetensors"),
    )
    bb.text_tokenizer.save_pretrained(str(mllm))
    bb.model.save_pretrained(str(sana / "transformer"))
    DPMSolverMultistepScheduler.from_config(bb.arch["scheduler"]).save_pretrained(str(sana / "scheduler"))
    bb.vae.save_pretrained(str(vae))
    state = {
        k: v for k, v in bb.state_dict().items() if k.startswith(("meta_queries", "connector.", "projector."))
    }
    if stage_keys:
        state |= {"transformer." + k: v for k, v in bb.model.state_dict().items()}
    (root / "checkpoints").mkdir()
    torch.save(state, root / "checkpoints" / "openuni_tiny.pth")
    return {"mllm": str(mllm), "sana": str(sana), "vae": str(vae), "checkpoint_file": "openuni_tiny.pth"}


def test_a_folder_in_upstream_layout_loads_as_it_is(tiny, tmp_path):
    paths = write_release(tiny, tmp_path)
    loaded = OpenUniBackbone.from_options(
        OpenUniOptions(size="tiny", image_size=32, init_from=str(tmp_path), **paths)
    )
    want, got = tiny.state_dict(), loaded.state_dict()
    assert sorted(want) == sorted(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert loaded.arch["num_queries"] == tiny.arch["num_queries"]
    # a pre-trained .pth holds no SANA weights: those come from the SANA folder
    other = tmp_path / "pretrained"
    sana_before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    with torch.no_grad():
        tiny.model.proj_out.weight.add_(1.0)  # the .pth below holds no SANA, so this must not load
    paths = write_release(tiny, other, stage_keys=False)
    with torch.no_grad():
        tiny.model.proj_out.weight.sub_(1.0)
    loaded = OpenUniBackbone.from_options(
        OpenUniOptions(size="tiny", image_size=32, init_from=str(other), **paths)
    )
    assert not torch.equal(loaded.model.proj_out.weight, sana_before["proj_out.weight"])  # folder's SANA
    assert torch.equal(loaded.meta_queries, tiny.meta_queries)


def test_a_pth_without_the_trained_parts_is_refused(tiny, tmp_path):
    paths = write_release(tiny, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "openuni_tiny.pth", weights_only=True)
    torch.save(
        {k: v for k, v in state.items() if not k.startswith("connector.")},
        tmp_path / "checkpoints" / "openuni_tiny.pth",
    )
    with pytest.raises(ValueError, match="lacks OpenUni's trained parts: connector"):
        OpenUniBackbone.from_options(
            OpenUniOptions(size="tiny", image_size=32, init_from=str(tmp_path), **paths)
        )


def test_missing_files_of_an_upstream_folder_are_all_named(tmp_path):
    """Upstream's names, no renaming: the component folders are looked up as <init_from>/<repo name>
    and the .pth also in <init_from>/checkpoints/; every missing file is named at once."""
    for name in (
        "InternVL3-1B",
        "Sana_600M_512px_diffusers",
        "dc-ae-f32c32-sana-1.1-diffusers",
        "checkpoints",
    ):
        (tmp_path / name).mkdir()
    with pytest.raises(MissingCheckpointError) as err:
        OpenUniBackbone.from_options(OpenUniOptions(size="b-512", init_from=str(tmp_path)))
    msg = str(err.value)
    for expected in (
        "openuni_b_internvl3_1b_sana_0_6b_512_hf_text2image23m.pth",
        "InternVL3-1B lacks config.json", "InternVL3-1B lacks model.safetensors",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json", "dc-ae-f32c32-sana-1.1-diffusers lacks config.json",
        "tokenizer_config.json",
    ):  # fmt: skip
        assert expected in msg, (expected, msg)


def test_offline_hub_ids_stop_at_once_naming_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingCheckpointError) as err:
        OpenUniBackbone.from_options(
            OpenUniOptions(size="l-512", init_from="wusize/openuni", stage="blip3o60k")
        )
    msg = str(err.value)
    for expected in ("openuni_l_internvl3_2b_sana_1_6b_512_hf_blip3o60k.pth", "'wusize/openuni'",
                     "'OpenGVLab/InternVL3-2B'", "'Efficient-Large-Model/Sana_1600M_512px_diffusers'",
                     "'mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers'",
                     "huggingface-cli download"):  # fmt: skip
        assert expected in msg, (expected, msg)
