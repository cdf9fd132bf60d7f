"""The Harmon backbone on a tiny random configuration: every method trains, generation is seeded,
save/load round-trips, masking keeps equal visible counts, and the loss reads only targets."""

import math

import pytest
import torch
from harmon_helpers import i2t_records, records, tiny_backbone, tiny_tokenizer
from transformers import Qwen2Config, Qwen2ForCausalLM

from segros.backbones.harmon.adapter import HarmonBackbone, HarmonOptions, diffusion_loss
from segros.backbones.harmon.mar import check_equal_visible
from segros.backbones.registry import load_backbone
from segros.plan import PRESETS, plan_batch, preset
from segros.schedules import sample_mask_ratio

METHODS = ("sft", "reca", "segros", "segros_droploss")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("harmon-tok"))


@pytest.fixture(scope="module")
def backbone(tokenizer_dir):
    return tiny_backbone(tokenizer_dir)


def _plan(backbone, batch, name, generator):
    g = backbone(batch, mode="ground")
    ratio = sample_mask_ratio(
        backbone.mask_schedule, g.image_emb.shape[0], generator, backbone.mask_per_batch
    )
    return plan_batch(
        g.text_emb.float(),
        g.image_emb.float(),
        g.text_valid,
        preset(name),
        ratio,
        generator,
        backbone.token_grid,
    )


def test_grounding_reads_caption_tokens_and_projected_clean_features(backbone):
    batch = backbone.prepare_t2i(records(3))
    g = backbone(batch, mode="ground")
    hidden = backbone.model.llm.config.hidden_size
    assert g.image_emb.shape == (3, backbone.num_tokens, hidden)
    assert g.text_emb.shape[-1] == hidden
    tok = backbone.text_tokenizer
    for row, valid, caption in zip(batch.text_ids, g.text_valid, batch.captions, strict=True):
        words = tok.convert_ids_to_tokens(row[valid].tolist())
        assert words and " ".join(words) == caption.replace(",", " ,").replace(".", " .").strip()
        template = set(tok.convert_ids_to_tokens(row[~valid].tolist()))
        assert {"<|im_start|>", "<|im_end|>", "Generate", "image", ":"} <= template


@pytest.mark.parametrize("name", METHODS)
def test_one_training_step_per_method(tokenizer_dir, name):
    model = tiny_backbone(tokenizer_dir, seed=1)
    generator = torch.Generator().manual_seed(0)
    batch = model.prepare_t2i(records(4))
    batch.drop_caption = torch.tensor([False, True, False, False])
    plan = _plan(model, batch, name, generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    terms = model(batch, plan=plan, i2t=model.prepare_i2t(i2t_records(2)))
    loss = terms["recon"] + terms["i2t"]
    assert math.isfinite(float(loss.detach())) and float(terms["recon"].detach()) > 0
    assert float(terms["i2t"].detach()) > 0
    loss.backward()
    # the head's output layer is zero-initialised (as upstream), so it is the first to get gradient
    assert model.model.mar.diffloss.net.final_layer.linear.weight.grad.abs().sum() > 0
    assert model.model.llm.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("model.llm.") for k in changed) and any(
        k.startswith("model.mar.") for k in changed
    )
    assert not any(p.requires_grad for p in model.vae.parameters())  # the VAE stays frozen


def test_every_preset_gives_equal_visible_counts_per_batch(backbone):
    generator = torch.Generator().manual_seed(3)
    batch = backbone.prepare_t2i(records(5))
    for name in PRESETS:
        for _ in range(5):
            plan = _plan(backbone, batch, name, generator)
            counts = plan.seen.sum(1)
            assert bool((counts == counts[0]).all()), (name, counts.tolist())
            check_equal_visible(~plan.seen)


def test_unequal_visible_counts_are_refused(backbone):
    generator = torch.Generator().manual_seed(0)
    batch = backbone.prepare_t2i(records(2))
    plan = _plan(backbone, batch, "sft", generator)
    plan.seen[0] = True  # sample 0 sees everything, sample 1 does not
    plan.seen[1, 0] = False
    with pytest.raises(ValueError, match="same number of visible tokens"):
        backbone(batch, plan=plan)


