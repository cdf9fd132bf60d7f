"""Hint positions (prefix / slot), hint dropout and caption stopword masks for Show-o and Harmon.

- ``hint_position="prefix"`` (default): a hint's position id tells its order only, so moving the same
  hint contents to other image slots changes nothing; ``"slot"`` gives a hint its slot's id, so it does.
- Text and image keep exactly their generation-time position ids: a dropped sample in a mixed
  batch (``hint_keep``, as ``method.hint_prob`` draws it) equals that sample without hints (the
  whole batch dropped is in tests/test_backbone_contract.py, for every backbone).
- ``caption_stopword``: caption tokens of English function words, whole words for sub-word
  tokenizers, aligned with the caption positions (Show-o's left padding, Harmon's template).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from harmon_helpers import records as harmon_records
from harmon_helpers import tiny_backbone as tiny_harmon
from PIL import Image
from showo_helpers import tiny_backbone as tiny_showo

from segros.backbones.base import PlanHints
from segros.backbones.showo.text import Vocab, extend_tokenizer, t2i_prompt, tokenize_captions
from segros.data.readers import ImageTextRecord
from segros.data.sources import ShapesImageText
from segros.plan import SupervisionPlan, preset
from segros.supervision import ground_and_plan, sample_ratio

CAPTION = "a photo of a red cube above the blue sphere"
STOP = ["a", "of", "a", "above", "the"]
CONTENT = ["photo", "red", "cube", "blue", "sphere"]


# --- helpers ------------------------------------------------------------------------------------


def _plan(bb, batch, seed=0, **knobs) -> SupervisionPlan:
    gen = torch.Generator().manual_seed(seed)
    return ground_and_plan(bb, batch, preset("segros", **knobs), sample_ratio(bb, len(batch), gen), gen)


def _other_slots(hint_idx: torch.Tensor, n: int) -> torch.Tensor:
    """Other image slots for the same hints, still ascending (the hints keep their order)."""
    other = (n - 1 - hint_idx).flip(-1)
    assert not torch.equal(other, hint_idx)
    return other


def _no_hints(plan: SupervisionPlan) -> SupervisionPlan:
    return dataclasses.replace(plan, hint_idx=plan.hint_idx[:, :0], hint_keep=None)


def _bpe_tokenizer(corpus: list[str], specials: list[str], **special_roles):
    """A small byte-level BPE (as Phi-1.5 and Qwen use) that splits words into sub-words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_roles)


def _bpe_corpus() -> list[str]:
    from harmon_helpers import records

    return [r.caption for r in records(30)] + [CAPTION]


def _words(tokenizer, ids: torch.Tensor) -> list[str]:
    return tokenizer.decode(ids.tolist()).split()


# --- Show-o -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def showo(showo_tokenizer):
    return tiny_showo(showo_tokenizer)


def _showo_batch(bb, n=3):
    source = ShapesImageText(bb.image_size, 0, 100)
    return bb.prepare_t2i([source[i] for i in range(n)])


def _showo_logits(bb, batch, plan, hints=None, hint_idx=None) -> torch.Tensor:
    """reconstruction_loss's logits, with the hint contents and their slots given separately."""
    v = bb.vocab
    ids, mask = bb.condition(batch, plan.text_condition)
    hint_idx = plan.hint_idx if hint_idx is None else hint_idx
    hints = bb.hint_embeddings(batch, plan.hint_idx) if hints is None else hints
    image_ids = torch.where(plan.seen, batch.extras["codes"] + v.code_offset, v.mask)
    given = PlanHints(hints, hint_idx, plan.hint_position, plan.hint_valid())
    with torch.no_grad():
        return bb.image_logits(ids, mask, image_ids, given)


def test_showo_prefix_hints_ignore_their_slots_and_slot_hints_do_not(showo):
    batch = _showo_batch(showo)
    plan = _plan(showo, batch)
    assert plan.hint_position == "prefix" and plan.num_hints > 0
    hints = showo.hint_embeddings(batch, plan.hint_idx)
    other = _other_slots(plan.hint_idx, showo.num_tokens)
    a = _showo_logits(showo, batch, plan, hints, plan.hint_idx)
    b = _showo_logits(showo, batch, plan, hints, other)
    assert torch.allclose(a, b, atol=1e-6)
    slot = dataclasses.replace(plan, hint_position="slot")
    a = _showo_logits(showo, batch, slot, hints, plan.hint_idx)
    b = _showo_logits(showo, batch, slot, hints, other)
    assert not torch.allclose(a, b, atol=1e-4)


