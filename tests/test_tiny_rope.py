"""TinyUMM with rotary positions (``model.positions=rope``): attention sees only position
differences, as in the real backbones (Phi, Qwen2); the option trains, saves and reloads."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import tiny_config

from segros.backbones.registry import load_backbone
from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions
from segros.backbones.tiny.model import TinyConfig, TinyUMM, rotary_angles, rotate
from segros.train.config import ConfigError, load_config
from segros.train.loop import train


def _hidden(model: TinyUMM, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    S = tokens.shape[1]
    allowed = torch.ones(1, S, S, dtype=torch.bool)
    return model.hidden(model.embed(tokens), torch.ones(S, dtype=torch.long), position_ids, allowed)


def test_rotation_keeps_norms_and_scores_depend_only_on_position_differences():
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 4, 1, 8).unbind(0)  # (B=1, H=4, S=1, Dh=8)
    at = lambda x, p: rotate(x, rotary_angles(torch.tensor([p]), 8))  # noqa: E731
    torch.testing.assert_close(at(q, 5).norm(dim=-1), q.norm(dim=-1))
    score = lambda i, j: (at(q, i) * at(k, j)).sum()  # noqa: E731
    torch.testing.assert_close(score(7, 3), score(14, 10))  # same difference, same score
    assert not torch.allclose(score(7, 3), score(3, 7))


def test_a_rope_model_is_shift_invariant_and_a_learned_one_is_not():
    cfg = dict(text_vocab=20, num_codes=8, num_image_tokens=4, max_text_len=8, dim=32, heads=4, layers=2)
    tokens = torch.randint(0, 20, (1, 6), generator=torch.Generator().manual_seed(1))
    ids = torch.arange(6)
    for positions, invariant in (("rope", True), ("learned", False)):
        torch.manual_seed(0)
        model = TinyUMM(TinyConfig(**cfg, positions=positions)).eval()
        with torch.no_grad():
            same = torch.allclose(_hidden(model, tokens, ids), _hidden(model, tokens, ids + 3), atol=1e-5)
        assert same == invariant, positions
    assert not hasattr(TinyUMM(TinyConfig(**cfg, positions="rope")), "position")  # no absolute table


def test_rope_option_is_validated_trains_saves_and_reloads(small_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.positions"):
        load_config(None, ["model.positions=alibi"])
    torch.manual_seed(0)
    backbone = TinyBackbone.from_options(
        TinyOptions(image_tokenizer=str(small_tokenizer), image_size=32, positions="rope")
    )
    assert backbone.cfg.positions == "rope"
    backbone.save_pretrained(tmp_path / "rope")
    loaded = load_backbone(tmp_path / "rope")
    assert loaded.cfg.positions == "rope"
    state, again = backbone.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)

    # the trainer runs it (the segros method: hints at prefix positions, grounding), loss falls
    cfg = tiny_config(small_tokenizer, "model.positions=rope", "method.preset=segros", "run.max_steps=12",
                      "optim.lr=3e-3")  # fmt: skip
    result = train(cfg, tmp_path / "run")
    assert all(map(math.isfinite, result.losses)) and sum(result.losses[-4:]) < sum(result.losses[:4])
    assert load_backbone(tmp_path / "run").cfg.positions == "rope"