def test_loss_ignores_predictions_at_seen_and_dropped_tokens(backbone):
    diffloss = backbone.model.mar.diffloss
    B, N, D = 2, backbone.num_tokens, backbone.cfg.mar.decoder_embed_dim
    z = torch.randn(B, N, D)
    target = torch.randn(B, N, 16)
    weight = torch.zeros(B, N)
    weight[:, 5:12] = 1.0  # targets; 0..4 seen, 12.. masked but dropped (drop-loss)

    def loss(z_):
        return diffusion_loss(diffloss, z_, target, weight, 2, torch.Generator().manual_seed(7))

    # make the head depend on z (its output layers are zero-initialised)
    for p in diffloss.net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    base = loss(z)
    for seen_pos in (0, 4, 12, 15):
        z2 = z.clone()
        z2[:, seen_pos] += 10.0
        assert torch.equal(loss(z2), base)
    z3 = z.clone()
    z3[:, 6] += 10.0
    assert not torch.allclose(loss(z3), base)


def test_qwen2_honours_a_custom_4d_mask():
    """transformers 5.23 uses a 4-D bool mask as given: blocked keys have no influence, and an
    allowed *later* key does (no causal mask is added on top)."""
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    llm = Qwen2ForCausalLM(cfg).eval()
    x = torch.randn(1, 5, 32)
    allowed = torch.ones(1, 5, 5, dtype=torch.bool)
    allowed[:, :, 2] = False
    allowed[:, 2, 2] = True
    pos = torch.arange(5)[None]

    def run(inp):
        return llm.model(
            inputs_embeds=inp, attention_mask=allowed.unsqueeze(1), position_ids=pos
        ).last_hidden_state

    base = run(x)
    blocked = x.clone()
    blocked[:, 2] += 5
    diff = (run(blocked) - base).abs().amax(-1)[0]
    assert diff[2] > 0.1 and torch.all(diff[[0, 1, 3, 4]] == 0)
    later = x.clone()
    later[:, 4] += 5
    assert (run(later) - base).abs()[0, 0].amax() > 1e-3


def test_fig6_hints_do_not_see_text_or_image(backbone):
    """Through the adapter: the text part does not see the corrupted image, and with ``causal``
    image attention a visible token does not see later ones; checked on the attention rule."""
    from segros.sequence import pack_layout

    text_mask = torch.ones(1, 3, dtype=torch.bool)
    layout = pack_layout(2, text_mask, 4, hint_idx=torch.tensor([[0, 3]]))
    allowed = backbone._allowed(layout)[0]
    assert not allowed[:2, 2:].any()  # hints see only hints
    assert not allowed[2:5, 5:].any()  # text does not see the image
    assert allowed[5:, :5].all()  # image sees hints and text
    assert not allowed[5, 6] and allowed[6, 5]  # causal among image tokens (Harmon's own)
    assert layout.position_ids[0, :2].tolist() == [3, 6]  # hints at their image slot


