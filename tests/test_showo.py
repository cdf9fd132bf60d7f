"""The Show-o adapter on a tiny random configuration of the real classes (CPU, no downloads).

Covers what is Show-o's own (tests/test_backbone_contract.py runs the rest): the vocabulary
layout, grounding inputs, Phi honouring the custom 4-D mask, the Fig. 6 pattern and positions
with hints prepended, loss exactly on the plan's targets, the I2T layout, CLIP hints and their
round trip.
"""

from __future__ import annotations

import pytest
import torch
from showo_helpers import tiny_backbone

from segros.backbones.registry import load_backbone
from segros.backbones.showo.text import NEW_TOKENS
from segros.data.sources import ShapesConversations, ShapesImageText
from segros.plan import SupervisionPlan, preset
from segros.supervision import ground_and_plan, sample_ratio


@pytest.fixture(scope="module")
def backbone(showo_tokenizer):
    return tiny_backbone(showo_tokenizer)


@pytest.fixture(scope="module")
def clip_backbone(showo_tokenizer):
    return tiny_backbone(showo_tokenizer, clip=True, seed=1)


def t2i_batch(bb, n=3, start=0):
    source = ShapesImageText(bb.image_size, 0, 100)
    return bb.prepare_t2i([source[start + i] for i in range(n)])


def i2t_batch(bb, n=3):
    source = ShapesConversations(bb.image_size, 0, 100)
    return bb.prepare_i2t([source[i] for i in range(n)])


def make_plan(bb, batch, name="segros", seed=0, **knobs) -> SupervisionPlan:
    gen = torch.Generator().manual_seed(seed)
    return ground_and_plan(bb, batch, preset(name, **knobs), sample_ratio(bb, len(batch), gen), gen)


class Capture:
    """Records what Show-o passes into Phi (mask, positions) and the logits it gets back."""

    def __init__(self, bb):
        self.handles = [
            bb.model.showo.model.register_forward_pre_hook(self._inputs, with_kwargs=True),
            bb.model.showo.model.register_forward_hook(self._hidden),
            bb.model.showo.lm_head.register_forward_hook(self._logits),
        ]

    def _inputs(self, module, args, kwargs):
        self.mask, self.positions = kwargs["attention_mask"], kwargs["position_ids"]

    def _hidden(self, module, args, out):
        self.hidden = out.last_hidden_state  # (B, S, D) over the whole sequence
        if self.hidden.requires_grad:
            self.hidden.retain_grad()

    def _logits(self, module, args, out):
        if out.requires_grad:
            out.retain_grad()
        self.logits = out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def captured(bb, compute, backward: bool = False) -> Capture:
    """What Phi saw and returned while ``compute()`` ran (``cap.loss`` its result): without
    gradient, or with a backward pass whose gradients are cleared afterwards."""
    with Capture(bb) as cap, torch.set_grad_enabled(backward):
        cap.loss = compute()
        if backward:
            cap.loss.backward()
            bb.zero_grad(set_to_none=True)
    return cap


def test_vocabulary_follows_upstream_layout(backbone):
    tok, v = backbone.text_tokenizer, backbone.vocab
    # [PAD] first, then the nine tokens in upstream order; codes after them; the mask token last
    ids = [tok.convert_tokens_to_ids(t) for t in ("[PAD]", *NEW_TOKENS)]
    assert ids == list(range(v.llm_vocab_size, v.llm_vocab_size + 10))
    assert v.code_offset == len(tok) and v.mask == v.size - 1
    assert backbone.model.embed_tokens.num_embeddings == v.size == backbone.model.showo.lm_head.out_features


def test_t2i_prompt_layout_and_grounding_reads_caption_tokens_only(backbone):
    batch = t2i_batch(backbone)
    v, ids = backbone.vocab, batch.text_ids
    assert ids.shape[1] == backbone.options.max_text_len + 1
    short = ids[2]  # "a large yellow square at the top right": left-padded, [t2i, bos, text, eos]
    real = short[short != v.pad]
    assert (short[: len(short) - len(real)] == v.pad).all()
    assert real[:2].tolist() == [v.t2i, v.bos] and real[-1] == v.eos
    g = backbone(batch, mode="ground")
    specials = {v.pad, v.t2i, v.bos, v.eos, v.soi, v.eoi}
    assert not any(int(i) in specials for i in ids[g.text_valid])
    assert int(g.text_valid[2].sum()) == len(real) - 3
    torch.testing.assert_close(g.text_emb, backbone.model.embed_tokens.weight[ids])
    torch.testing.assert_close(
        g.image_emb, backbone.model.embed_tokens.weight[batch.extras["codes"] + v.code_offset]
    )


