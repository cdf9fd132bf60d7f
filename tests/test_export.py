"""``segros export``: upstream's release layouts (exact key names and shapes of the published
checkpoints, a round trip back through segros's upstream loaders with identical outputs) and the
Hub folder (sharded weights, a model card whose metadata parses, loadable by segros), offline.

The published key lists are the ones the adapters' checkpoint tests already verify against
upstream (tests/test_{showo,harmon,openuni}_checkpoints.py), reused here at full size on the meta
device, so nothing is allocated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from harmon_helpers import tiny_backbone as harmon_backbone
from harmon_helpers import tiny_options as harmon_options
from showo_helpers import TINY_ARCH
from showo_helpers import tiny_backbone as showo_backbone
from test_harmon_checkpoints import expected as harmon_expected
from test_openuni_checkpoints import UPSTREAM, meta_backbone, openuni_pth_shapes
from test_showo_checkpoints import _upstream_folders, expected_showo
from train_helpers import tiny_config

from segros.backbones.files import unwrap
from segros.backbones.harmon.model import Harmon, HarmonConfig
from segros.backbones.harmon.weights import upstream_state as harmon_upstream
from segros.backbones.openuni import weights as W
from segros.backbones.openuni.adapter import OpenUniBackbone, OpenUniOptions
from segros.backbones.registry import load_backbone
from segros.backbones.showo.adapter import ShowoBackbone, ShowoOptions
from segros.backbones.showo.model import Showo, ShowoConfig
from segros.backbones.showo.weights import upstream_state as showo_upstream
from segros.cli import main
from segros.data.sources import ShapesImageText
from segros.plan import preset
from segros.supervision import ground_and_plan, sample_ratio


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# --- the published key lists, at full size ------------------------------------------------------
@pytest.mark.parametrize("w_clip_vit", [False, True])
def test_showo_export_has_the_published_keys_and_shapes(w_clip_vit):
    with torch.device("meta"):
        model = Showo(ShowoConfig(w_clip_vit=w_clip_vit))
    assert shapes(showo_upstream(model.state_dict())) == expected_showo(w_clip_vit)


@pytest.mark.parametrize("size", ["0.5b", "1.5b"])
def test_harmon_export_has_the_published_keys_and_shapes(size):
    with torch.device("meta"):
        model = Harmon(HarmonConfig.for_size(size))
    assert shapes(harmon_upstream(model.state_dict())) == harmon_expected(size)


@pytest.mark.parametrize("size", ["b-512", "l-512"])
def test_openuni_export_has_the_published_keys_and_shapes(size):
    bb = meta_backbone(size)
    state = bb.state_dict()
    pretrain = W.upstream_pth_state(state, with_transformer=False)
    assert shapes(pretrain) == openuni_pth_shapes(*UPSTREAM[size]["connector"], UPSTREAM[size]["sana"])
    finetune = W.upstream_pth_state(state, with_transformer=True)
    sana = {"transformer." + k: tuple(v.shape) for k, v in bb.model.state_dict().items()}
    assert shapes(finetune) == {**shapes(pretrain), **sana}  # SANA as diffusers' class names it
    assert not any(k.startswith(("mllm.", "lmm.", "vae.", "model.")) for k in finetune)


# --- round trips: export, then segros's upstream loader, identical outputs ---------------------
def _batch(bb, n=2):
    return bb.prepare_t2i([ShapesImageText(32 if bb.name != "harmon" else 64, 0, 8)[i] for i in range(n)])


def _loss(bb, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    plan = ground_and_plan(bb, batch, preset("segros"), sample_ratio(bb, len(batch), gen), gen)
    torch.manual_seed(1)  # diffusion noise and masking draws: the same for both models
    with torch.no_grad():
        return bb.reconstruction_loss(batch, plan)


def _export(ckpt, out):
    assert main(["export", str(ckpt), "--format", "upstream", "--out", str(out)]) == 0
    return json.loads((out / "segros-export.json").read_text())


def test_showo_round_trip(showo_tokenizer, tmp_path):
    bb = showo_backbone(showo_tokenizer, seed=3)
    bb.save_pretrained(tmp_path / "ckpt")
    manifest = _export(tmp_path / "ckpt", tmp_path / "up")
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == [
        "config.json", "pytorch_model.safetensors", "segros-export.json"]  # fmt: skip
    config = json.loads((tmp_path / "up/config.json").read_text())
    assert config["_class_name"] == "Showo" and config["vocab_size"] == bb.vocab.size
    assert config["num_vq_tokens"] == bb.num_tokens and config["mask_token_id"] == config["vocab_size"] - 1
    assert manifest["references"]["vq_model (MAGVIT-v2)"] == "showlab/magvitv2"  # referenced, not copied
    _, magvit, _ = _upstream_folders(bb, tmp_path)  # the tiny model's own tokenizer weights
    back = ShowoBackbone.from_options(ShowoOptions(
        init_from=str(tmp_path / "up"), magvit=str(magvit), tokenizer=str(showo_tokenizer),
        arch={"magvit": TINY_ARCH["magvit"]}, image_size=32, max_text_len=16,
    )).eval()  # fmt: skip
    for key, value in bb.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    batch = _batch(bb)
    assert torch.equal(_loss(bb, batch), _loss(back, batch))
    with torch.no_grad():
        ids = batch.text_ids
        assert torch.equal(bb.model.showo(input_ids=ids).logits, back.model.showo(input_ids=ids).logits)


def test_harmon_round_trip(harmon_tokenizer, tmp_path):
    bb = harmon_backbone(harmon_tokenizer, seed=3).eval()
    bb.save_pretrained(tmp_path / "ckpt")
    manifest = _export(tmp_path / "ckpt", tmp_path / "up")
    pth = tmp_path / "up" / "harmon_tiny.pth"
    state = torch.load(pth, weights_only=True)
    assert set(state) == set(bb.model.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert manifest["references"]["vae (kl16.ckpt)"] == "wusize/harmon"
    (tmp_path / "vae").mkdir()
    torch.save({"model": dict(bb.vae.state_dict())}, tmp_path / "vae" / "kl16.ckpt")  # upstream's own file
    back = HarmonBackbone_from(harmon_tokenizer, tmp_path)
    for key, value in bb.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    batch = _batch(bb)
    assert torch.equal(_loss(bb, batch), _loss(back, batch))
    with torch.no_grad():
        ids = batch.text_ids
        assert torch.equal(bb.model.llm(input_ids=ids).logits, back.model.llm(input_ids=ids).logits)


def HarmonBackbone_from(tokenizer, root):  # noqa: N802 - reads as the constructor it stands for
    from segros.backbones.harmon.adapter import HarmonBackbone

    options = harmon_options(tokenizer, init_from=str(root / "up"), checkpoint_file="harmon_tiny.pth",
                             vae=str(root / "vae"))  # fmt: skip
    return HarmonBackbone.from_options(options).eval()


def test_openuni_round_trip(tmp_path):
    torch.manual_seed(0)
    bb = OpenUniBackbone.from_options(OpenUniOptions(size="tiny", image_size=32, generation_steps=2)).eval()
    bb.save_pretrained(tmp_path / "ckpt")
    manifest = _export(tmp_path / "ckpt", tmp_path / "up")
    assert manifest["files"] == ["openuni_tiny_blip3o60k.pth"]  # SANA trained: the fine-tune layout
    state = torch.load(tmp_path / "up" / manifest["files"][0], weights_only=True)
    assert {k.split(".")[0] for k in state} == {"meta_queries", "connector", "projector", "transformer"}
    # upstream's loader path: route_openuni into a model whose trained parts are fresh random ones
    torch.manual_seed(5)
    back = OpenUniBackbone.from_options(OpenUniOptions(size="tiny", image_size=32, generation_steps=2)).eval()
    back.mllm.load_state_dict(bb.mllm.state_dict())  # the frozen parts upstream loads from their repos
    back.vae.load_state_dict(bb.vae.state_dict())
    assert not torch.equal(back.meta_queries, bb.meta_queries)
    routed, unknown = W.route_openuni(unwrap(state, "pth"))
    assert unknown == [] and back.load_state_dict(routed, strict=False).unexpected_keys == []
    for key, value in bb.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    batch = _batch(bb)
    assert torch.equal(_loss(bb, batch), _loss(back, batch))
    gen = lambda m: m.generate_tokens(["a red circle"], torch.Generator().manual_seed(0))  # noqa: E731
    assert torch.equal(gen(bb), gen(back))


def test_tiny_has_no_upstream_layout(small_tokenizer, tmp_path, capsys):
    from segros.backbones.registry import build_backbone

    build_backbone(tiny_config(small_tokenizer).model_options()).save_pretrained(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), "--format", "upstream", "--out", str(tmp_path / "u")]) != 0
    assert "'tiny' has no upstream release layout" in capsys.readouterr().err


# --- the Hub folder ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(small_tokenizer, tmp_path_factory):
    from segros.train.loop import train

    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(small_tokenizer, "run.max_steps=2", "run.save_every=2", "run.seed=7",
                      "method.preset=segros", "method.hint_ratio=0.25")  # fmt: skip
    train(cfg, out)
    summary = out / "eval-step-2" / "summary.json"  # what segros eval caches beside its images
    summary.parent.mkdir()
    summary.write_text(json.dumps({"overall": 0.42, "images": 8}))
    return out


def test_hub_folder_is_sharded_carded_and_loads_back(tiny_run, tmp_path):
    out = tmp_path / "hub"
    small = ["--max-shard-size", "20KB"]  # several shards even for the tiny model
    assert main(["export", str(tiny_run), "--format", "hub", "--out", str(out), *small]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    original = load_backbone(tiny_run)
    again = load_backbone(out)
    assert original.state_dict().keys() == again.state_dict().keys()
    for key, value in original.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key

    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "segros" and "segros" in meta["tags"]
    facts = meta["segros"]
    assert facts["backbone"] == "tiny" and facts["method"] == "segros"
    assert facts["step"] == 2 and facts["seed"] == 7
    assert facts["settings"]["hint_ratio"] == 0.25 and facts["plan"]["hint_ratio"] == 0.25
    assert facts["training_data"]["source"] == "shapes"
    assert facts["version"] == __import__("segros").__version__
    assert facts["evaluation"] == {"eval-step-2/summary.json": {"overall": 0.42, "images": 8}}
    assert "hint_ratio: 0.25" in card.text
    assert "base_model" not in meta and facts["base_weights"] is None  # the tiny run starts from random


def test_push_offline_says_so_in_one_line_and_keeps_the_folder(tiny_run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "segros.cli", "export", str(tiny_run), "--format", "hub",
           "--out", str(tmp_path / "hub"), "--push", "someone/segros-tiny"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if "not pushed" in line]
    assert len(said) == 1 and "HF_HUB_OFFLINE" in said[0] and "someone/segros-tiny" in said[0]
    assert (tmp_path / "hub" / "README.md").is_file()


def test_merge_keeps_working_and_formats_are_checked(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "x")]) == 2  # no format chosen
    push = ["--format", "upstream", "--push", "a/b"]
    assert main(["export", str(tiny_run), *push, "--out", str(tmp_path / "y")]) == 2
    assert main(["export", str(tiny_run), "--merge", "--out", str(tmp_path / "z")]) != 0
    assert "no LoRA adapter" in capsys.readouterr().err


def test_card_names_the_published_base_weights_and_hub_datasets():
    from huggingface_hub import ModelCard

    from segros.model_card import build_card

    facts = {
        "segros_version": "9.9", "step": 5000, "seed": 3, "method": {"preset": "reca"},
        "config": {"model": {"name": "harmon", "init_from": "wusize/harmon"}},
        "data": {"source": "files", "path": "BLIP3o/BLIP3o-60k"},
    }  # fmt: skip
    card = build_card({"backbone": "harmon", "options": {"init_from": None}}, facts)
    meta = ModelCard(str(card)).data.to_dict()
    assert meta["base_model"] == "wusize/harmon" and meta["datasets"] == ["BLIP3o/BLIP3o-60k"]
    assert meta["segros"]["method"] == "reca" and meta["segros"]["step"] == 5000
    local = build_card({"backbone": "harmon", "options": {}}, {**facts, "data": {"path": "/data/x"}})
    assert "datasets" not in ModelCard(str(local)).data.to_dict()
