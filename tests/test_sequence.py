"""The Fig. 6 attention pattern, checked cell by cell, and its use with SDPA."""

import pytest
import torch
import torch.nn.functional as F

from segros.sequence import pack_layout


def expected_allowed(K, text_real, N):
    """Cell-by-cell statement of the rules, written independently of the library."""
    T = len(text_real)
    kinds = ["h"] * K + ["t"] * T + ["i"] * N
    real = [True] * K + list(text_real) + [True] * N
    S = len(kinds)
    out = [[False] * S for _ in range(S)]
    for q in range(S):
        for k in range(S):
            if not real[q]:
                out[q][k] = q == k  # a padding query only sees itself
                continue
            if not real[k]:
                continue
            if kinds[q] == "h":
                out[q][k] = kinds[k] == "h"
            elif kinds[q] == "t":
                out[q][k] = kinds[k] == "h" or (kinds[k] == "t" and k <= q)
            else:
                out[q][k] = True
    return torch.tensor(out)


def test_fig6_rules_cell_by_cell():
    text_mask = torch.tensor([[True, True, True], [True, False, False]])
    layout = pack_layout(2, text_mask, 3)
    for b in range(2):
        want = expected_allowed(2, text_mask[b].tolist(), 3)
        assert torch.equal(layout.allowed[b], want), f"sample {b}"
    # a few rules spelled out on sample 0: [h0 h1 | t0 t1 t2 | i0 i1 i2]
    a = layout.allowed[0]
    assert a[0, 1] and not a[0, 2] and not a[0, 5]  # hint sees hint, not text or image
    assert a[3, 0] and a[3, 2] and not a[3, 4] and not a[3, 5]  # text: hints, causal text, no image
    assert a[6, 0] and a[6, 4] and a[6, 7]  # image sees everything
    b1 = layout.allowed[1]  # text tokens 1 and 2 are padding (positions 3, 4)
    assert b1[3, 3] and b1[4, 4]  # a padding query sees only itself ...
    assert b1[:, 3].sum() == 1 and b1[:, 4].sum() == 1  # ... and no other query sees padding


def test_no_hints_no_text():
    layout = pack_layout(0, torch.zeros(2, 0, dtype=torch.bool), 4)
    assert layout.allowed.all()
    assert layout.position_ids.tolist() == [[0, 1, 2, 3]] * 2


def test_positions_give_hints_their_image_slot():
    text_mask = torch.tensor([[True, True, False], [True, True, True]])
    hint_idx = torch.tensor([[0, 2], [1, 3]])
    layout = pack_layout(2, text_mask, 4, hint_idx=hint_idx)
    pos = layout.position_ids
    assert pos[0].tolist() == [2 + 0, 2 + 2, 0, 1, 0, 2, 3, 4, 5]
    assert pos[1].tolist() == [3 + 1, 3 + 3, 0, 1, 2, 3, 4, 5, 6]
    assert layout.hints == slice(0, 2) and layout.text == slice(2, 5) and layout.image == slice(5, 9)
    prefix = pack_layout(2, text_mask, 4)
    assert prefix.position_ids[0].tolist() == [0, 1, 2, 3, 0, 4, 5, 6, 7]


def test_the_allowed_mask_runs_in_sdpa_without_nan_and_blocks_what_it_should():
    torch.manual_seed(0)
    text_mask = torch.tensor([[True, True, False, False]])
    layout = pack_layout(2, text_mask, 3)
    S = layout.allowed.shape[-1]
    q = torch.randn(1, 2, S, 8)
    k = torch.randn(1, 2, S, 8)
    v = torch.randn(1, 2, S, 8)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.allowed.unsqueeze(1))  # as the adapters
    assert torch.isfinite(out).all()
    # changing a value a query may not attend to leaves that query's output unchanged
    v2 = v.clone()
    v2[..., 5, :] += 100.0  # the first image token
    out2 = F.scaled_dot_product_attention(q, k, v2, attn_mask=layout.allowed.unsqueeze(1))
    unaffected = ~layout.allowed[0, :, 5]
    assert torch.allclose(out[0, :, unaffected], out2[0, :, unaffected])
    assert not torch.allclose(out[0, :, ~unaffected], out2[0, :, ~unaffected])


def test_bad_layout_arguments():
    with pytest.raises(TypeError, match="text_mask"):
        pack_layout(1, torch.ones(1, 2), 3)
    with pytest.raises(ValueError, match="hint_idx"):
        pack_layout(2, torch.ones(1, 2, dtype=torch.bool), 3, hint_idx=torch.zeros(1, 3, dtype=torch.long))
