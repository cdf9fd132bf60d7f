"""BAGEL-specific behaviour on a tiny random BAGEL (the real classes at toy sizes).

What every backbone must do is in test_backbone_contract.py; here, restated from upstream's code
(docs/upstream/bagel.md): the packing and split mask of a mixed understanding / generation batch,
the expert routing, the latent patching and the fixed tables, the flow-matching and image-to-text
losses, the timestep shift and guidance, where the hints go, the configs (RecA's recipe, refused
knobs), the command line (train, resume, inspect, generate) and two gloo processes in sync.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from train_helpers import check_inspect_and_generate, plan_for, recon

from segros.backbones.bagel import model as M
from segros.backbones.bagel import vae as V
from segros.backbones.bagel.adapter import BagelBackbone, BagelOptions
from segros.backbones.registry import load_backbone
from segros.cli import main
from segros.data.sources import ShapesConversations, ShapesImageText
from segros.shipped import CONFIGS as SHIPPED
from segros.train.config import ConfigError, load_config

CONFIGS = SHIPPED / "bagel"
TINY = CONFIGS / "tiny-segros.yaml"
B = 3


@pytest.fixture(scope="module")
def backbone() -> BagelBackbone:
    torch.manual_seed(0)
    bb = BagelBackbone.from_options(
        BagelOptions(size="tiny", image_size=32, vit_image_size=32, generation_steps=3)
    )
    with torch.no_grad():  # the velocity head starts at zero (as upstream): make every input reach the loss
        bb.model.llm2vae.weight.normal_(0.0, 0.2)
    return bb.eval()


@pytest.fixture(scope="module")
def batch(backbone):
    source = ShapesImageText(32, 0, 50)
    return backbone.prepare_t2i([source[i] for i in range(B)])


# --- packing, mask, experts ---------------------------------------------------------------------------


def upstream_mask(splits: list[tuple[int, str]]) -> torch.Tensor:
    """One sample's mask as upstream's ``prepare_attention_mask_per_sample`` builds it: each split
    sees every earlier column, itself causally (``causal``) or wholly; then every noise split's
    columns are cleared for all rows but its own."""
    n = sum(s for s, _ in splits)
    mask = torch.zeros(n, n, dtype=torch.bool)
    start = 0
    for size, mode in splits:
        block = torch.ones(size, size, dtype=torch.bool)
        mask[start : start + size, start : start + size] = block.tril() if mode == "causal" else block
        mask[start : start + size, :start] = True
        start += size
    start = 0
    for size, mode in splits:
        if mode == "noise":
            mask[:, start : start + size] = False
            mask[start : start + size, start : start + size] = True
        start += size
    return mask


def test_a_mixed_batch_is_packed_with_upstreams_splits_mask_and_rope():
    """An understanding sample (ViT image, question), a generation sample (caption, noisy latents)
    and an editing-like sample (clean latents, instruction, noisy latents) in one pack."""
    p = M.Packer(start_id=90, end_id=91)
    p.sample().image(M.VIT, torch.arange(4)).text([1, 5, 6, 0])
    p.sample().text([1, 7, 0]).image(M.VAE, torch.arange(4), noisy=True)
    p.sample().image(M.VAE, torch.arange(2), noisy=False).text([1, 8, 0]).image(
        M.VAE, torch.arange(2), noisy=True
    )
    pack = p.build()
    lens = [6 + 4, 3 + 6, 4 + 3 + 4]
    S = sum(lens)
    want = torch.zeros(S, S, dtype=torch.bool)
    splits = [
        [(6, "full"), (4, "causal")],
        [(3, "causal"), (6, "noise")],
        [(4, "full"), (3, "causal"), (4, "noise")],
    ]
    start = 0
    for n, sample in zip(lens, splits, strict=True):
        want[start : start + n, start : start + n] = upstream_mask(sample)  # samples never see each other
        start += n
    assert torch.equal(pack.mask, want)
    # rope: one id per image split (advancing after a clean one only), consecutive in text
    assert (
        pack.position_ids.tolist()
        == [0] * 6 + [1, 2, 3, 4] + [0, 1, 2] + [3] * 6 + [0] * 4 + [1, 2, 3] + [4] * 4
    )
    kinds = {M.TEXT: "t", M.VIT: "i", M.VAE: "g"}
    assert "".join(kinds[int(k)] for k in pack.kind) == "tiiiitttttttttggggttggtttttggt"
    assert pack.noisy.tolist() == [True] * 4 + [False] * 2 + [True] * 2
    assert pack.text_ids[pack.kind == M.TEXT].tolist()[:6] == [90, 91, 1, 5, 6, 0]  # the markers are text
    assert pack.text_slots == [[6, 7, 8, 9], [10, 11, 12], [23, 24, 25]]


def test_experts_route_by_token_and_nothing_sees_the_noise(backbone):
    """Text tokens run the understanding weights, latent tokens the ``_moe_gen`` ones; since no
    token outside a noise split attends to it, the caption is blind to the generation expert (the
    vision markers around the latents are text tokens inside the noise split: they see it)."""
    net = backbone.model
    ids = backbone.ids
    pack = (
        M.Packer(ids["start"], ids["end"])
        .sample()
        .text([1, 5, 6, 0])
        .image(M.VAE, torch.arange(4), noisy=True)
        .build()
    )
    lat, t = torch.randn(4, 64), torch.full((4,), 0.5)
    text, gen = torch.arange(len(pack.kind)) < 4, pack.kind == M.VAE  # the caption split; the latents
    with torch.no_grad():
        before = net(pack, None, lat, t)
        layer = net.language_model.model.layers[0]
        saved = layer.mlp_moe_gen.down_proj.weight.clone()
        layer.mlp_moe_gen.down_proj.weight.add_(0.5)
        after_gen = net(pack, None, lat, t)
        layer.mlp_moe_gen.down_proj.weight.copy_(saved)
        saved = layer.mlp.down_proj.weight.clone()
        layer.mlp.down_proj.weight.add_(0.5)
        after_und = net(pack, None, lat, t)
        layer.mlp.down_proj.weight.copy_(saved)
    assert torch.equal(after_gen[text], before[text]) and not torch.allclose(after_gen[gen], before[gen])
    assert not torch.allclose(after_und[text], before[text]) and not torch.allclose(
        after_und[gen], before[gen]
    )


def test_samples_of_a_pack_do_not_see_each_other(backbone):
    """Attention runs sample by sample: a sample's hidden states are those it has packed alone."""
    ids = backbone.ids
    lat, vit = torch.randn(8, 64), torch.randn(4, 32)

    def packed(*samples):
        p = M.Packer(ids["start"], ids["end"])
        for s in samples:
            s(p.sample())
        return p.build()

    def first(p):
        return p.image(M.VIT, torch.arange(4)).text([1, 5, 6, 0]).image(M.VAE, torch.arange(4), noisy=True)

    def second(p):
        return p.text([1, 7, 0]).image(M.VAE, torch.arange(4), noisy=True)

    t = torch.full((8,), 0.3)
    with torch.no_grad():
        both = backbone.model(packed(first, second), vit, lat, t)
        alone = backbone.model(packed(first), vit, lat[:4], t[:4])
        other = backbone.model(packed(second), None, lat[4:], t[4:])
    assert torch.allclose(both, torch.cat([alone, other]), atol=1e-5)