def test_phi_honours_the_custom_4d_mask_in_sdpa_and_eager(backbone):
    """transformers 5.23 passes a 4-D mask through unchanged: blocked keys do not influence a row,
    and the boolean (SDPA) and additive (eager) forms agree."""
    torch.manual_seed(0)
    B, S, D = 2, 7, backbone.model.cfg.hidden_size
    x = torch.randn(B, S, D)
    allowed = torch.rand(B, S, S) < 0.5
    allowed |= torch.eye(S, dtype=torch.bool)
    pos = torch.arange(S).expand(B, -1)
    model = backbone.model
    with torch.no_grad():
        ref = model.hidden(x, allowed, pos)
        # change key 3 everywhere: rows that may not see it keep their output exactly
        y = x.clone()
        y[:, 3] += 5.0
        out = model.hidden(y, allowed, pos)
        blind = ~allowed[:, :, 3]
        blind[:, 3] = False
        assert torch.equal(out[blind], ref[blind])
        assert not torch.allclose(out[allowed[:, :, 3]], ref[allowed[:, :, 3]])
        model.showo.config._attn_implementation = "eager"
        try:
            eager = model.hidden(x, allowed, pos)
        finally:
            model.showo.config._attn_implementation = "sdpa"
    torch.testing.assert_close(eager, ref, atol=1e-5, rtol=1e-5)


def upstream_t2i_mask(seq: torch.Tensor, pad: int, soi: int, eoi: int) -> torch.Tensor:
    """Upstream ``create_attention_mask_predict_next(..., rm_pad_in_image=True)`` (prompting_utils.py
    L466-511 at Show-o 45a5a2de), restated for one soi..eoi span, as a bool (B, L, L)."""
    B, L = seq.shape
    in_image = (seq.eq(soi).cumsum(1) > seq.eq(eoi).cumsum(1)) | seq.eq(soi) | seq.eq(eoi)
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
    mask = (~in_image)[:, :, None] & causal
    full = torch.ones(B, L, L, dtype=torch.bool)
    is_pad = seq.eq(pad)
    for i in range(B):
        pads = is_pad[i].nonzero().flatten()
        if len(pads):
            mask[i, pads[-1] + 1 :, : pads[-1] + 1] = False
        full[i, int(seq[i].eq(soi).nonzero()[0]) :, is_pad[i]] = False
    return torch.where(in_image[:, :, None], full, mask)


def test_without_hints_the_mask_and_positions_are_upstreams(backbone):
    batch = t2i_batch(backbone)
    plan = make_plan(backbone, batch, "sft")
    cap = captured(backbone, lambda: backbone.reconstruction_loss(batch, plan))
    v, N = backbone.vocab, backbone.num_tokens
    image = torch.where(plan.seen, batch.extras["codes"] + v.code_offset, v.mask)
    B = image.shape[0]
    seq = torch.cat([batch.text_ids, torch.full((B, 1), v.soi), image, torch.full((B, 1), v.eoi)], 1)
    real = seq != v.pad  # upstream's pad rows are never read; ours attend to themselves only
    assert torch.equal(cap.mask[:, 0][real], upstream_t2i_mask(seq, v.pad, v.soi, v.eoi)[real])
    assert torch.equal(cap.positions, torch.arange(seq.shape[1]).expand(B, -1))  # upstream: arange(L)
    assert seq.shape[1] == backbone.options.max_text_len + 1 + N + 2


def test_hints_are_prepended_with_the_fig6_pattern_and_their_slot_positions(backbone):
    batch = t2i_batch(backbone)
    plan = make_plan(backbone, batch, "segros", hint_position="slot")
    K, P, N = plan.num_hints, batch.text_ids.shape[1], backbone.num_tokens
    assert int(0.3 * N) == K
    cap = captured(backbone, lambda: backbone.reconstruction_loss(batch, plan))
    allowed, pos = cap.mask[:, 0], cap.positions
    S = K + P + N + 2
    assert allowed.shape[1:] == (S, S)
    hints, text, image = slice(0, K), slice(K, K + P), slice(K + P, S)
    real_text = batch.text_mask
    # hints: bidirectional among themselves only
    assert allowed[:, hints, hints].all() and not allowed[:, hints, K:].any()
    # text (real rows): every hint, causal over real text, no image
    rows = allowed[:, text][real_text]
    assert rows[:, hints].all() and not rows[:, image].any()
    causal = torch.tril(torch.ones(P, P, dtype=torch.bool))
    want_text = (causal.unsqueeze(0) & real_text.unsqueeze(1)) & real_text.unsqueeze(2)
    assert torch.equal(allowed[:, text, text][real_text], want_text[real_text])
    # soi, image and eoi rows: everything but padding
    assert allowed[:, image, hints].all() and allowed[:, image, image].all()
    assert torch.equal(allowed[:, image, text], real_text.unsqueeze(1).expand(-1, N + 2, -1))
    # positions: hints at their image slot, everything else as without hints
    assert torch.equal(pos[:, hints], P + 1 + plan.hint_idx)
    assert torch.equal(pos[:, K:], torch.arange(P + N + 2).expand(pos.shape[0], -1))
    # the hint tokens are the clean code embeddings of their slots
    want = backbone.model.embed_tokens.weight[
        batch.extras["codes"].gather(1, plan.hint_idx) + backbone.vocab.code_offset
    ]
    torch.testing.assert_close(backbone.hint_embeddings(batch, plan.hint_idx), want)


