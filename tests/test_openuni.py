"""OpenUni-specific behaviour on a tiny random OpenUni (the real library classes at toy sizes).

What every backbone must do is in test_backbone_contract.py; here: one trainer step per method
with the frozen MLLM and VAE bit-identical afterwards, a loss blind to the plan's masking fields,
upstream's flow-matching loss, understanding tokens and query read-out re-derived from upstream's
code (docs/upstream/openuni.md), the hint positions, the configs (Table 7, refused knobs), the
CLI (train, inspect, generate) and two gloo processes in sync.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_helpers import check_inspect_and_generate, plan_for, recon

from segros.backbones.base import PlanHints
from segros.backbones.openuni.adapter import OpenUniBackbone, OpenUniOptions
from segros.cli import main
from segros.data.sources import ShapesImageText
from segros.shipped import CONFIGS as SHIPPED
from segros.train.config import ConfigError, load_config
from segros.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = SHIPPED / "openuni"
TINY = CONFIGS / "tiny-segros.yaml"
B = 3


@pytest.fixture(scope="module")
def backbone() -> OpenUniBackbone:
    torch.manual_seed(0)
    bb = OpenUniBackbone.from_options(OpenUniOptions(size="tiny", image_size=32, generation_steps=2)).eval()
    with torch.no_grad():  # SANA's output layer starts near zero: make every input reach the loss
        bb.model.proj_out.weight.normal_(0.0, 0.2)
    return bb


@pytest.fixture(scope="module")
def batch(backbone):
    source = ShapesImageText(32, 0, 50)
    return backbone.prepare_t2i([source[i] for i in range(B)])


def tiny_overrides(tmp_path: Path, *more: str) -> list[str]:
    return [
        "run.progress=off", "logging.tensorboard=false", "run.picture_every=0", "data.batch_size=2",
        "run.max_steps=1", "run.save_every=1", *more,
    ]  # fmt: skip


# --- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sft", "reca", "segros"])
def test_one_step_per_method_trains_and_leaves_the_frozen_parts(method, tmp_path):
    cfg = load_config(TINY, tiny_overrides(tmp_path, f"method.preset={method}"))
    trainer = Trainer(cfg, tmp_path / method)
    bb = trainer.backbone
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    result = trainer.run()
    assert result.step == 1 and math.isfinite(result.losses[0]) and result.losses[0] > 0
    after = bb.state_dict()
    frozen = [k for k in before if k.startswith(("mllm.", "vae."))]
    trained = [k for k in before if k.startswith(("model.", "connector.", "projector.", "meta_queries"))]
    assert frozen and trained and len(frozen) + len(trained) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # the MLLM and DC-AE really frozen
    assert not any(p.requires_grad for p in bb.mllm.parameters())
    changed = [k for k in trained if not torch.equal(before[k], after[k])]
    assert "meta_queries" in changed and any(k.startswith("connector.") for k in changed)
    assert any(k.startswith("model.") for k in changed) and any(k.startswith("projector.") for k in changed)


def test_train_transformer_false_freezes_sana_too(tmp_path):
    cfg = load_config(TINY, tiny_overrides(tmp_path, "model.train_transformer=false"))
    trainer = Trainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.backbone.state_dict().items() if k.startswith("model.")}
    trainer.run()
    after = trainer.backbone.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


def test_the_loss_ignores_what_the_plan_does_not_mean_here(backbone, batch):
    plan = plan_for(backbone, batch, "segros")
    base = recon(backbone, batch, plan)
    N = backbone.num_tokens
    other = dataclasses.replace(
        plan,
        seen=torch.rand(B, N) < 0.5,
        loss_weight=torch.rand(B, N),
        mask_ratio=torch.rand(B, dtype=torch.float64),
        grounding=None,
    )
    assert torch.equal(base, recon(backbone, batch, other))
    # what it does read can change it: the hints, the caption, the draw of t and noise
    assert not torch.equal(
        base, recon(backbone, batch, dataclasses.replace(plan, hint_idx=plan.hint_idx.flip(0)))
    )
    assert not torch.equal(base, recon(backbone, batch, plan, seed=8))


def test_flow_matching_loss_is_upstreams_diff_loss(backbone, batch):
    """Re-derived from upstream's diff_loss (docs/upstream/openuni.md section 6): t uniform over
    1000 steps with shift 1 (timestep 1000 - i, sigma = timestep / 1000), x_t = (1 - s) x0 + s e,
    target e - x0, per-sample mean square, batch mean."""
    plan = plan_for(backbone, batch, "sft")
    with torch.no_grad():
        ids, mask = backbone.condition(batch, True)
        cond = backbone.caption_states(ids, mask)
        x0 = backbone.encode_latents(batch.extras["pixels"])
        torch.manual_seed(11)
        noise = torch.randn_like(x0)
        i = (torch.rand(B) * 1000).long()
        t = (1000 - i).float()
        s = (t / 1000).view(B, 1, 1, 1)
        pred = backbone.model(hidden_states=(1 - s) * x0 + s * noise, encoder_hidden_states=cond,
                              timestep=t, return_dict=False)[0]  # fmt: skip
        want = ((pred - (noise - x0)) ** 2).flatten(1).mean(1).mean()
    assert torch.allclose(recon(backbone, batch, plan, seed=11), want, rtol=1e-5, atol=1e-6)


def _upstream_pixel_shuffle(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """InternVL's pixel_shuffle with ps_version v2 (upstream modeling_internvl_chat.py L168-182)."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()