def test_latent_patches_and_fixed_tables_are_upstreams():
    x = torch.randn(2, 16, 6, 4)
    p = 2
    want = torch.stack(
        [torch.einsum("chpwq->hwpqc", xi.reshape(16, 3, p, 2, p)).reshape(-1, p * p * 16) for xi in x]
    )
    assert torch.equal(M.patchify(x, p), want) and torch.equal(M.unpatchify(want, 3, 2, p), x)
    # PositionEmbedding: numpy's meshgrid(w, h), first half from grid[0] (the column), sin then cos
    dim, side = 16, 5
    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)))
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def one(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one(grid[0]), one(grid[1])], axis=1)
    assert torch.allclose(M.sincos_2d(dim, side), torch.from_numpy(table).float(), atol=1e-6)
    assert M.grid_positions(2, 3, 70).tolist() == [0, 1, 2, 70, 71, 72]
    # TimestepEmbedder: cos then sin of t * exp(-ln(10000) k / 128), t in [0, 1] as given
    emb = M.TimestepEmbedder(8)
    t = torch.tensor([0.0, 0.3, 1.0])
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    want = emb.mlp(torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1))
    assert torch.allclose(emb(t), want)


# --- losses ----------------------------------------------------------------------------------------


def test_flow_matching_loss_is_upstreams(backbone, batch):
    """With the velocity head at zero the loss is the mean over tokens of the channel mean of
    (e - x_0)^2, with x_0 the scaled posterior sample, drawn in upstream's order from the seed;
    t = shift(sigmoid(n)) reaches the embedding (the loss moves with the shift)."""
    plan = plan_for(backbone, batch, "sft")
    mean, std = V.posterior(backbone.vae, batch.extras["pixels"])
    torch.manual_seed(7)
    x0 = M.patchify(V.scale(backbone.vae, mean + std * torch.randn_like(mean)), 2)
    torch.randn(B)  # the timesteps' draw
    noise = torch.randn_like(x0)
    head = backbone.model.llm2vae
    saved = head.weight.clone()
    with torch.no_grad():
        head.weight.zero_()
        got = recon(backbone, batch, plan)
        head.weight.copy_(saved)
    assert torch.allclose(got, ((noise - x0) ** 2).mean(-1).mean(), rtol=1e-5)
    assert backbone.shifted(torch.tensor([0.5, 0.25]), 3.0).tolist() == pytest.approx([0.75, 0.5])
    base = recon(backbone, batch, plan)
    backbone.options.timestep_shift = 3.0
    try:
        assert not torch.allclose(recon(backbone, batch, plan), base)
    finally:
        backbone.options.timestep_shift = 1.0


