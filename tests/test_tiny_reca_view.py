"""RecA's condition in TinyUMM: the understanding path's view of the clean image, not its codes.

RecA conditions generation on the understanding encoder's features of the image it reconstructs.
TinyUMM reads images for understanding with the same transformer (its image-to-text path), so
``model.hint_source=understanding`` takes the final hidden states of that path at the image
slots. These tests check that the view is exactly what the image-to-text pass computes, that it
is not the code embeddings the targets are made of, and that it carries no gradient.
"""

import dataclasses

import pytest
import torch

from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions
from segros.data.sources import ShapesConversations, ShapesImageText
from segros.plan import make_plan, preset
from segros.sequence import pack_layout


@pytest.fixture(scope="module")
def backbones(small_tokenizer):
    torch.manual_seed(0)
    codes = TinyBackbone.from_options(TinyOptions(image_tokenizer=str(small_tokenizer), image_size=32))
    view = TinyBackbone.from_options(
        TinyOptions(image_tokenizer=str(small_tokenizer), image_size=32, hint_source="understanding")
    )
    view.load_state_dict(codes.state_dict())
    return codes.eval(), view.eval()


def t2i_batch(backbone, n=3):
    source = ShapesImageText(32, seed=0, length=n)
    return backbone.prepare_t2i([source[i] for i in range(n)])


def reca_plan(batch):
    B, N = batch.extras["codes"].shape
    return make_plan(preset("reca"), torch.full((B,), 0.5), N, None, torch.Generator().manual_seed(0))


def test_view_is_the_image_to_text_pass_at_the_image_slots(backbones):
    _, view = backbones
    source = ShapesConversations(32, seed=0, length=4)
    batch = view.prepare_i2t([source[i] for i in range(4)])
    codes = batch.extras["codes"]
    B, N = codes.shape
    # the image-to-text pass, as i2t_loss builds it: image prefix (bidirectional), causal text
    layout = pack_layout(N, batch.text_mask, 0)
    segment = layout.segment.clone()
    segment[:N] = 2
    text = (layout.position_ids[:, N:] - N).clamp_min(0)
    positions = torch.cat([view._image_slot_ids(N, codes.device).expand(B, -1), text], 1)
    tokens = torch.cat([view._code_embeddings(codes), view.model.embed(batch.text_ids)], 1)
    with torch.no_grad():
        hidden = view.model.hidden(tokens, segment, positions, layout.allowed)
    torch.testing.assert_close(view.understanding_features(codes), hidden[:, :N], rtol=1e-5, atol=1e-5)


def test_reca_hints_differ_from_the_targets_codes_and_carry_no_gradient(backbones):
    codes_backbone, view = backbones
    batch = t2i_batch(view)
    plan = reca_plan(batch)
    assert plan.hint_idx.shape[1] == batch.extras["codes"].shape[1]  # RecA: every token a hint
    from_view = view.hint_embeddings(batch, plan.hint_idx)
    from_codes = codes_backbone.hint_embeddings(batch, plan.hint_idx)
    assert from_view.shape == from_codes.shape
    assert not from_view.requires_grad and from_codes.requires_grad
    assert (from_view - from_codes).abs().mean() > 0.1


def test_reca_with_the_view_trains_and_sft_ignores_the_setting(backbones):
    codes_backbone, view = backbones
    batch = t2i_batch(view)
    view.train()
    loss = view.reconstruction_loss(batch, reca_plan(batch))
    loss.backward()
    grads = [p.grad for p in view.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads
    view.zero_grad()
    view.eval()
    B, N = batch.extras["codes"].shape
    sft = make_plan(preset("sft"), torch.full((B,), 0.5), N, None, torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = [b.reconstruction_loss(batch, sft) for b in (codes_backbone, view)]
    assert torch.equal(same[0], same[1])


def test_hint_source_is_a_reload_option(backbones, tmp_path):
    codes_backbone, _ = backbones
    codes_backbone.save_pretrained(tmp_path)
    reloaded = TinyBackbone.from_pretrained(tmp_path, hint_source="understanding")
    assert reloaded.options.hint_source == "understanding"
    assert dataclasses.asdict(reloaded.cfg) == dataclasses.asdict(codes_backbone.cfg)