def test_generation_is_seeded_and_uint8(backbone):
    prompts = ["a red circle", "two blue squares"]
    a = backbone.generate(prompts, torch.Generator().manual_seed(0))
    b = backbone.generate(prompts, torch.Generator().manual_seed(0))
    c = backbone.generate(prompts, torch.Generator().manual_seed(1), guidance_scale=1.0)
    assert a.shape == (2, 64, 64, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    lat = backbone.generate_tokens(prompts, torch.Generator().manual_seed(1), guidance_scale=2.0, steps=2)
    assert lat.shape == (2, backbone.num_tokens, 16) and bool((lat != 0).all())
    assert c.shape == a.shape


def test_save_and_load_round_trip_identically(backbone, tmp_path):
    backbone.save_pretrained(tmp_path / "ckpt")
    loaded = load_backbone(tmp_path / "ckpt")
    assert isinstance(loaded, HarmonBackbone)
    # a config's model.init_from may name the folder too; run-time options can be overridden
    again = HarmonBackbone.from_options(HarmonOptions(init_from=str(tmp_path / "ckpt"), caption_dropout=0.3))
    assert again.caption_dropout == 0.3 and again.token_grid == backbone.token_grid
    pairs = zip(backbone.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    for (k, v), (k2, v2) in zip(backbone.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    prompts = ["a green triangle"]
    assert torch.equal(
        backbone.generate(prompts, torch.Generator().manual_seed(5)),
        loaded.generate(prompts, torch.Generator().manual_seed(5)),
    )
    batch = backbone.prepare_t2i(records(2))
    plan = _plan(backbone, batch, "segros", torch.Generator().manual_seed(2))
    torch.manual_seed(9)
    with torch.no_grad():
        first = backbone.eval()(batch.replace(), plan=plan)["recon"]
    torch.manual_seed(9)
    with torch.no_grad():
        second = loaded.eval()(batch.replace(), plan=plan)["recon"]
    backbone.train()
    assert torch.equal(first, second)


def test_grounding_builds_no_graph_even_with_checkpointing(tokenizer_dir):
    model = tiny_backbone(tokenizer_dir, gradient_checkpointing=True)
    with torch.no_grad():
        g = model(model.prepare_t2i(records(2)), mode="ground")
    assert not g.text_emb.requires_grad and not g.image_emb.requires_grad


def test_diffusion_schedules_follow_mar():
    """Cosine alpha_bar with max beta 0.999 over 1000 steps; 100 respaced steps from 0 to 999,
    and respacing to all 1000 steps gives the training diffusion back."""
    from segros.backbones.harmon.diffloss import GaussianDiffusion, cosine_betas, spaced_timesteps

    betas = cosine_betas(1000)
    acp = torch.cumprod(1 - torch.from_numpy(betas), 0)
    t = torch.arange(1, 1000, dtype=torch.float64) / 1000
    want = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert torch.allclose(acp[:-1], want, atol=1e-6) and betas.max() == 0.999
    steps = spaced_timesteps(1000, 100)
    assert len(steps) == 100 and steps[0] == 0 and steps[-1] == 999 and steps[1] == 10
    full = GaussianDiffusion.respaced(betas, 1000)
    assert full.timestep_map.tolist() == list(range(1000))
    got = torch.from_numpy(full._arrays["log_betas"])
    assert torch.allclose(got, torch.log(torch.from_numpy(betas)), rtol=0, atol=1e-10)


def test_caption_mask_with_a_byte_level_bpe_like_qwen(tmp_path):
    """Qwen's tokenizer is byte-level BPE, whose tokens carry the preceding space (" red"); the
    caption mask must still cover the first caption word and nothing of the template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from segros.backbones.harmon.text import T2I_PREFIX, T2I_SUFFIX, encode_t2i

    specials = ["<|im_end|>", "<|im_start|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    captions = [r.caption for r in records(20)]
    corpus = [T2I_PREFIX + c + T2I_SUFFIX for c in captions] * 3
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0], pad_token=specials[0])
    batch = encode_t2i(fast, captions[:3], 200)
    rows = zip(batch["text_ids"], batch["caption_mask"], batch["text_mask"], captions[:3], strict=True)
    for ids, valid, real, caption in rows:
        assert fast.decode(ids[valid].tolist()).strip() == caption
        template = fast.decode(ids[real & ~valid].tolist())
        assert template.startswith("<|im_start|>user\nGenerate an image:")
        assert caption.split()[0] not in template.split()


def test_bf16_weights_train_and_generate(tokenizer_dir):
    """DeepSpeed bf16 casts every weight (the VAE's too, it moves with the module): the adapter
    follows the weights' dtype and the loss stays float32."""
    model = tiny_backbone(tokenizer_dir).to(torch.bfloat16)
    assert next(model.vae.parameters()).dtype == torch.bfloat16
    batch = model.prepare_t2i(records(2))
    plan = _plan(model, batch, "segros", torch.Generator().manual_seed(0))
    terms = model(batch, plan=plan, i2t=model.prepare_i2t(i2t_records(2)))
    (terms["recon"] + terms["i2t"]).backward()
    assert terms["recon"].dtype == torch.float32 and math.isfinite(float(terms["recon"].detach()))
    assert model.generate(["a red circle"], torch.Generator().manual_seed(0)).dtype == torch.uint8