def test_the_loss_ignores_what_the_plan_does_not_mean_here(backbone, batch):
    """Nothing is masked: the plan's seen tokens and loss weights change nothing."""
    import dataclasses

    plan = plan_for(backbone, batch, "segros")
    other = dataclasses.replace(plan, seen=~plan.seen, loss_weight=torch.rand_like(plan.loss_weight))
    assert torch.equal(recon(backbone, batch, plan), recon(backbone, batch, other))


def test_i2t_reads_the_image_through_the_understanding_path_only(backbone):
    conversations = ShapesConversations(32, 0, 20)
    i2t = backbone.prepare_i2t([conversations[i] for i in range(2)])
    with torch.no_grad():
        base = backbone.i2t_loss(i2t.replace())
        flipped = i2t.replace(extras={"vit_pixels": i2t.extras["vit_pixels"].flip(-1)})
        assert not torch.allclose(backbone.i2t_loss(flipped), base)
        gen = backbone.model.language_model.model.layers[1].mlp_moe_gen.up_proj.weight
        saved = gen.clone()
        gen.add_(1.0)
        assert torch.equal(backbone.i2t_loss(i2t.replace()), base)
        gen.copy_(saved)
    # upstream's labels: the answer and its closing <|im_end|>, predicted from the token before
    ids, answer = i2t.text_ids[0], i2t.answer_mask[0]
    end = backbone.text_tokenizer.convert_tokens_to_ids("<|im_end|>")
    last = int(i2t.text_mask[0].sum()) - 1
    assert answer[last] and ids[last] == end and not answer[: int(answer.int().argmax())].any()


def test_hints_are_a_clean_image_split_before_the_text(backbone, batch):
    plan = plan_for(backbone, batch, "segros")
    hints = backbone.plan_hints(batch, plan)
    ids, mask = backbone.condition(batch, True)
    pack, vit = backbone.pack(ids, mask, hints)
    K = plan.hint_idx.shape[1]
    first = pack.sample == 0
    kinds = pack.kind[first]
    assert kinds[0] == M.TEXT and (kinds[1 : K + 1] == M.VIT).all() and kinds[K + 1] == M.TEXT
    assert (pack.position_ids[first][: K + 2] == 0).all()  # one rope id, then the text from 1
    assert torch.equal(pack.vit_pos[:K], backbone.vit_pos[plan.hint_idx[0]])
    assert torch.equal(vit[:K], hints.embeddings[0])
    assert pack.mask[first][:, first][K + 2 :, : K + 2].all()  # the text and latents see every hint