def test_showo_loss_with_identical_hint_contents_at_other_slots(showo):
    """End to end through reconstruction_loss: with every code equal, the hints at any slots are the
    same embeddings, so only their position ids can tell the slots apart."""
    batch = _showo_batch(showo)
    plan = _plan(showo, batch)
    batch = batch.replace(extras={**batch.extras, "codes": torch.full_like(batch.extras["codes"], 3)})
    other = dataclasses.replace(plan, hint_idx=_other_slots(plan.hint_idx, showo.num_tokens))
    out = []
    handle = showo.model.showo.lm_head.register_forward_hook(lambda m, a, o: out.append(o))
    try:
        with torch.no_grad():
            losses = [showo.reconstruction_loss(batch, p) for p in (plan, other)]
            for p in (plan, other):
                showo.reconstruction_loss(batch, dataclasses.replace(p, hint_position="slot"))
    finally:
        handle.remove()
    assert torch.equal(losses[0], losses[1])
    assert torch.allclose(out[0], out[1], atol=1e-6)
    assert not torch.allclose(out[2], out[3], atol=1e-3)


def test_showo_prefix_positions_are_negative_and_equal_a_shifted_numbering(showo):
    """Hints get -K..-1 and the rest upstream's 0..P+N+1; Phi's rotary embedding takes negative ids,
    and (only differences matter) they equal numbering hints 0..K-1 and shifting the rest by K."""
    batch = _showo_batch(showo)
    plan = _plan(showo, batch)
    K, P, N, B = plan.num_hints, batch.text_ids.shape[1], showo.num_tokens, 3
    seen = {}
    handle = showo.model.showo.model.register_forward_pre_hook(
        lambda m, a, kw: seen.update(kw), with_kwargs=True
    )
    try:
        with torch.no_grad():
            showo.reconstruction_loss(batch, plan)
    finally:
        handle.remove()
    pos = seen["position_ids"]
    assert torch.equal(pos[:, :K], torch.arange(-K, 0).expand(B, -1))
    assert torch.equal(pos[:, K:], torch.arange(P + N + 2).expand(B, -1))
    embeds, mask = seen["inputs_embeds"], seen["attention_mask"][:, 0]
    with torch.no_grad():
        negative = showo.model.hidden(embeds, mask, pos)
        shifted = showo.model.hidden(embeds, mask, pos + K)
        other = showo.model.hidden(embeds, mask, torch.cat([pos[:, :K] + P + 1, pos[:, K:]], 1))
    assert torch.allclose(negative, shifted, atol=1e-5)
    assert not torch.allclose(negative, other, atol=1e-4)  # the ids do reach the model


@pytest.mark.parametrize("position", ["prefix", "slot"])
def test_showo_dropped_hints_equal_no_hints(showo, position):
    batch = _showo_batch(showo)
    plan = _plan(showo, batch, hint_position=position)
    none = _showo_logits(showo, batch, _no_hints(plan))
    every = _showo_logits(showo, batch, plan)
    keep = torch.tensor([True, False, True])
    mixed = _showo_logits(showo, batch, dataclasses.replace(plan, hint_keep=keep))
    dropped = _showo_logits(
        showo, batch, dataclasses.replace(plan, hint_keep=torch.zeros(3, dtype=torch.bool))
    )
    assert torch.allclose(dropped, none, atol=1e-5)
    assert torch.allclose(mixed[1], none[1], atol=1e-5)
    assert torch.allclose(mixed[[0, 2]], every[[0, 2]], atol=1e-5)
    assert not torch.allclose(every[1], none[1], atol=1e-4)  # hints matter when kept


def _records_with(captions, size):
    image = Image.new("RGB", (size, size), (128, 128, 128))
    return [ImageTextRecord(image, c, f"r{i}") for i, c in enumerate(captions)]


