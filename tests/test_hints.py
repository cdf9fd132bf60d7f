"""Visual hints on TinyUMM: prefix positions carry no slot, slot positions do; hint dropout;
stopwords left out of the grounding (method.hint_position / hint_prob / text_stopwords)."""

import dataclasses

import pytest
import torch

from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions
from segros.data.sources import ShapesImageText
from segros.grounding import GroundingConfig, content_tokens
from segros.plan import make_plan, plan_batch, preset
from segros.stopwords import is_stopword, token_stopwords
from segros.train.config import ConfigError, load_config


@pytest.fixture(scope="module")
def backbone(small_tokenizer):
    torch.manual_seed(0)
    model = TinyBackbone.from_options(TinyOptions(image_tokenizer=str(small_tokenizer), image_size=32))
    with torch.no_grad():  # a trained model's hints differ by content; so must these
        model.model.position.weight.normal_(0, 0.5)
        model.model.embed.weight.normal_(0, 0.5)
    return model.eval()


def batch_with_repeated_code(backbone, n=2):
    """A batch whose images share one code (the background) at many slots."""
    source = ShapesImageText(32, seed=0, length=100)
    batch = backbone.prepare_t2i([source[i] for i in range(n)])
    return batch


def two_plans_same_hint_contents(backbone, batch, position):
    """Two plans whose hints have identical contents in the same order but other slots."""
    codes = batch.extras["codes"]
    B, N = codes.shape
    background = torch.mode(codes, dim=1).values  # the most frequent code per image
    slots = [(codes[b] == background[b]).nonzero().flatten() for b in range(B)]
    k = 4
    assert all(len(s) >= 2 * k for s in slots), "test image needs >= 8 background tokens"
    first = torch.stack([s[:k] for s in slots])
    second = torch.stack([s[-k:] for s in slots])
    gen = torch.Generator().manual_seed(0)
    plan = make_plan(preset("sft", hint_position=position), torch.full((B,), 0.5), N, None, gen)
    # the same seen tokens and targets; hints at first vs second slots
    seen = plan.seen.clone()
    for b in range(B):
        seen[b, torch.cat([first[b], second[b]])] = False
    weight = (~seen).float()
    a = dataclasses.replace(plan, hint_idx=first, seen=seen, loss_weight=weight)
    b = dataclasses.replace(plan, hint_idx=second, seen=seen, loss_weight=weight)
    assert torch.equal(backbone.hint_embeddings(batch, first), backbone.hint_embeddings(batch, second))
    return a, b


def test_prefix_hints_do_not_tell_their_slot(backbone):
    batch = batch_with_repeated_code(backbone)
    a, b = two_plans_same_hint_contents(backbone, batch, "prefix")
    with torch.no_grad():
        assert torch.equal(backbone.reconstruction_loss(batch, a), backbone.reconstruction_loss(batch, b))


def test_slot_hints_tell_their_slot(backbone):
    batch = batch_with_repeated_code(backbone)
    a, b = two_plans_same_hint_contents(backbone, batch, "slot")
    with torch.no_grad():
        loss_a, loss_b = backbone.reconstruction_loss(batch, a), backbone.reconstruction_loss(batch, b)
    assert not torch.allclose(loss_a, loss_b)


def test_prefix_keeps_generation_positions(backbone):
    """With prefix hints the text and image tokens get the ids they get without hints."""
    from segros.sequence import pack_layout

    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    plain = pack_layout(0, mask, 5)
    hinted = pack_layout(3, mask, 5, hint_idx=torch.tensor([[4, 1, 2], [0, 3, 4]]), hint_position="prefix")
    assert torch.equal(hinted.position_ids[:, 3:], plain.position_ids)
    assert hinted.position_ids[:, :3].tolist() == [[-3, -2, -1]] * 2
    slot = pack_layout(3, mask, 5, hint_idx=torch.tensor([[4, 1, 2], [0, 3, 4]]), hint_position="slot")
    assert slot.position_ids[:, :3].tolist() == [[7, 4, 5], [2, 5, 6]]