@pytest.mark.parametrize("name", ["sft", "segros", "segros_droploss"])
def test_loss_reaches_exactly_the_plan_targets_at_shifted_indices(backbone, name):
    batch = t2i_batch(backbone)
    plan = make_plan(backbone, batch, name, seed=3)
    K, P, N = plan.num_hints, batch.text_ids.shape[1], backbone.num_tokens
    cap = captured(backbone, lambda: backbone.reconstruction_loss(batch, plan), backward=True)
    got = cap.hidden.grad.abs().sum(-1) > 0  # (B, S): sequence positions that carry loss
    want = torch.zeros_like(got)
    want[:, K + P + 1 : K + P + 1 + N] = plan.loss_weight > 0
    assert torch.equal(got, want)
    if name == "segros_droploss":
        assert (plan.loss_weight.sum() < (~plan.seen).sum()).item()  # a strict subset of the masked


def test_loss_is_full_vocab_ce_on_targets_or_code_ce(showo_tokenizer, backbone):
    """Default: Show-o's native 58,498-way softmax (here the tiny joint vocab) at the targets only,
    without upstream's soi/eoi terms; ``loss_vocab="codes"``: softmax over the code logits only."""
    batch = t2i_batch(backbone)
    plan = make_plan(backbone, batch, "segros", seed=1)
    v = backbone.vocab
    cap = captured(backbone, lambda: backbone.reconstruction_loss(batch, plan))
    loss, N = cap.loss, backbone.num_tokens
    logits = cap.logits  # Show-o applies the head to the image slots only
    assert logits.shape == (3, N, v.size)
    t = plan.loss_weight > 0
    want = torch.nn.functional.cross_entropy(logits[t], (batch.extras["codes"] + v.code_offset)[t])
    torch.testing.assert_close(loss, want)
    codes_only = tiny_backbone(showo_tokenizer, loss_vocab="codes")
    codes_only.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        loss_codes = codes_only.reconstruction_loss(batch, plan)
    sliced = logits[..., v.code_offset : v.code_offset + v.codebook_size]
    want_codes = torch.nn.functional.cross_entropy(sliced[t], batch.extras["codes"][t])
    torch.testing.assert_close(loss_codes, want_codes)
    assert loss_codes < loss  # the code softmax drops the non-code mass


def test_i2t_loss_reads_answer_tokens_only(backbone):
    batch = i2t_batch(backbone)
    v, ids, answer = backbone.vocab, batch.text_ids, batch.answer_mask
    assert (ids[:, 0] == v.bos).all()
    last = batch.text_mask.sum(1) - 1
    assert (ids[torch.arange(3), last] == v.eos).all() and answer[torch.arange(3), last].all()
    tok = backbone.text_tokenizer
    questions = [tok.decode(ids[i][batch.text_mask[i] & ~answer[i]][1:]) for i in range(3)]
    assert all(q.startswith("user :") and q.endswith("assistant :") for q in questions)
    cap = captured(backbone, lambda: backbone.i2t_loss(batch), backward=True)
    prefix = 3 + backbone.num_tokens  # [mmu, soi, codes, eoi]
    got = cap.hidden.grad.abs().sum(-1) > 0
    want = torch.zeros_like(got)
    want[:, prefix : prefix + ids.shape[1] - 1] = answer[:, 1:]  # position t predicts token t + 1
    assert torch.equal(got, want)