def test_showo_caption_stopwords_line_up_with_the_left_padded_caption(showo):
    tok = showo.text_tokenizer
    batch = showo.prepare_t2i(_records_with([CAPTION, "a red cube"], showo.image_size))
    g = showo(batch, mode="ground")
    stop, valid, ids = g.text_stopword, g.text_valid, batch.text_ids
    assert stop.shape == valid.shape and stop.dtype == torch.bool
    assert torch.equal(stop, batch.caption_stopword) and not (stop & ~valid).any()
    assert tok.convert_ids_to_tokens(ids[0][stop[0]].tolist()) == STOP
    content = tok.convert_ids_to_tokens(ids[0][valid[0] & ~stop[0]].tolist())
    assert content[:2] == ["photo", "red"] and len(content) == len(CONTENT)
    # the short caption is left-padded: its one stopword is the first caption token, after t2i, bos
    first = int((ids[1] == showo.vocab.pad).sum()) + 2
    assert stop[1].nonzero().flatten().tolist() == [first] and valid[1, first]


def test_showo_stopwords_of_sub_word_tokens_are_whole_words(showo):
    eot = "<|endoftext|>"
    tok = _bpe_tokenizer(_bpe_corpus(), [eot], bos_token=eot, eos_token=eot)
    tok = extend_tokenizer(tok)
    vocab = Vocab.from_tokenizer(tok, 16)
    text = t2i_prompt(tok, vocab, [CAPTION, "a red cube"], 40)
    ids, caption, stop = text["ids"], text["caption"], text["stopword"]
    assert int(caption[0].sum()) > len(CAPTION.split())  # some words are cut into sub-words
    assert not (stop & ~caption).any()
    assert _words(tok, ids[0][stop[0]]) == STOP
    assert _words(tok, ids[0][caption[0] & ~stop[0]]) == CONTENT
    assert _words(tok, ids[1][stop[1]]) == ["a"]

    class Slow:  # no offsets: the fallback reads the decoding
        is_fast = False

        def __call__(self, text, add_special_tokens=False):
            return tok(text, add_special_tokens=add_special_tokens)

        def decode(self, ids):
            return tok.decode(ids)

    assert tokenize_captions(Slow(), [CAPTION]) == tokenize_captions(tok, [CAPTION])


# --- Harmon -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harmon(harmon_tokenizer):
    bb = tiny_harmon(harmon_tokenizer, seed=3).eval()
    # DiffLoss's output layer starts at zero (as upstream): make the loss depend on its input
    torch.manual_seed(0)
    for p in bb.model.mar.diffloss.net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return bb


def _harmon_z(bb, batch, plan, hints=None, hint_idx=None) -> torch.Tensor:
    """The MAR decoder output ``_denoiser_condition`` gives reconstruction_loss's DiffLoss."""
    x = bb._latents(batch)
    ids, text_mask = bb.condition(batch, plan.text_condition)
    K = plan.num_hints
    if K and hints is None:
        hints = bb.hint_embeddings(batch, plan.hint_idx)
    hint_idx = plan.hint_idx if hint_idx is None else hint_idx
    with torch.no_grad():
        given = PlanHints(hints, hint_idx, plan.hint_position, plan.hint_valid()) if K else None
        return bb._denoiser_condition(x, ~plan.seen, ids, text_mask, given)


def test_harmon_prefix_hints_ignore_their_slots_and_slot_hints_do_not(harmon):
    batch = harmon.prepare_t2i(harmon_records(3))
    plan = _plan(harmon, batch)
    assert plan.hint_position == "prefix" and plan.num_hints > 0
    hints = harmon.hint_embeddings(batch, plan.hint_idx)
    other = _other_slots(plan.hint_idx, harmon.num_tokens)
    K, llm = plan.num_hints, []  # LLM hidden states of text and image (the tiny LLM's rotary
    # embedding, theta 1e6 over 16 dims, moves the MAR decoder output only by ~1e-4)
    handle = harmon.model.llm.model.register_forward_hook(lambda m, a, o: llm.append(o.last_hidden_state))
    try:
        z = [_harmon_z(harmon, batch, plan, hints, idx) for idx in (plan.hint_idx, other)]
        slot = dataclasses.replace(plan, hint_position="slot")
        z_slot = [_harmon_z(harmon, batch, slot, hints, idx) for idx in (plan.hint_idx, other)]
    finally:
        handle.remove()
    assert torch.allclose(z[0], z[1], atol=1e-6)
    assert torch.allclose(llm[0][:, K:], llm[1][:, K:], atol=1e-6)
    assert not torch.allclose(llm[2][:, K:], llm[3][:, K:], atol=1e-3)
    assert not torch.equal(z_slot[0], z_slot[1])


