"""Harmon's parameter names and shapes against the released checkpoints, and loading them.

Where the expected names come from: docs/upstream/harmon.md section 7 (key prefixes, read from the
module names of wusize/Harmon @ 4eb6087: src/models/harmon.py, src/models/mar/mar.py,
src/models/mar/diffloss.py, timm's Block) and section 1 (mar_base 768 x 12 / mar_huge 1280 x 20,
DiffLoss 6 x 1024 / 12 x 1536 from configs/models/qwen2_5_{0_5b_kl16_mar_b,1_5b_kl16_mar_h}.py);
Qwen2.5 dimensions from the Qwen2.5-{0.5B,1.5B}-Instruct config.json; the LLM key names are
transformers' Qwen2ForCausalLM ones that upstream's ``llm`` attribute carries. The table below is
written out in the tests (the Qwen2 layers in qwen_helpers.py), independently of the model code. The
files themselves were not inspected.
"""

import pytest
import torch
from harmon_helpers import tiny_backbone, tiny_options
from qwen_helpers import qwen2_layer_shapes

from segros.backbones.harmon.adapter import HarmonBackbone, HarmonOptions
from segros.backbones.harmon.model import Harmon, HarmonConfig
from segros.backbones.hub import MissingCheckpointError

SIZES = {  # width, depth, diffloss depth, diffloss width, LLM hidden, layers, heads, kv heads, mlp
    "0.5b": (768, 12, 6, 1024, 896, 24, 14, 2, 4864),
    "1.5b": (1280, 20, 12, 1536, 1536, 28, 12, 2, 8960),
}
VOCAB, SEQ, BUF, LATENT = 151936, 256, 64, 16