def test_reca_reads_an_instruction_drawn_per_sample_never_the_caption(backbone, tmp_path):
    """RecA's BAGEL sample: the text split holds a reconstruction instruction drawn per sample from
    the list (by the run's generator), dropped like a caption; caption-conditioned methods keep the
    caption; ``recon_prompts: none`` gives no text; a file gives its lines."""
    from segros.backbones.bagel import text as T

    source = ShapesImageText(32, 0, 50)
    batch = backbone.prepare_t2i([source[i] for i in range(16)])
    caption_ids, caption_mask = backbone.condition(batch, True)
    assert torch.equal(caption_ids, batch.text_ids)  # no dropout drawn yet: the captions
    backbone.drop_captions(batch, torch.Generator().manual_seed(5))
    pick, drop = batch.memo["recon_prompt"].clone(), batch.drop_caption.clone()
    assert len(set(pick.tolist())) > 1 and drop.any() and not drop.all()  # seed 5: both kinds of rows
    ids, mask = backbone.condition(batch, False)
    want = T.encode_t2i(backbone.text_tokenizer, [T.RECON_PROMPTS[i] for i in pick], 128)
    for b in range(len(batch)):
        got = ids[b][mask[b]]
        assert got.numel() == 0 if drop[b] else torch.equal(got, want["text_ids"][b][want["text_mask"][b]])
    backbone.drop_captions(batch, torch.Generator().manual_seed(5))  # the same draws again
    assert torch.equal(batch.memo["recon_prompt"], pick) and torch.equal(batch.drop_caption, drop)

    f = tmp_path / "recon.txt"
    f.write_text("describe the shapes\n\nwhat is in the photo\n")
    assert T.recon_prompts(str(f)) == ("describe the shapes", "what is in the photo")
    assert T.recon_prompts("none") == () and T.recon_prompts("builtin") == T.RECON_PROMPTS
    with pytest.raises(FileNotFoundError, match="model.recon_prompts"):
        T.recon_prompts(str(tmp_path / "missing.txt"))
    silent = BagelBackbone(backbone.arch, backbone.text_tokenizer, backbone.options.model_copy(
        update={"recon_prompts": "none"}))  # fmt: skip
    batch.drop_caption = None
    assert silent.condition(batch, False)[0].shape[1] == 0  # no text split at all


# --- generation ---------------------------------------------------------------------------------------


def test_guidance_is_upstreams_with_renorm(backbone):
    c, u = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    g = u + 4.0 * (c - u)
    per_sample = (c.norm(dim=(1, 2), keepdim=True) / g.norm(dim=(1, 2), keepdim=True)).clamp(0.0, 1.0)
    assert torch.allclose(backbone.guided(c, u, 4.0), g * per_sample)
    assert torch.equal(backbone.guided(c, u, 1.0), c)
    o = backbone.options
    o.cfg_renorm_type = "channel"
    try:
        per_token = (c.norm(dim=2, keepdim=True) / g.norm(dim=2, keepdim=True)).clamp(0.0, 1.0)
        assert torch.allclose(backbone.guided(c, u, 4.0), g * per_token)
        o.cfg_renorm_min = 1.0
        assert torch.allclose(backbone.guided(c, u, 4.0), g)  # renorm_min 1: no renormalisation
    finally:
        o.cfg_renorm_type, o.cfg_renorm_min = "global", 0.0


