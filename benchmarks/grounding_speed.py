"""Speed of `segros.grounding.ground` against two baselines measured in the same run.

(a) one batched matmul image_emb @ text_emb^T of the same shapes: the floor any grounding
    must pay, since Eq. 5 needs that product;
(b) a per-sample Python loop over the same equations (what a naive port would do).

Prints both ratios. Target (issue 2): ground <= 3x the single matmul.

    python benchmarks/grounding_speed.py [--batch 16 --image-tokens 1024 --text-tokens 128 --dim 1536]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from segros.grounding import GroundingConfig, ground


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def minmax(v: torch.Tensor) -> torch.Tensor:
    span = v.max() - v.min()
    return torch.zeros_like(v) if span <= 0 else (v - v.min()) / span


def loop_ground(text, image, valid, cfg: GroundingConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """Per-sample implementation of Eqs. 3-12 (the baseline (b))."""
    out = []
    for b in range(text.shape[0]):
        zt = torch.nn.functional.normalize(text[b][valid[b]], dim=-1)
        zi = torch.nn.functional.normalize(image[b], dim=-1)
        p_self = (zt @ zt.T / cfg.temperature).softmax(-1)
        a = zi @ zt.T / cfg.temperature
        omega = minmax(p_self.sum(0)) + minmax(a.softmax(-1).sum(0))
        k = max(1, math.floor(cfg.text_keep_ratio * zt.shape[0]))
        w = torch.zeros(zt.shape[0])
        w[omega.topk(k).indices] = 1.0
        m = (a.softmax(0) * w).sum(-1)
        out.append(minmax(m) + cfg.noise_scale * torch.rand(m.shape, generator=generator))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image-tokens", type=int, default=1024)
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    B, N, L, D = args.batch, args.image_tokens, args.text_tokens, args.dim
    g = torch.Generator().manual_seed(0)
    text = torch.randn(B, L, D, generator=g)
    image = torch.randn(B, N, D, generator=g)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    valid = torch.arange(L) < lengths[:, None]
    cfg = GroundingConfig()

    t_matmul = median_seconds(lambda: torch.bmm(image, text.transpose(1, 2)), args.repeats)
    t_ground = median_seconds(lambda: ground(text, image, valid, cfg, g), args.repeats)
    t_loop = median_seconds(lambda: loop_ground(text, image, valid, cfg, g), max(3, args.repeats // 3))

    print(f"shapes: B={B} N={N} L={L} D={D} float32, torch threads={torch.get_num_threads()}")
    print(f"single matmul (a): {t_matmul * 1e3:8.2f} ms")
    print(f"ground          : {t_ground * 1e3:8.2f} ms")
    print(f"per-sample loop (b): {t_loop * 1e3:8.2f} ms")
    print(f"ratio ground / matmul (a) = {t_ground / t_matmul:.2f}  (target <= 3)")
    print(f"ratio ground / loop   (b) = {t_ground / t_loop:.2f}")


if __name__ == "__main__":
    main()