def test_hint_prob_draws_per_sample_and_default_draws_nothing():
    B, N = 400, 16
    emb = torch.randn(B, 3, 8), torch.randn(B, N, 8)
    valid = torch.ones(B, 3, dtype=torch.bool)
    ratio = torch.full((B,), 0.5, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    full = plan_batch(*emb, valid, preset("segros"), ratio, g1)
    assert full.hint_keep is None and full.hint_valid() is None
    half = plan_batch(*emb, valid, preset("segros", hint_prob=0.5), ratio, g2)
    assert 0.4 < half.hint_keep.float().mean() < 0.6
    assert half.hint_valid().shape == half.hint_idx.shape
    # the hint draw comes after everything else: the roles are unchanged by it
    assert torch.equal(full.hint_idx, half.hint_idx) and torch.equal(full.seen, half.seen)


def test_english_stopwords():
    assert all(is_stopword(w) for w in "a an the of is and above below in on".split())
    assert not any(is_stopword(w) for w in "photo red circle two small left right top".split())
    text = "a photo of the red cube"
    offsets = [(0, 1), (1, 4), (4, 7), (8, 10), (11, 14), (15, 18), (19, 23), (23, 23)]  # sub-words
    # "a", " ph" "oto" (photo), " of", " the", " red", " cube", special
    assert token_stopwords(text, [(0, 1), (2, 4), (4, 7), (8, 10), (11, 14), (15, 18), (19, 23), (0, 0)]) == [
        True, False, False, True, True, False, False, False,
    ]  # fmt: skip
    assert len(token_stopwords(text, offsets)) == len(offsets)


def test_tiny_marks_caption_stopwords_and_grounding_skips_them(backbone):
    caption = "a photo of a red circle left of a blue square"
    from segros.data.readers import ImageTextRecord

    source = ShapesImageText(32, seed=0, length=10)
    batch = backbone.prepare_t2i([ImageTextRecord(source[0].image, caption, "x")])
    g = backbone.grounding_inputs(batch)
    words = caption.split()
    marked = g.text_stopword[0][g.text_valid[0]].tolist()
    assert marked == [w in {"a", "of"} for w in words]
    content = content_tokens(g.text_valid, g.text_stopword, "english")
    assert content.sum() == 6
    assert torch.equal(content_tokens(g.text_valid, g.text_stopword, "none"), g.text_valid)
    # a caption of function words only keeps all of them rather than leaving the map undefined
    only = torch.tensor([[True, True]])
    assert torch.equal(content_tokens(only, torch.tensor([[True, True]]), "english"), only)
    # the plan reads it: with english no stopword is ever kept in w
    gen = torch.Generator().manual_seed(0)
    cfg = preset("segros", grounding=GroundingConfig(text_stopwords="english", text_keep_ratio=1.0))
    plan = plan_batch(
        g.text_emb, g.image_emb, g.text_valid, cfg, torch.tensor([0.5], dtype=torch.float64), gen,
        text_stopword=g.text_stopword,
    )  # fmt: skip
    assert not (plan.grounding.text_keep & g.text_stopword).any()
    assert plan.grounding.text_keep.sum() == 6


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("method.hint_position=middle", "method.hint_position"),
        ("method.text_stopwords=french", "method.text_stopwords"),
        ("method.hint_prob=1.5", "method.hint_prob"),
    ],
)
def test_invalid_knobs_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


def test_knobs_reach_the_plan_config():
    knobs = ["method.hint_position=slot", "method.hint_prob=0.5", "method.text_stopwords=english"]
    cfg = load_config(None, knobs)
    plan_cfg = cfg.method.plan_config()
    assert (plan_cfg.hint_position, plan_cfg.hint_prob) == ("slot", 0.5)
    assert plan_cfg.grounding.text_stopwords == "english"
    assert load_config(None, []).method.plan_config().hint_position == "prefix"