def test_clip_variant_hints_come_from_the_projected_clip_grid(clip_backbone):
    bb = clip_backbone
    assert bb.hint_source == "clip" and bb.hint_grid == (4, 4)
    assert not any(p.requires_grad for p in bb.clip.parameters())
    assert all(p.requires_grad for p in bb.model.mm_projector.parameters())
    batch = t2i_batch(bb)
    plan = make_plan(bb, batch, "segros")
    assert plan.hint_grid == (4, 4) and plan.num_hints == int(0.3 * 16)
    feats = bb.model.mm_projector(bb.clip(batch.extras["clip_pixels"]))
    assert feats.shape == (3, 16, bb.model.cfg.hidden_size)
    torch.testing.assert_close(
        bb.hint_embeddings(batch, plan.hint_idx), feats[torch.arange(3)[:, None], plan.hint_idx]
    )
    # a 4x4 hint cell covers 2x2 code cells on the 8x8 grid: its slot is the nearest code cell
    assert bb.hint_slots(torch.tensor([[0, 5, 15]])).tolist() == [[9, 27, 63]]
    loss = bb.reconstruction_loss(batch, plan) + bb.i2t_loss(i2t_batch(bb))
    loss.backward()
    assert bb.model.mm_projector[0].weight.grad.abs().sum() > 0
    bb.zero_grad(set_to_none=True)
    # SFT uses no hint and, without I2T, no CLIP feature: every trainable parameter still gets a
    # (zero) gradient, as DDP requires
    sft_plan = make_plan(bb, batch, "sft")
    bb.reconstruction_loss(batch, sft_plan).backward()
    trainable = [(n, p) for n, p in bb.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
    assert bb.model.mm_projector[0].weight.grad.abs().sum() == 0
    bb.zero_grad(set_to_none=True)


def test_codes_stay_in_the_codebook_with_and_without_guidance(backbone):
    for scale in (0.0, 2.0):
        codes = backbone.generate_tokens(["a red circle"], torch.Generator().manual_seed(0), scale, 3)
        assert codes.shape == (1, 64) and codes.min() >= 0 and codes.max() < backbone.vocab.codebook_size


def test_clip_variant_saves_and_loads_identically(showo_tokenizer, tmp_path):
    """The CLIP tower and projector round-trip (the contract test saves the VQ variant)."""
    bb = tiny_backbone(showo_tokenizer, clip=True, seed=5)
    batch, i2t = t2i_batch(bb), i2t_batch(bb)
    plan = make_plan(bb, batch, "segros")
    bb.save_pretrained(tmp_path)
    loaded = load_backbone(tmp_path).eval()
    assert loaded.hint_source == "clip" and loaded.hint_grid == bb.hint_grid
    with torch.no_grad():
        for m in (bb, loaded):
            m.out = (m.reconstruction_loss(batch, plan), m.i2t_loss(i2t))
    assert torch.equal(bb.out[0], loaded.out[0]) and torch.equal(bb.out[1], loaded.out[1])
    assert torch.equal(
        loaded.prepare_t2i([ShapesImageText(32, 0, 9)[4]]).extras["clip_pixels"],
        t2i_batch(bb, 1, 4).extras["clip_pixels"],
    )


def test_bf16_weights_as_deepspeed_casts_them(showo_tokenizer):
    """DeepSpeed's bf16 mode casts every weight; data prep, the loss and generation must follow."""
    bb = tiny_backbone(showo_tokenizer, clip=True, seed=7).to(torch.bfloat16)
    batch = t2i_batch(bb)
    assert batch.extras["codes"].dtype == torch.long
    plan = make_plan(bb, batch, "segros")
    with torch.no_grad():
        loss = bb.reconstruction_loss(batch, plan) + bb.i2t_loss(i2t_batch(bb))
    assert torch.isfinite(loss)
    assert bb.generate(["a red star"], torch.Generator().manual_seed(0), steps=1).shape == (1, 32, 32, 3)



def test_a_words_tokenizer_holds_the_words_and_questions_of_the_named_corpus(monkeypatch):
    """``model.tokenizer: <corpus>-words`` builds the word-level tokenizer from that corpus of
    segros.data.corpora (``shapes-words``: ShapesWorld's); a hub id is not mistaken for one."""
    from corpus_helpers import TOY_WORDS, toy_corpus

    from segros.backbones.showo import text
    from segros.data import corpora

    monkeypatch.setitem(corpora.CORPORA, "toy", toy_corpus([(0, 0, 0)]))
    bb = tiny_backbone("toy-words")
    vocab = bb.text_tokenizer.get_vocab()
    assert {*TOY_WORDS, "or"} <= set(vocab) and "circle" not in vocab
    assert "circle" in text.load_tokenizer("shapes-words").get_vocab()
    assert text.word_corpus("shapes-words") == "shapes" and text.word_corpus("someone/toy-words") is None