def test_understanding_tokens_are_upstreams_get_semantic_features(backbone, batch):
    pixels = batch.extras["pixels"]
    with torch.no_grad():
        x = (pixels + 1) / 2
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(1, 3, 1, 1)
        x = F.interpolate(x, size=(backbone.vit_size,) * 2, mode="bilinear")
        h = backbone.mllm.model.vision_tower(pixel_values=x).last_hidden_state[:, 1:]
        side = int(h.shape[1] ** 0.5)
        h = _upstream_pixel_shuffle(h.reshape(B, side, side, -1))
        want = backbone.mllm.model.multi_modal_projector(h.reshape(B, -1, h.shape[-1]))
        got = backbone.understanding(pixels)
    assert got.shape == (B, backbone.num_tokens, backbone.llm.config.hidden_size)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(backbone.grounding_inputs(batch).image_emb, got)


def test_queries_are_read_out_as_upstream_does(backbone, batch):
    """Without hints: upstream's prepare_forward_input (queries after the right-padded prompt, a
    2-D mask, positions cumsum(mask) - 1) through the causal LLM, last layer, connector, projector."""
    ids, mask = batch.text_ids, batch.text_mask
    assert not mask.all()  # captions of other lengths: padding sits between prompt and queries
    Q = backbone.meta_queries.shape[0]
    with torch.no_grad():
        full = torch.cat([mask, torch.ones(B, Q, dtype=torch.bool)], dim=1)
        pos = (full.long().cumsum(1) - 1).clamp(min=0)
        embeds = torch.cat([backbone.embed_text(ids), backbone.meta_queries.expand(B, -1, -1)], dim=1)
        h = backbone.llm(inputs_embeds=embeds, attention_mask=full, position_ids=pos).last_hidden_state[
            :, -Q:
        ]
        want = backbone.projector(backbone.connector(inputs_embeds=h).last_hidden_state)
        got = backbone.caption_states(ids, mask)
    assert torch.allclose(got, want, atol=1e-5)


def test_prefix_hints_carry_their_order_not_their_slot(backbone, batch):
    feats = backbone.understanding(batch.extras["pixels"])
    K = 3
    hints = feats[:, :K]
    idx_a = torch.arange(K).expand(B, -1)
    idx_b = idx_a + 7  # the same contents said to come from other cells
    with torch.no_grad():
        run = lambda idx, where: backbone.caption_states(  # noqa: E731
            batch.text_ids, batch.text_mask, PlanHints(hints, idx, where)
        )
        assert torch.allclose(run(idx_a, "prefix"), run(idx_b, "prefix"), atol=1e-6)
        assert not torch.allclose(run(idx_a, "slot"), run(idx_b, "slot"), atol=1e-4)
        none = backbone.caption_states(batch.text_ids, batch.text_mask)
        assert not torch.allclose(run(idx_a, "prefix"), none, atol=1e-4)


def test_generation_follows_the_guidance_scale(backbone):
    prompts = ["a photo of a red circle"]

    def run(scale: float) -> torch.Tensor:
        return backbone.generate_tokens(
            prompts, torch.Generator().manual_seed(0), guidance_scale=scale, steps=2
        )

    assert torch.equal(run(4.5), run(4.5))
    assert not torch.allclose(run(1.0), run(4.5))
    assert run(1.0).shape == (1, 4, *backbone.latent_grid)


# --- configs ---------------------------------------------------------------------------------------

TABLE7 = {"1.6b": ("b-512", 42), "3.6b": ("l-512", 20)}  # lr 1e-5, accumulation 16 (paper Table 7)


