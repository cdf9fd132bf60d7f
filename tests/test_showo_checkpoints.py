"""Show-o's published checkpoints: exact parameter names and shapes, upstream-format loading, and
clear stops when files are missing. No downloads: the full sizes are built on the meta device.

Where the expected names come from: ``docs/upstream/showo.md`` sections 2 (Show-o keys) and 3
(MAGVIT-v2 structure), which were read from upstream Show-o at commit 45a5a2de
(``models/modeling_showo.py`` L41-54, ``models/phi.py`` L264-271 / L919-937 / L1084-1092,
``models/modeling_magvitv2.py`` L48-433, ``models/common_modules.py`` L21-357). The tables below are
written from those files independently of the code under test. Parameter counts agree with the
published file sizes (fp32): Show-o 1,448,176,770 x 4 B = 5.79 GB (``pytorch_model.safetensors``
5.79 GB), the CLIP variant +6.3 M (= +25 MB, 5.82 GB listed for show-o-w-clip-vit-512x512),
MAGVIT-v2 95,387,004 parameters + 106,509 buffer entries, x 4 B = 382 MB (listed 382 MB).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from showo_helpers import TINY_ARCH, save_word_tokenizer, tiny_backbone

from segros.backbones.hub import MissingCheckpointError
from segros.backbones.showo.adapter import ShowoBackbone, ShowoOptions
from segros.backbones.showo.magvit2 import MagvitConfig, MAGVITv2
from segros.backbones.showo.model import ClipConfig, ClipTower, Showo, ShowoConfig
from segros.data.sources import ShapesImageText
from segros.plan import plan_batch, preset


def expected_showo(w_clip_vit: bool) -> dict[str, tuple[int, ...]]:
    """docs/upstream/showo.md section 2: Phi-1.5 (2048 wide, 24 layers, head 64, MLP 8192) over the
    58,498-entry vocabulary, output projection ``dense``, q/k layernorms, untied biased head."""
    V, D, F, H = 58498, 2048, 8192, 64
    table = {"showo.model.embed_tokens.weight": (V, D)}
    for n in range(24):
        p = f"showo.model.layers.{n}."
        table |= {p + "input_layernorm.weight": (D,), p + "input_layernorm.bias": (D,)}
        for proj in ("q_proj", "k_proj", "v_proj", "dense"):
            table |= {p + f"self_attn.{proj}.weight": (D, D), p + f"self_attn.{proj}.bias": (D,)}
        for norm in ("q_layernorm", "k_layernorm"):
            table |= {p + f"self_attn.{norm}.weight": (H,), p + f"self_attn.{norm}.bias": (H,)}
        table |= {p + "mlp.fc1.weight": (F, D), p + "mlp.fc1.bias": (F,)}
        table |= {p + "mlp.fc2.weight": (D, F), p + "mlp.fc2.bias": (D,)}
    table |= {"showo.model.final_layernorm.weight": (D,), "showo.model.final_layernorm.bias": (D,)}
    table |= {"showo.lm_head.weight": (V, D), "showo.lm_head.bias": (V,)}
    if w_clip_vit:
        table |= {
            "mm_projector.0.weight": (D, 1024),
            "mm_projector.0.bias": (D,),
            "mm_projector.2.weight": (D, D),
            "mm_projector.2.bias": (D,),
        }
    return table


def _conv(table, name, cin, cout, k):
    table[f"{name}.weight"] = (cout, cin, k, k)
    table[f"{name}.bias"] = (cout,)


def _norm(table, name, ch):
    table[f"{name}.weight"] = (ch,)
    table[f"{name}.bias"] = (ch,)


def _resblock(table, name, cin, cout):
    _norm(table, f"{name}.norm1", cin)
    _conv(table, f"{name}.conv1", cin, cout, 3)
    _norm(table, f"{name}.norm2", cout)
    _conv(table, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(table, f"{name}.nin_shortcut", cin, cout, 1)


def _mid(table, name, ch):
    _resblock(table, f"{name}.block_1", ch, ch)
    _norm(table, f"{name}.attn_1.norm", ch)
    for conv in ("q", "k", "v", "proj_out"):
        _conv(table, f"{name}.attn_1.{conv}", ch, ch, 1)
    _resblock(table, f"{name}.block_2", ch, ch)


def expected_magvit() -> dict[str, tuple[int, ...]]:
    """docs/upstream/showo.md section 3 / modeling_magvitv2.py: encoder ch 128, ch_mult
    [1,2,2,4,4], blocks [4,3,4,3,4], z 13; decoder ch_mult [1,1,2,2,4], blocks [4,4,3,4,3];
    attn_resolutions [5] never occurs, so levels hold no attention; LFQ buffers."""
    t: dict[str, tuple[int, ...]] = {}
    _conv(t, "encoder.conv_in", 3, 128, 3)
    cin = 128
    for i, (mult, n) in enumerate(zip([1, 2, 2, 4, 4], [4, 3, 4, 3, 4], strict=True)):
        for j in range(n):
            _resblock(t, f"encoder.down.{i}.block.{j}", cin, 128 * mult)
            cin = 128 * mult
        if i < 4:
            _conv(t, f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    _mid(t, "encoder.mid", 512)
    _norm(t, "encoder.norm_out", 512)
    _conv(t, "encoder.conv_out", 512, 13, 3)
    _conv(t, "encoder.quant_conv", 13, 13, 1)
    _conv(t, "decoder.conv_in", 13, 512, 3)
    _mid(t, "decoder.mid", 512)
    cin = 512
    for i in reversed(range(5)):
        mult, n = [1, 1, 2, 2, 4][i], [4, 4, 3, 4, 3][i]
        for j in range(n):
            _resblock(t, f"decoder.up.{i}.block.{j}", cin, 128 * mult)
            cin = 128 * mult
        if i > 0:
            _conv(t, f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    _norm(t, "decoder.norm_out", 128)
    _conv(t, "decoder.conv_out", 128, 3, 3)
    _conv(t, "decoder.post_quant_conv", 13, 13, 1)
    t["quantize.embedding"] = (8192, 13)
    t["quantize.power_vals"] = (13,)
    return t


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("w_clip_vit", [False, True])
def test_full_size_showo_has_the_published_names_and_shapes(w_clip_vit):
    with torch.device("meta"):
        model = Showo(ShowoConfig(w_clip_vit=w_clip_vit))
    assert shapes(model) == expected_showo(w_clip_vit)
    n = sum(p.numel() for p in model.parameters())
    assert n == 1_448_176_770 + (6_295_552 if w_clip_vit else 0)


def test_full_size_magvit_has_the_published_names_and_shapes():
    with torch.device("meta"):
        vq = MAGVITv2()
    assert shapes(vq) == expected_magvit()
    assert sum(p.numel() for p in vq.parameters()) == 95_387_004
    assert vq.cfg.codebook_size == 8192 and vq.cfg.stride == 16


def test_full_size_clip_is_vit_l14_336_with_576_patches():
    with torch.device("meta"):
        clip = ClipTower(ClipConfig())
    s = shapes(clip.tower)
    assert s["embeddings.position_embedding.weight"] == (577, 1024)  # 24 x 24 patches + CLS
    assert s["embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert sum(k.startswith("encoder.layers.23.") for k in s) and not any("layers.24." in k for k in s)
    assert clip.cfg.grid == (24, 24)


def test_lfq_ids_are_big_endian_sign_bits():
    vq = MAGVITv2(MagvitConfig(**TINY_ARCH["magvit"]))
    z = torch.tensor([[1.0, -2.0, 0.5, -0.1]]).view(1, 4, 1, 1)  # bits 1 0 1 0
    assert vq.quantize.indices(z).tolist() == [[0b1010]]
    assert vq.quantize.codes_to_latents(torch.tensor([[0b1010]]), (1, 1)).flatten().tolist() == [1, -1, 1, -1]


def _upstream_folders(bb: ShowoBackbone, root):
    """Write ``bb`` in the published layouts: diffusers-style Show-o config + pytorch_model.safetensors
    (keys ``showo.*``, ``mm_projector.*``, plus a stored rotary buffer as a vendored Phi may keep),
    MAGVIT-v2 pytorch_model.safetensors, and (CLIP variants) a full-CLIP checkpoint."""
    showo, magvit, clip = root / "show-o", root / "magvitv2", root / "clip"
    for d in (showo, magvit, clip):
        d.mkdir()
    state = {k: v.contiguous() for k, v in bb.model.state_dict().items()}
    state["showo.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(state, str(showo / "pytorch_model.safetensors"))
    config = {
        "_class_name": "Showo",
        "_diffusers_version": "0.30.1",
        "codebook_size": bb.vocab.codebook_size,
        "llm_model_path": "microsoft/phi-1_5",
        "llm_vocab_size": bb.vocab.llm_vocab_size,
        "mask_token_id": bb.vocab.mask,
        "num_vq_tokens": bb.num_tokens,
        "vocab_size": bb.vocab.size,
        "w_clip_vit": bb.clip is not None,
    }
    (showo / "config.json").write_text(json.dumps(config))
    vq = {k: v for k, v in bb.vq.state_dict().items() if not k.startswith("quantize.")}
    save_file(vq, str(magvit / "pytorch_model.safetensors"))
    (magvit / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2"}))
    if bb.clip is not None:
        c = bb.clip.cfg
        vision = {
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "image_size": c.image_size,
            "patch_size": c.patch_size,
        }
        (clip / "config.json").write_text(json.dumps({"vision_config": vision}))
        full = {f"vision_model.{k}": v.contiguous() for k, v in bb.clip.tower.state_dict().items()}
        full["text_model.embeddings.token_embedding.weight"] = torch.zeros(3, 2)  # dropped on load
        save_file(full, str(clip / "model.safetensors"))
    return showo, magvit, clip


@pytest.mark.parametrize("clip", [False, True])
def test_upstream_format_folders_load_without_remapping(tmp_path, clip):
    tok = save_word_tokenizer(tmp_path / "tok")
    bb = tiny_backbone(tok, clip=clip, seed=3)
    showo, magvit, clip_dir = _upstream_folders(bb, tmp_path)
    options = ShowoOptions(
        init_from=str(showo),
        magvit=str(magvit),
        clip=str(clip_dir),
        tokenizer=str(tok),
        arch={"magvit": TINY_ARCH["magvit"]},
        image_size=32,
        max_text_len=16,
    )
    loaded = ShowoBackbone.from_options(options).eval()
    assert loaded.model.cfg.hidden_size == 32 and loaded.model.cfg.num_layers == 2  # read off the weights
    for key, value in bb.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    batch = bb.prepare_t2i([ShapesImageText(32, 0, 4)[i] for i in range(2)])
    again = loaded.prepare_t2i([ShapesImageText(32, 0, 4)[i] for i in range(2)])
    assert torch.equal(again.extras["codes"], batch.extras["codes"])
    g = bb(batch, mode="ground")
    ratio = torch.tensor([0.5, 0.7], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    plan = plan_batch(
        g.text_emb, g.image_emb, g.text_valid, preset("segros"), ratio, gen, bb.token_grid, bb.hint_grid
    )
    with torch.no_grad():
        assert torch.equal(bb.reconstruction_loss(batch, plan), loaded.reconstruction_loss(batch, plan))


def test_wrong_image_size_for_the_checkpoint_is_named(tmp_path):
    tok = save_word_tokenizer(tmp_path / "tok")
    showo, magvit, _ = _upstream_folders(tiny_backbone(tok), tmp_path)
    options = ShowoOptions(
        init_from=str(showo), magvit=str(magvit), tokenizer=str(tok), arch={"magvit": TINY_ARCH["magvit"]}
    )  # image_size 256 with a stride-4 tokenizer: 4,096 tokens, the checkpoint has 64
    with pytest.raises(ValueError, match="model.image_size"):
        ShowoBackbone.from_options(options)


def test_a_folder_missing_the_weights_names_them_and_the_config_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "Showo"}))
    with pytest.raises(MissingCheckpointError, match=r"pytorch_model\.safetensors.*model\.init_from"):
        ShowoBackbone.from_options(ShowoOptions(init_from=str(tmp_path)))


def test_offline_published_ids_stop_at_once_naming_the_files(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(
        MissingCheckpointError,
        match=r"config\.json, pytorch_model\.safetensors.*showlab/show-o.*model\.init_from",
    ):
        ShowoBackbone.from_options(ShowoOptions())
    tok = save_word_tokenizer(tmp_path / "tok")
    showo, _, _ = _upstream_folders(tiny_backbone(tok), tmp_path)
    with pytest.raises(
        MissingCheckpointError, match=r"pytorch_model\.safetensors.*showlab/magvitv2.*model\.magvit"
    ):
        ShowoBackbone.from_options(ShowoOptions(init_from=str(showo), tokenizer=str(tok), image_size=32))
