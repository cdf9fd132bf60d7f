"""A plain per-sample float64 implementation of paper Eqs. 3-12, written straight from the text.

It is deliberately unbatched and unoptimised: the library's batched code must agree with it.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-5  # same "negligible range" rule as the library: a constant vector scales to zeros


def minmax(v: torch.Tensor) -> torch.Tensor:
    lo, hi = v.min(), v.max()
    if hi - lo <= EPS * max(abs(hi.item()), abs(lo.item())):
        return torch.zeros_like(v)
    return (v - lo) / (hi - lo)


def ground_one(zt, zi, valid, rho=0.4, tau=1.0, text_filter="both"):
    """Returns (omega over valid tokens, keep over all L, m-bar over N) for one sample."""
    zt = zt.double()[valid]
    zi = zi.double()
    zt = zt / zt.norm(dim=-1, keepdim=True)
    zi = zi / zi.norm(dim=-1, keepdim=True)
    lv = zt.shape[0]
    S = zt @ zt.T
    p_self = torch.exp(S / tau) / torch.exp(S / tau).sum(dim=1, keepdim=True)  # Eq. 3
    s_intra = p_self.sum(dim=0)  # Eq. 4
    A = zi @ zt.T  # (N, Lv)
    p_cross = torch.exp(A / tau) / torch.exp(A / tau).sum(dim=1, keepdim=True)  # Eq. 5
    s_inter = p_cross.sum(dim=0)  # Eq. 6
    omega = {
        "both": minmax(s_intra) + minmax(s_inter),
        "intra": minmax(s_intra),
        "inter": minmax(s_inter),
        "none": torch.zeros(lv, dtype=torch.float64),
    }[text_filter]
    if text_filter == "none":
        w = torch.ones(lv, dtype=torch.float64)
    else:
        k = max(1, math.floor(rho * lv))
        ranked = sorted(range(lv), key=lambda j: (-omega[j].item(), j))
        w = torch.zeros(lv, dtype=torch.float64)
        w[ranked[:k]] = 1.0
    At = A.T  # (Lv, N)
    p_t2i = torch.exp(At / tau) / torch.exp(At / tau).sum(dim=1, keepdim=True)  # Eq. 10
    m = (w[:, None] * p_t2i).sum(dim=0)  # Eq. 11
    keep = torch.zeros(valid.shape[0], dtype=torch.bool)
    keep[valid.nonzero().flatten()] = w.bool()
    return omega, keep, minmax(m), s_intra, s_inter


def random_batch(B=3, L=9, N=16, D=8, seed=0, dtype=torch.float32):
    """Random embeddings and a ragged valid mask: sample b has L - b caption tokens after a BOS."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(B, L, D, generator=g, dtype=dtype)
    image = torch.randn(B, N, D, generator=g, dtype=dtype)
    valid = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        valid[b, 1 : L - b] = True  # position 0 is a BOS-like token, tail is padding
    return text, image, valid