def test_generation_follows_the_guidance_scale_and_interval(backbone):
    prompts = ["a photo of a red circle"]

    def run(scale: float) -> torch.Tensor:
        return backbone.generate_tokens(
            prompts, torch.Generator().manual_seed(0), guidance_scale=scale, steps=3
        )

    assert torch.equal(run(4.0), run(4.0)) and run(4.0).shape == (1, 16, 16, 16)
    assert not torch.allclose(run(1.0), run(4.0))
    backbone.options.cfg_interval = [0.999, 1.0]  # guidance only at t = 1, the first of two steps
    try:
        partly = run(4.0)
    finally:
        backbone.options.cfg_interval = [0.4, 1.0]
    assert not torch.allclose(partly, run(1.0)) and not torch.allclose(partly, run(4.0))


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sft", "reca", "segros"])
def test_7b_configs_hold_recas_bagel_recipe_and_validate_without_weights(method):
    cfg = load_config(CONFIGS / f"{method}-7b.yaml")
    m, o = cfg.model, cfg.optim
    assert m["name"] == "bagel" and m["size"] == "7b" and m["init_from"].endswith("BAGEL-7B-MoT")
    assert (m["image_size"], m["vit_image_size"], m["freeze_vit"], m["timestep_shift"]) == (
        1024,
        224,
        True,
        1.0,
    )
    assert (o.lr, o.warmup_steps, o.schedule, o.weight_decay, o.eps) == (4e-5, 1000, "constant", 0.0, 1e-15)
    assert tuple(o.betas) == (0.9, 0.95) and o.ema_decay == 0.9999 and o.grad_clip == 1.0
    assert o.mixed_precision == "bf16" and m["gradient_checkpointing"] and cfg.run.save_every == 250
    assert m["freeze_und"] == (method == "reca") and cfg.method.i2t_weight == (
        0.0 if method == "reca" else 1.0
    )
    plan = cfg.method.plan_config()
    assert plan.text_condition == (method != "reca")
    assert plan.hint_pick == {"sft": "none", "reca": "all"}.get(method, "top")
    options = cfg.model_options()  # the model section validates; nothing is loaded
    assert options.image_size // 16 == 64  # BAGEL's max_latent_size for fine-tuning
    lora = load_config(CONFIGS / f"{method}-7b.yaml", ["lora.rank=16", "optim.ema_decay=null"])
    assert lora.lora.enabled


@pytest.mark.parametrize(
    "override, key",
    [
        ("method.seen_pick=top", "seen_pick"),
        ("method.mask_schedule=uniform", "mask_schedule"),
        ("method.loss_target_ratio=0.5", "loss_target_ratio"),
        ("method.preset=segros_droploss", "preset"),
    ],
)
def test_knobs_that_do_nothing_on_bagel_are_refused(override, key):
    with pytest.raises(ConfigError, match=rf"method\.{key}: the bagel backbone masks no image tokens"):
        load_config(CONFIGS / "segros-7b.yaml", [override])


def test_freeze_und_leaves_only_the_generation_path_trainable():
    bb = BagelBackbone.from_options(
        BagelOptions(size="tiny", image_size=32, vit_image_size=32, freeze_und=True)
    )
    trainable = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert trainable and all("_moe_gen" in n or n.split(".")[0] in ("time_embedder", "vae2llm", "llm2vae")
                             for n in trainable)  # fmt: skip
    assert not any(p.requires_grad for p in bb.vae.parameters())


# --- the command line --------------------------------------------------------------------------------


def test_segros_train_resume_inspect_and_generate_on_the_tiny_config(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["run.progress=off", "logging.tensorboard=false"]
    main(["train", "--config", str(TINY), "--out", str(run), *common])
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["params_in_sync"] and math.isfinite(summary["final_loss"])
    assert (run / "pictures" / "samples-step000003.png").is_file()
    assert (run / "checkpoints" / "step-3" / "model.safetensors").is_file()
    main(
        [
            "train",
            "--config",
            str(TINY),
            "--out",
            str(run),
            "--resume",
            "--max-steps",
            "4",
            "run.save_every=4",
            *common,
        ]
    )
    assert json.loads((run / "train_summary.json").read_text())["step"] == 4

    check_inspect_and_generate(main, run, tmp_path, capsys, "8x8")
    # the trained model in BAGEL's release layout, read back through from_upstream
    main(["export", str(run), "--format", "upstream", "--out", str(tmp_path / "release")])
    assert {"ema.safetensors", "ae.safetensors", "llm_config.json"} <= {
        p.name for p in (tmp_path / "release").iterdir()
    }
    trained = load_backbone(run)
    again = BagelBackbone.from_options(
        BagelOptions(**{**trained.options.model_dump(), "init_from": str(tmp_path / "release")})
    )
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.state_dict().items())


def test_two_gloo_processes_train_bagel_in_sync(tmp_path):
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
