"""What is Harmon's own, on a tiny random configuration (tests/test_backbone_contract.py runs the
rest): grounding on the chat template, equal visible counts refused otherwise, the DiffLoss
reading only targets, Qwen2 honouring the Fig. 6 mask, MAR's diffusion schedules."""

import math

import pytest
import torch
from harmon_helpers import i2t_records, records, tiny_backbone
from transformers import Qwen2Config, Qwen2ForCausalLM

from segros.backbones.harmon.diffloss import diffusion_loss
from segros.plan import preset
from segros.supervision import ground_and_plan, sample_ratio


@pytest.fixture(scope="module")
def backbone(harmon_tokenizer):
    return tiny_backbone(harmon_tokenizer)


def _plan(backbone, batch, name, generator):
    ratio = sample_ratio(backbone, len(batch), generator)
    return ground_and_plan(backbone, batch, preset(name), ratio, generator)


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


def test_the_vae_is_frozen_and_unguided_generation_samples_every_token(backbone):
    assert not any(p.requires_grad for p in backbone.vae.parameters())
    assert not any(n.startswith("vae") for n in backbone.state_dict())  # held outside the module tree
    latents = backbone.generate_tokens(["a red circle"], torch.Generator().manual_seed(1), 1.0, 2)
    assert latents.shape == (1, backbone.num_tokens, 16) and bool((latents != 0).all())


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


def test_grounding_builds_no_graph_even_with_checkpointing(harmon_tokenizer):
    model = tiny_backbone(harmon_tokenizer, gradient_checkpointing=True)
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


def test_bf16_weights_train_and_generate(harmon_tokenizer):
    """DeepSpeed bf16 casts every weight (the VAE's too, it moves with the module): the adapter
    follows the weights' dtype and the loss stays float32."""
    model = tiny_backbone(harmon_tokenizer).to(torch.bfloat16)
    assert next(model.vae.parameters()).dtype == torch.bfloat16
    batch = model.prepare_t2i(records(2))
    plan = _plan(model, batch, "segros", torch.Generator().manual_seed(0))
    terms = model(batch, plan=plan, i2t=model.prepare_i2t(i2t_records(2)))
    (terms["recon"] + terms["i2t"]).backward()
    assert terms["recon"].dtype == torch.float32 and math.isfinite(float(terms["recon"].detach()))
    assert model.generate(["a red circle"], torch.Generator().manual_seed(0)).dtype == torch.uint8


def test_the_tiny_tokenizer_holds_the_words_of_the_named_corpus(monkeypatch):
    """Without ``model.tokenizer`` the tiny Harmon's word-level tokenizer is built from the words
    ``model.corpus`` names (segros.data.corpora), not from a data source the model knows."""
    from corpus_helpers import TOY_WORDS, toy_corpus

    from segros.backbones.harmon.adapter import HarmonBackbone, HarmonOptions
    from segros.data import corpora

    monkeypatch.setitem(corpora.CORPORA, "toy", toy_corpus([(0, 0, 0)]))
    toy = HarmonBackbone.build(HarmonOptions(size="tiny", image_size=64, corpus="toy"))
    vocab = toy.text_tokenizer.get_vocab()
    shapes = HarmonBackbone.build(HarmonOptions(size="tiny", image_size=64)).text_tokenizer.get_vocab()
    assert set(TOY_WORDS) <= set(vocab) and "circle" not in vocab
    assert "circle" in shapes and not set(TOY_WORDS) & set(shapes)
