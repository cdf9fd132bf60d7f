"""TinyUMM's learned position table: an image slot has one id, whatever the caption's length.

With ids that follow the text (slot i -> len(caption) + i) a cell has no stable identity in a
learned table and the shipped model never learned "left of" (docs/miniature.md). These tests read
the ids the model really embeds, through a hook on the position table.
"""

import dataclasses
import json

import pytest
import torch

from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions
from segros.backbones.tiny.model import TinyConfig
from segros.data.sources import ShapesConversations, ShapesImageText
from segros.plan import make_plan, preset


@pytest.fixture(scope="module")
def backbone(small_tokenizer):
    torch.manual_seed(0)
    return TinyBackbone.from_options(TinyOptions(image_tokenizer=str(small_tokenizer), image_size=32)).eval()


def embedded_ids(backbone, run):
    """Every (B, S) id tensor the position table embeds while ``run()`` executes."""
    seen = []
    hook = backbone.model.position.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        run()
    finally:
        hook.remove()
    return seen


def batch_of(backbone, captions):
    source = ShapesImageText(32, seed=0, length=len(captions))
    samples = [dataclasses.replace(source[i], caption=c) for i, c in enumerate(captions)]
    return backbone.prepare_t2i(samples)


CAPTIONS = ["a photo of a circle", "a photo of a red circle left of a blue square"]


def image_slot_ids(backbone, ids, num_image):
    return ids.expand(len(CAPTIONS), -1)[:, -num_image:]


def plain_plan(batch, position="prefix", hints=None):
    """Half the image masked, no grounding; optional hints at the given slots."""
    B, N = batch.extras["codes"].shape
    plan = make_plan(
        preset("sft", hint_position=position),
        torch.full((B,), 0.5),
        N,
        None,
        torch.Generator().manual_seed(0),
    )
    return plan if hints is None else dataclasses.replace(plan, hint_idx=hints)


def test_t2i_image_slots_have_fixed_ids(backbone):
    batch = batch_of(backbone, CAPTIONS)
    N = batch.extras["codes"].shape[1]
    plan = plain_plan(batch)
    (ids,) = embedded_ids(backbone, lambda: backbone.reconstruction_loss(batch, plan))
    expected = backbone.cfg.max_text_len + torch.arange(N)
    assert torch.equal(image_slot_ids(backbone, ids, N), expected.expand(len(CAPTIONS), -1))


def test_generation_uses_the_training_ids(backbone):
    ids = embedded_ids(backbone, lambda: backbone.generate_tokens(CAPTIONS, torch.Generator().manual_seed(0)))
    N = backbone.cfg.num_image_tokens
    expected = backbone.cfg.max_text_len + torch.arange(N)
    assert ids and all(torch.equal(i[:, -N:], expected.expand(i.shape[0], -1)) for i in ids)


def test_i2t_image_prefix_shares_the_t2i_ids_and_text_starts_at_zero(backbone):
    source = ShapesConversations(32, seed=0, length=10)
    batch = backbone.prepare_i2t([source[i] for i in range(3)])
    B, N = batch.extras["codes"].shape
    assert batch.text_mask.sum(1).unique().numel() > 1, "the test needs answers of several lengths"
    (ids,) = embedded_ids(backbone, lambda: backbone.i2t_loss(batch))
    assert torch.equal(ids[:, :N], (backbone.cfg.max_text_len + torch.arange(N)).expand(B, -1))
    real = batch.text_mask
    text_ids = ids[:, N:]
    assert torch.equal(text_ids[real], (real.long().cumsum(1) - 1)[real])


def test_slot_hints_take_their_slots_fixed_id(backbone):
    batch = batch_of(backbone, CAPTIONS)
    B = batch.extras["codes"].shape[0]
    plan = plain_plan(batch, "slot", hints=torch.tensor([[4, 1, 2]] * B))
    (ids,) = embedded_ids(backbone, lambda: backbone.reconstruction_loss(batch, plan))
    K = plan.hint_idx.shape[1]
    assert torch.equal(ids[:, :K], backbone.cfg.max_text_len + plan.hint_idx)


def test_legacy_checkpoints_keep_the_numbering_they_were_trained_with(backbone, tmp_path):
    backbone.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["image_positions"] == "fixed"
    del config["model"]["image_positions"]  # as written before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    legacy = TinyBackbone.from_pretrained(tmp_path).eval()
    assert legacy.cfg.image_positions == "after_text"
    batch = batch_of(legacy, CAPTIONS)
    N = batch.extras["codes"].shape[1]
    B, plan = batch.extras["codes"].shape[0], plain_plan(batch)
    (ids,) = embedded_ids(legacy, lambda: legacy.reconstruction_loss(batch, plan))
    n_text = batch.text_mask.sum(1, keepdim=True)
    assert torch.equal(ids.expand(B, -1)[:, -N:], n_text + torch.arange(N))


def test_unknown_numbering_is_refused():
    with pytest.raises(ValueError, match="image_positions"):
        TinyConfig(text_vocab=4, num_codes=4, num_image_tokens=4, image_positions="rotary")
