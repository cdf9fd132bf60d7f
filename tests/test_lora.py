"""LoRA through peft on the tiny configs of every backbone: only the adapters (and named modules)
train, the input embeddings the grounding reads stay bit-identical, ``--resume`` is exact, and
the merged model (``load_backbone``, ``segros export --merge``) gives the unmerged logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_config, tiny_model_section

from segros.backbones import lora
from segros.backbones.registry import build_backbone, load_backbone
from segros.cli import main
from segros.shipped import CONFIGS as SHIPPED
from segros.train.config import ConfigError, load_config, validate
from segros.train.loop import Trainer, train

RUN = {"save_every": 1, "picture_every": 0, "log_every": 1, "progress": False, "seed": 0}


def _config(name, request, small_tokenizer, steps, *overrides):
    """The tiny config of backbone ``name`` with LoRA rank 4 (plus ``overrides``)."""
    lora_overrides = ["lora.rank=4", "lora.dropout=0.1", *overrides]
    if name == "bagel":  # a random BAGEL's velocity head starts at zero (upstream's init): frozen, it
        lora_overrides.append("lora.trainable=[model.llm2vae.*]")  # would pass no gradient back
    if name == "tiny":
        return tiny_config(
            small_tokenizer, f"run.max_steps={steps}", "run.save_every=1", "optim.schedule_steps=2",
            *lora_overrides,
        )  # fmt: skip
    raw = {
        "model": tiny_model_section(name, request, small_tokenizer),
        # OpenUni's understanding model is frozen: no image-to-text term (its capabilities)
        "method": {"preset": "segros", **({"i2t_weight": 0.0} if name == "openuni" else {})},
        "data": {"source": "shapes", "batch_size": 2, "i2t": "none" if name == "openuni" else "shapes"},
        "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule_steps": 2},
        "run": {**RUN, "max_steps": steps},
        "logging": {"tensorboard": False},
    }
    from segros.train.config import apply_overrides

    return validate(apply_overrides(raw, lora_overrides))


def _embedding_names(backbone):
    """The input embedding tables anywhere in the backbone (OpenUni's sit in its frozen MLLM)."""
    return lora._embedding_params(backbone)


def test_lora_section_is_validated_with_key_paths():
    assert load_config(None).lora.rank == 0 and not load_config(None).lora.enabled
    assert load_config(None, ["lora=null"]).lora is None
    with pytest.raises(ConfigError, match=r"lora\.rank"):
        load_config(None, ["lora.rank=-1"])
    with pytest.raises(ConfigError, match=r"lora\.dropout"):
        load_config(None, ["lora.dropout=1.5"])
    with pytest.raises(ConfigError, match=r"lora\.ranks"):
        load_config(None, ["lora.ranks=4"])


@pytest.mark.parametrize("name", ["tiny", "showo", "harmon", "openuni", "bagel"])
def test_lora_trains_only_adapters_resumes_exactly_and_merges_to_the_same_logits(
    name, request, small_tokenizer, tmp_path
):
    torch.manual_seed(0)  # the trainer's initial weights: set_seed(run.seed) before building
    initial = build_backbone(_config(name, request, small_tokenizer, 2).model_options()).state_dict()

    full = train(_config(name, request, small_tokenizer, 2), tmp_path / "full")
    first = train(_config(name, request, small_tokenizer, 1), tmp_path / "split")
    second = train(_config(name, request, small_tokenizer, 2), tmp_path / "split", resume=True)
    assert first.losses + second.losses == full.losses  # exactly

    ckpt = tmp_path / "full/checkpoints/step-2"
    adapter_cfg = json.loads((ckpt / "adapter/adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and adapter_cfg["peft_type"] == "LORA"
    # the base weights did not move (plain names, no peft prefixes); the adapters did
    base = load_file(str(ckpt / "model.safetensors"))
    assert base.keys() == initial.keys()
    trained_fully = {k for k in base if name == "bagel" and k.startswith("model.llm2vae.")}
    for key in base.keys() - trained_fully:
        assert torch.equal(base[key], initial[key]), key
    assert all(not torch.equal(base[k], initial[k]) for k in trained_fully)
    adapters = {**load_file(str(ckpt / "adapter/adapter_model.safetensors"))}
    assert adapters and any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapters.items())
    split = load_file(str(tmp_path / "split/checkpoints/step-2/adapter/adapter_model.safetensors"))
    assert all(torch.equal(adapters[k], split[k]) for k in adapters)

    # the frozen base is written once and hard-linked into later checkpoints, resumed or not;
    # BAGEL trains model.llm2vae fully, so its base changes and is written every time
    for run in ("full", "split"):
        one, two = (tmp_path / run / f"checkpoints/step-{s}/model.safetensors" for s in (1, 2))
        assert (one.stat().st_ino == two.stat().st_ino) == (name != "bagel"), run
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert ("model.safetensors" in state.get("lora_base_files", [])) == (name != "bagel")

    summary = json.loads((tmp_path / "full/train_summary.json").read_text())
    assert summary["lora_rank"] == 4 and 0 < summary["trainable_share"] < 0.1

    # unmerged (the trainer's model, loaded from the checkpoint) vs merged (load_backbone, export)
    trainer = Trainer(_config(name, request, small_tokenizer, 2), tmp_path / "full", resume=True)
    unmerged = trainer.backbone.eval()
    assert lora.is_applied(unmerged)
    trainable = {n for n, p in unmerged.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".llm2vae." in n and name == "bagel" for n in trainable)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in unmerged.parameters() if p.requires_grad}
    embed = _embedding_names(unmerged)
    assert embed and embed <= base.keys()
    i2t_stream = iter(trainer.i2t) if trainer.i2t is not None else None
    batch, plan, i2t = trainer._micro_batch(iter(trainer.t2i), i2t_stream)

    def outputs(backbone):
        heads = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: heads.append(o.detach()))
            for n, m in backbone.named_modules()
            # lm heads; TinyUMM's logits are F.linear(model.norm's output, model.head.weight);
            # OpenUni's SANA predicts its velocity with model.proj_out
            if (n.endswith("head") and isinstance(m, torch.nn.Linear))
            or lora.plain_name(n) in ("model.norm", "model.proj_out")
        ]
        torch.manual_seed(1)  # diffusion noise and any sampling: the same draws
        with torch.no_grad():
            terms = backbone(batch, plan=plan, i2t=i2t)
        for h in hooks:
            h.remove()
        return heads, terms

    heads_a, terms_a = outputs(unmerged)
    exported = tmp_path / "merged"
    assert main(["export", "--merge", str(tmp_path / "full"), "--out", str(exported)]) == 0
    assert not (exported / "adapter").exists()
    for merged in (load_backbone(tmp_path / "full"), load_backbone(exported)):
        merged.eval()
        assert not lora.is_applied(merged)
        heads_b, terms_b = outputs(merged)
        assert heads_a and len(heads_a) == len(heads_b)
        for a, b in zip(heads_a, heads_b, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        for k in terms_a:
            torch.testing.assert_close(terms_b[k], terms_a[k], atol=1e-5, rtol=1e-5)
        # the input embeddings the grounding reads are bit-identical to the initial ones
        state = merged.state_dict()
        assert all(torch.equal(state[k], initial[k]) for k in embed)


def test_linked_base_outlives_its_first_checkpoint_and_a_changed_buffer_is_written(small_tokenizer, tmp_path):
    cfg = _config("tiny", None, small_tokenizer, 3, "run.keep_last=1")
    train(cfg, tmp_path / "run")
    folders = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step-*"))
    assert folders == ["step-3"]  # the first two, which wrote and first linked the base, are gone
    last = tmp_path / "run/checkpoints/step-3"
    torch.manual_seed(0)
    initial = build_backbone(cfg.model_options()).state_dict()
    base = load_file(str(last / "model.safetensors"))
    assert base.keys() == initial.keys() and all(torch.equal(base[k], initial[k]) for k in base)
    assert load_backbone(tmp_path / "run") is not None

    # a buffer that changed (no parameter can) makes the next checkpoint write the base anew
    more = _config("tiny", None, small_tokenizer, 4, "run.keep_last=2")
    trainer = Trainer(more, tmp_path / "run", resume=True)
    trainer.backbone.register_buffer("scale", torch.ones(1), persistent=False)  # a buffer appears
    trainer.run()
    fresh = tmp_path / "run/checkpoints/step-4/model.safetensors"
    assert fresh.stat().st_ino != (last / "model.safetensors").stat().st_ino
    assert fresh.stat().st_nlink == 1


def test_trainable_modules_train_fully_and_embeddings_are_refused(small_tokenizer, tmp_path):
    cfg = _config("tiny", None, small_tokenizer, 2, "lora.trainable=[model.head.*, model.norm.*]")
    result = train(cfg, tmp_path / "run")
    assert len(result.losses) == 2
    torch.manual_seed(0)
    initial = build_backbone(cfg.model_options()).state_dict()
    trained = load_file(str(tmp_path / "run/checkpoints/step-2/model.safetensors"))
    assert not torch.equal(trained["model.head.weight"], initial["model.head.weight"])
    assert torch.equal(trained["model.embed.weight"], initial["model.embed.weight"])
    assert torch.equal(trained["model.blocks.0.qkv.weight"], initial["model.blocks.0.qkv.weight"])
    # trained fully, so the merged model carries them too
    merged = load_backbone(tmp_path / "run").state_dict()
    assert torch.equal(merged["model.head.weight"], trained["model.head.weight"])

    with pytest.raises(ValueError, match="input embeddings"):
        Trainer(_config("tiny", None, small_tokenizer, 1, "lora.trainable=[model.embed.*]"), tmp_path / "x")
    with pytest.raises(ValueError, match="matches no parameter"):
        Trainer(_config("tiny", None, small_tokenizer, 1, "lora.trainable=[nothing.*]"), tmp_path / "y")
    with pytest.raises(ValueError, match=r"lora\.targets"):
        Trainer(_config("tiny", None, small_tokenizer, 1, "lora.targets=[no_such_linear]"), tmp_path / "z")


def test_resume_with_lora_switched_off_is_refused(small_tokenizer, tmp_path):
    train(_config("tiny", None, small_tokenizer, 1), tmp_path)
    with pytest.raises(ValueError, match="LoRA adapter"):
        Trainer(tiny_config(small_tokenizer, "run.max_steps=2"), tmp_path, resume=True)


def test_init_from_a_lora_checkpoint_is_refused_and_from_its_merged_export_works(small_tokenizer, tmp_path):
    train(_config("tiny", None, small_tokenizer, 1), tmp_path / "run")
    with pytest.raises(ValueError, match="export --merge"):
        Trainer(tiny_config(small_tokenizer, f"model.init_from={tmp_path / 'run'}"), tmp_path / "next")
    assert main(["export", "--merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    cfg = tiny_config(small_tokenizer, f"model.init_from={tmp_path / 'merged'}", "run.max_steps=1")
    assert train(cfg, tmp_path / "next").step == 1


def test_export_without_an_adapter_is_a_clear_error(small_tokenizer, tmp_path, capsys):
    train(tiny_config(small_tokenizer, "run.max_steps=1", "run.save_every=1"), tmp_path / "run")
    assert main(["export", "--merge", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 1
    assert "no LoRA adapter" in capsys.readouterr().err


def test_the_command_line_run_of_the_issue(tmp_path, capsys):
    """``segros train --config configs/tiny/segros.yaml --max-steps 3 lora.rank=4``, then --resume."""
    config = SHIPPED / "tiny" / "segros.yaml"
    quiet = ["run.progress=false", "logging.tensorboard=false", "run.picture_every=0"]
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--out", str(out), "--max-steps", "3", "lora.rank=4", *quiet]
    assert main(argv) == 0
    assert (out / "checkpoints/step-3/adapter/adapter_model.safetensors").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["trainable_share"] < 0.1 and summary["trainable_params"] < summary["total_params"]
    argv[argv.index("3")] = "4"
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "train_summary.json").read_text())["step"] == 4


def test_buffer_fingerprint_reads_every_kind_of_buffer_and_sees_a_changed_value():
    from segros.train.shared_base import buffers_fingerprint

    module = torch.nn.Module()
    module.register_buffer("scalar", torch.tensor(2.0))
    module.register_buffer("bf16", torch.zeros(3, dtype=torch.bfloat16))
    module.register_buffer("empty", torch.zeros(0))
    before = buffers_fingerprint(module)
    assert before is not None and before == buffers_fingerprint(module)
    module.scalar.add_(1)
    assert buffers_fingerprint(module) != before