def expected(size: str) -> dict[str, tuple[int, ...]]:
    C, depth, dd, dw, H, layers, heads, kv, inter = SIZES[size]
    out = {
        "mar.class_emb.weight": (1000, C), "mar.fake_latent": (1, C),
        "mar.z_proj.weight": (C, LATENT), "mar.z_proj.bias": (C,),
        "mar.z_proj_ln.weight": (C,), "mar.z_proj_ln.bias": (C,),
        "mar.encoder_pos_embed_learned": (1, SEQ + BUF, C),
        "mar.encoder_norm.weight": (C,), "mar.encoder_norm.bias": (C,),
        "mar.decoder_embed.weight": (C, C), "mar.decoder_embed.bias": (C,), "mar.mask_token": (1, 1, C),
        "mar.decoder_pos_embed_learned": (1, SEQ + BUF, C),
        "mar.decoder_norm.weight": (C,), "mar.decoder_norm.bias": (C,),
        "mar.diffusion_pos_embed_learned": (1, SEQ, C),
        "mar.diffloss.net.time_embed.mlp.0.weight": (dw, 256),
        "mar.diffloss.net.time_embed.mlp.0.bias": (dw,),
        "mar.diffloss.net.time_embed.mlp.2.weight": (dw, dw), "mar.diffloss.net.time_embed.mlp.2.bias": (dw,),
        "mar.diffloss.net.cond_embed.weight": (dw, C), "mar.diffloss.net.cond_embed.bias": (dw,),
        "mar.diffloss.net.input_proj.weight": (dw, LATENT), "mar.diffloss.net.input_proj.bias": (dw,),
        "mar.diffloss.net.final_layer.linear.weight": (2 * LATENT, dw),
        "mar.diffloss.net.final_layer.linear.bias": (2 * LATENT,),
        "mar.diffloss.net.final_layer.adaLN_modulation.1.weight": (2 * dw, dw),
        "mar.diffloss.net.final_layer.adaLN_modulation.1.bias": (2 * dw,),
        "proj_in.0.weight": (H, C), "proj_in.0.bias": (H,), "proj_in.2.weight": (H, H),
        "proj_in.2.bias": (H,),
        "proj_out.0.weight": (H, H), "proj_out.0.bias": (H,), "proj_out.2.weight": (C, H),
        "proj_out.2.bias": (C,),
        "llm.model.embed_tokens.weight": (VOCAB, H), "llm.model.norm.weight": (H,),
        "llm.lm_head.weight": (VOCAB, H),
    }  # fmt: skip
    for part in ("encoder", "decoder"):
        for i in range(depth):
            p = f"mar.{part}_blocks.{i}."
            out |= {
                p + "norm1.weight": (C,), p + "norm1.bias": (C,), p + "norm2.weight": (C,),
                p + "norm2.bias": (C,),
                p + "attn.qkv.weight": (3 * C, C), p + "attn.qkv.bias": (3 * C,),
                p + "attn.proj.weight": (C, C), p + "attn.proj.bias": (C,),
                p + "mlp.fc1.weight": (4 * C, C), p + "mlp.fc1.bias": (4 * C,),
                p + "mlp.fc2.weight": (C, 4 * C), p + "mlp.fc2.bias": (C,),
            }  # fmt: skip
    for i in range(dd):
        p = f"mar.diffloss.net.res_blocks.{i}."
        out |= {
            p + "in_ln.weight": (dw,), p + "in_ln.bias": (dw,),
            p + "mlp.0.weight": (dw, dw), p + "mlp.0.bias": (dw,), p + "mlp.2.weight": (dw, dw),
            p + "mlp.2.bias": (dw,),
            p + "adaLN_modulation.1.weight": (3 * dw, dw), p + "adaLN_modulation.1.bias": (3 * dw,),
        }  # fmt: skip
    out |= qwen2_layer_shapes("llm.model.layers.", layers, H, kv * H // heads, inter)
    return out


@pytest.mark.parametrize("size", ["0.5b", "1.5b"])
def test_full_size_names_and_shapes_match_the_release(size):
    with torch.device("meta"):
        model = Harmon(HarmonConfig.for_size(size))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = expected(size)
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert {k: got[k] for k in want if got[k] != want[k]} == {}
    assert model.llm.config.tie_word_embeddings  # lm_head may be absent from the .pth: tied
    # independent totals: LTH14/mar README L61-63 lists MAR-B (DiffLoss 6 x 1024) at 208M and MAR-H
    # (12 x 1536) at 943M parameters; the Qwen2.5-0.5B / 1.5B model cards list 0.49B / 1.54B
    mar = sum(p.numel() for p in model.mar.parameters())
    llm = sum(p.numel() for p in model.llm.parameters())
    assert abs(mar - {"0.5b": 208e6, "1.5b": 943e6}[size]) < 1e6
    assert round(llm / 1e7) == {"0.5b": 49, "1.5b": 154}[size]


def _write_release(model: HarmonBackbone, folder):
    """Files laid out as upstream publishes them: a flat Harmon state dict (lm_head omitted as tied,
    a stray vae key) and kl16.ckpt with the VAE under "model" (plus a training-only key)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in model.model.state_dict().items() if k != "llm.lm_head.weight"}
    state["vae.encoder.conv_in.weight"] = torch.zeros(1)
    torch.save(state, folder / "harmon_tiny.pth")
    vae = {k: v.clone() for k, v in model.vae.state_dict().items()} | {"loss.logvar": torch.zeros(())}
    torch.save({"model": vae}, folder / "kl16.ckpt")


def test_loads_upstream_files_from_a_folder(harmon_tokenizer, tmp_path):
    source = tiny_backbone(harmon_tokenizer, seed=3)
    _write_release(source, tmp_path / "release")
    torch.manual_seed(99)  # a different random init, overwritten by the files
    loaded = HarmonBackbone.from_options(tiny_options(harmon_tokenizer, init_from=str(tmp_path / "release"),
                                                      checkpoint_file="harmon_tiny.pth"))  # fmt: skip
    for (k, v), v2 in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(v, v2), k
    for v, v2 in zip(source.vae.state_dict().values(), loaded.vae.state_dict().values(), strict=True):
        assert torch.equal(v, v2)
    assert loaded.model.llm.lm_head.weight is loaded.model.llm.model.embed_tokens.weight


def test_a_release_missing_weights_is_refused(harmon_tokenizer, tmp_path):
    source = tiny_backbone(harmon_tokenizer)
    _write_release(source, tmp_path)
    state = torch.load(tmp_path / "harmon_tiny.pth", weights_only=True)
    del state["mar.mask_token"]
    torch.save(state, tmp_path / "harmon_tiny.pth")
    with pytest.raises(ValueError, match="lacks 1 Harmon weights.*mar.mask_token"):
        HarmonBackbone.from_options(tiny_options(harmon_tokenizer, init_from=str(tmp_path),
                                                 checkpoint_file="harmon_tiny.pth"))  # fmt: skip


def test_pickled_objects_are_not_unpickled(harmon_tokenizer, tmp_path):
    source = tiny_backbone(harmon_tokenizer)
    _write_release(source, tmp_path)
    torch.save({"model": {"x": HarmonOptions()}}, tmp_path / "kl16.ckpt")  # not plain tensors
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        HarmonBackbone.from_options(tiny_options(harmon_tokenizer, init_from=str(tmp_path),
                                                 checkpoint_file="harmon_tiny.pth"))  # fmt: skip


def test_missing_files_in_a_folder_are_all_named(harmon_tokenizer, tmp_path):
    opts = HarmonOptions(size="0.5b", init_from=str(tmp_path), tokenizer=str(harmon_tokenizer))
    with pytest.raises(MissingCheckpointError, match=r"(?s)harmon_0\.5b\.pth.*kl16\.ckpt"):
        HarmonBackbone.from_options(opts)


def test_offline_hub_ids_stop_at_once_naming_the_files(harmon_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    opts = HarmonOptions(size="1.5b", init_from="wusize/harmon", tokenizer=str(harmon_tokenizer))
    with pytest.raises(MissingCheckpointError, match=r"(?s)harmon_1\.5b\.pth.*wusize/harmon.*kl16\.ckpt"):
        HarmonBackbone.from_options(opts)
    with pytest.raises(MissingCheckpointError, match=r"tokenizer\.json.*Qwen/Qwen2\.5-0\.5B-Instruct"):
        HarmonBackbone.from_options(HarmonOptions(size="0.5b", init_from="wusize/harmon"))