def test_harmon_prefix_positions_are_negative_and_text_image_keep_theirs(harmon):
    batch = harmon.prepare_t2i(harmon_records(2))
    plan = _plan(harmon, batch)
    seen = {}
    handle = harmon.model.llm.model.register_forward_pre_hook(
        lambda m, a, kw: seen.update(kw), with_kwargs=True
    )
    try:
        _harmon_z(harmon, batch, plan)
        with_hints = seen["position_ids"]
        _harmon_z(harmon, batch, _no_hints(plan))
        without = seen["position_ids"]
    finally:
        handle.remove()
    K = plan.num_hints
    assert torch.equal(with_hints[:, :K], torch.arange(-K, 0).expand(2, -1))
    assert torch.equal(with_hints[:, K:], without)


@pytest.mark.parametrize("position", ["prefix", "slot"])
def test_harmon_dropped_hints_equal_no_hints(harmon, position):
    batch = harmon.prepare_t2i(harmon_records(3))
    plan = _plan(harmon, batch, hint_position=position)
    none = _harmon_z(harmon, batch, _no_hints(plan))
    every = _harmon_z(harmon, batch, plan)
    keep = torch.tensor([True, False, True])
    mixed = _harmon_z(harmon, batch, dataclasses.replace(plan, hint_keep=keep))
    dropped = _harmon_z(harmon, batch, dataclasses.replace(plan, hint_keep=torch.zeros(3, dtype=torch.bool)))
    assert torch.allclose(dropped, none, atol=1e-5)
    assert torch.allclose(mixed[1], none[1], atol=1e-5)
    assert torch.allclose(mixed[[0, 2]], every[[0, 2]], atol=1e-5)
    assert not torch.allclose(every[1], none[1], atol=1e-4)


def test_harmon_caption_stopwords_line_up_with_the_caption(harmon):
    tok = harmon.text_tokenizer
    batch = harmon.prepare_t2i(_records_with([CAPTION, "a red cube"], harmon.image_size))
    g = harmon(batch, mode="ground")
    stop, valid, ids = g.text_stopword, g.text_valid, batch.text_ids
    assert stop.shape == valid.shape == ids.shape and stop.dtype == torch.bool
    assert not (stop & ~valid).any()
    assert tok.convert_ids_to_tokens(ids[0][stop[0]].tolist()) == STOP
    assert len(tok.convert_ids_to_tokens(ids[0][valid[0] & ~stop[0]].tolist())) == len(CONTENT)
    # the template's "an" (Generate an image:) is a function word but never a caption token
    assert "an" in tok.convert_ids_to_tokens(ids[0].tolist())
    assert tok.convert_ids_to_tokens(ids[1][stop[1]].tolist()) == ["a"]


def test_harmon_stopwords_of_sub_word_tokens_are_whole_words():
    from segros.backbones.harmon.text import encode_t2i

    specials = ["<|im_end|>", "<|im_start|>"]
    tok = _bpe_tokenizer(_bpe_corpus(), specials, eos_token=specials[0], pad_token=specials[0])
    text = encode_t2i(tok, [CAPTION, "a red cube"], 200)
    ids, caption, stop = text["text_ids"], text["caption_mask"], text["caption_stopword"]
    assert int(caption[0].sum()) > len(CAPTION.split())  # some words are cut into sub-words
    assert not (stop & ~caption).any()
    assert _words(tok, ids[0][stop[0]]) == STOP
    assert _words(tok, ids[0][caption[0] & ~stop[0]]) == CONTENT
    assert _words(tok, ids[1][stop[1]]) == ["a"]
    # over-long captions lose their last tokens, and their flags with them
    short = encode_t2i(tok, [CAPTION], int(text["text_mask"][0].sum()) - 3)
    n = int(short["caption_mask"][0].sum())
    assert torch.equal(short["caption_stopword"][0][short["caption_mask"][0]], stop[0][caption[0]][:n])