@pytest.mark.parametrize("tag", TABLE7)
@pytest.mark.parametrize("method", ["sft", "reca", "segros"])
def test_table7_configs_validate_without_weights(method, tag):
    cfg = load_config(CONFIGS / f"{method}-{tag}.yaml")
    size, batch = TABLE7[tag]
    assert cfg.model["name"] == "openuni" and cfg.model["size"] == size
    assert cfg.model["init_from"] == "wusize/openuni" and cfg.model["stage"] == "text2image23m"
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.optim.grad_accum) == (1e-5, batch, 16)
    # paper Table 7 (OpenUni columns): 5K steps, 50 warm-up steps, wd 0.01, betas (0.9, 0.95)
    assert (cfg.run.max_steps, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (5000, 50, 0.01)
    assert tuple(cfg.optim.betas) == (0.9, 0.95) and cfg.optim.no_decay_1d and cfg.optim.min_lr_ratio == 0
    assert cfg.method.i2t_weight == 0.0 and cfg.data.i2t == "none" and cfg.model["train_transformer"]
    plan = cfg.method.plan_config()
    assert plan.hint_ratio == {"sft": 0.0, "reca": 1.0}.get(method, 0.3)
    assert plan.text_condition == (method != "reca") and plan.hint_pick == {"sft": "none", "reca": "all"}.get(
        method, "top"
    )


@pytest.mark.parametrize(
    "override, key",
    [
        ("method.seen_pick=top", "seen_pick"),
        ("method.seen_pick=bottom", "seen_pick"),
        ("method.mask_schedule=uniform", "mask_schedule"),
        ("method.mask_per_batch=true", "mask_per_batch"),
        ("method.loss_targets=top", "loss_targets"),
        ("method.loss_target_ratio=0.5", "loss_target_ratio"),
        ("method.preset=segros_droploss", "preset"),
        ("method.i2t_weight=1.0", "i2t_weight"),
    ],
)
def test_knobs_that_do_nothing_on_openuni_are_refused(override, key):
    capability = "trains_image_to_text" if key == "i2t_weight" else "masks_tokens"
    with pytest.raises(ConfigError, match=rf"method\.{key}: the openuni backbone .*\b{capability}=False"):
        load_config(CONFIGS / "segros-1.6b.yaml", [override])


def test_the_same_knobs_are_fine_on_a_masking_backbone():
    load_config(
        SHIPPED / "harmon" / "segros-0.5b.yaml",
        ["method.seen_pick=top", "method.mask_schedule=uniform"],
    )


# --- the command line --------------------------------------------------------------------------------


def test_segros_train_inspect_and_generate_on_the_tiny_config(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--config", str(TINY), "--out", str(run), "run.progress=off", "logging.tensorboard=false"])
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["params_in_sync"] and math.isfinite(summary["final_loss"])
    assert (run / "pictures" / "samples-step000003.png").is_file()

    check_inspect_and_generate(main, run, tmp_path, capsys, "4x4")


def test_two_gloo_processes_train_openuni_in_sync(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "segros.cli", "train", "--config", str(TINY), "--out", str(tmp_path), "--max-steps", "2",
           "run.picture_every=0", "run.progress=off", "logging.tensorboard=false",
           "data.batch_size=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["params_in_sync"] is True and summary["step"] == 2
    states = [torch.load(tmp_path / "checkpoints/step-2" / f"rank-{r}.pt", weights_only=True) for r in (0, 1)]
    assert not torch.equal(states[0]["generator"], states[1]["generator"])  # each rank its own plans


def test_the_tiny_tokenizer_holds_the_words_of_the_named_corpus(monkeypatch):
    """Without ``model.tokenizer`` the tiny OpenUni's word-level tokenizer is built from the words
    ``model.corpus`` names (segros.data.corpora), not from a data source the model knows."""
    from corpus_helpers import TOY_WORDS, toy_corpus

    from segros.data import corpora

    monkeypatch.setitem(corpora.CORPORA, "toy", toy_corpus([(0, 0, 0)]))
    toy = OpenUniBackbone.build(OpenUniOptions(size="tiny", image_size=32, corpus="toy"))
    vocab = toy.text_tokenizer.get_vocab()
    shapes = OpenUniBackbone.build(OpenUniOptions(size="tiny", image_size=32)).text_tokenizer.get_vocab()
    assert set(TOY_WORDS) <= set(vocab) and "circle" not in vocab
    assert "circle" in shapes and not set(TOY_WORDS) & set(shapes)
