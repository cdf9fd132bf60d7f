"""Speed of `segros.grounding.ground` against two baselines measured in the same run.

(a) one batched matmul image_emb @ text_emb^T of the same shapes and dtype: the floor any
    grounding must pay, since Eq. 5 needs that product;
(b) a per-sample Python loop over the same equations (what a naive port would do).

For each shape it prints both ratios, the machine's matmul rate (2*B*N*L*D / t of (a)) and the
split of ``ground``'s time by stage. Each stage is timed on its own with the same inputs and the
same interleaved-median method as the whole, so the stages need not add up to the whole exactly.
The stages are the ones ``ground`` calls in order:

    slots + noise    Eq. 8's K per sample and Eq. 12's noise: they need only the mask and the generator
    text Gram        Zt Ztᵀ as three blocks, for captions of GRAM_SPLIT_MIN tokens or more (else 0)
    norms + product  image-row norms and the (B, N, L) product Zi Ztᵀ; for shorter captions also
                     each chunk's text Gram, right after its product
    text softmax     the column shift, the text norms and the float64 softmax (Eqs. 3-4)
    exponentials     exp((A - 1) / tau) and its row / column sums (Eqs. 5-6, Eq. 10's sums)
    filter + map     Omega, top-K, the map, min-max and adding the noise (Eqs. 7-12)
    checks           the argument checks and the finiteness test

Target: ground <= 1.5x the single matmul at every shape, in float32, on an idle machine (it was
<= 3x before). The bfloat16 rows (inputs in bfloat16, as under autocast) compare against a
bfloat16 matmul and, for context, a float32 one: ``ground`` computes in float32 whatever the input
dtype, so where the CPU multiplies bfloat16 faster than float32 that ratio cannot reach 1.5.

Prompts padded to a fixed width (Show-o pads every caption to 128 tokens, on the left) are one more
row per float32 shape: captions of L/8 to L/4 tokens right-aligned in L columns, against the same
captions alone in L/4 columns. ``ground`` computes on the captions' columns only
(``grounding.caption_span``), so the padding should cost close to nothing.

Timings are medians over rounds that call every measured function in turn. On a shared machine use
``--threads 1 --clock cpu`` (this process's CPU time) for steadier ratios; the target is wall time.

    python benchmarks/grounding_speed.py            # the three shapes below, float32 and bfloat16
    python benchmarks/grounding_speed.py [--batch 16 --image-tokens 1024 --text-tokens 128 --dim 1536]
    python benchmarks/grounding_speed.py --dtype float32 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from segros import grounding
from segros._checks import compute_dtype
from segros.grounding import GroundingConfig, ground

SHAPES = ((16, 1024, 128, 1536), (8, 1024, 256, 2048), (32, 256, 64, 896))  # (B, N, L, D)
DEFAULT_SHAPE = SHAPES[0]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_seconds(fn, repeats: int, warmup: int = 2, clock=time.perf_counter) -> float:
    return interleaved_medians({"fn": fn}, repeats, warmup, clock)["fn"]


def interleaved_medians(
    fns: dict, repeats: int, warmup: int = 2, clock=time.perf_counter
) -> dict[str, float]:
    """Median seconds of each callable, timed in turn within every round.

    Interleaving makes the ratios between them robust to load that drifts during the run.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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


def stage_callables(text, image, valid, cfg: GroundingConfig, generator: torch.Generator) -> dict:
    """``ground``'s stages as separate callables on the same inputs (see the module docstring).

    The text softmax and the exponentials work in place on the Gram and the product, so those
    stages first copy a saved input into a reused buffer; the copies are timed on their own and
    subtracted.
    """
    tau = cfg.temperature
    dtype = compute_dtype(text, image)
    zt = text.to(dtype)
    shift = grounding.column_shift(valid, tau)
    folded = grounding.gram_in_product(zt.shape[1])
    slots, noise = grounding._draws(valid, image.shape[1], cfg, generator, zt)
    gram = None if folded else grounding._text_gram(zt)
    product, zi_norm, gram = grounding._cosine_product(image, zt, dtype, gram)
    saved_gram = gram.clone()
    text_inv_norm, s_intra = grounding._text_softmax(gram, valid, shift, tau, dtype)
    buffer = product.clone()
    expo, s_inter, col_sums = grounding._exponentials(buffer, zi_norm, text_inv_norm, shift, tau)

    def checks():
        grounding._check_inputs(text, image, valid)
        return bool(torch.isfinite(zi_norm.sum() + s_inter.sum() + s_intra.sum()))

    return {
        "slots + noise": lambda: grounding._draws(valid, image.shape[1], cfg, generator, zt),
        "text Gram": (lambda: None) if folded else (lambda: grounding._text_gram(zt)),
        "norms + product": lambda: grounding._cosine_product(
            image, zt, dtype, None if folded else saved_gram
        ),
        "text softmax": lambda: grounding._text_softmax(
            gram.copy_(saved_gram), valid, grounding.column_shift(valid, tau), tau, dtype
        ),
        "(copy for text softmax)": lambda: gram.copy_(saved_gram),
        "exponentials": lambda: grounding._exponentials(
            buffer.copy_(product), zi_norm, text_inv_norm, shift, tau
        ),
        "(copy for exponentials)": lambda: buffer.copy_(product),
        "filter + map": lambda: grounding._filter_and_map(
            s_intra, s_inter, expo, col_sums, valid, cfg, slots, noise
        ),
        "checks": checks,
    }


def run_shape(B: int, N: int, L: int, D: int, dtype: torch.dtype, repeats: int, loop: bool, clock) -> dict:
    g = torch.Generator().manual_seed(0)
    text = torch.randn(B, L, D, generator=g).to(dtype)
    image = torch.randn(B, N, D, generator=g).to(dtype)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    valid = torch.arange(L) < lengths[:, None]
    cfg = GroundingConfig()

    whole = {
        "matmul": lambda: torch.bmm(image, text.transpose(1, 2)),
        "ground": lambda: ground(text, image, valid, cfg, g),
    }
    if dtype != torch.float32:  # ground computes in float32: its own floor, for context
        text32, image32 = text.float(), image.float()
        whole["matmul float32"] = lambda: torch.bmm(image32, text32.transpose(1, 2))
    if loop:
        whole["loop"] = lambda: loop_ground(text, image, valid, cfg, g)
    t = interleaved_medians(whole, repeats, clock=clock)
    stages = interleaved_medians(stage_callables(text, image, valid, cfg, g), repeats, clock=clock)
    for stage in ("text softmax", "exponentials"):  # both work in place: their input copies are taken out
        stages[stage] = max(0.0, stages[stage] - stages.pop(f"(copy for {stage})"))
    t["stages"] = stages
    t["clock"] = clock.__name__
    return t


def run_fixed_width(B: int, N: int, L: int, D: int, repeats: int, clock) -> dict:
    """``ground`` on captions left-padded to L columns vs on the same captions in L/4 columns."""
    g = torch.Generator().manual_seed(1)
    W = L // 4
    text = torch.randn(B, W, D, generator=g)
    image = torch.randn(B, N, D, generator=g)
    lengths = torch.randint(L // 8, W + 1, (B,), generator=g)
    valid = torch.arange(W).flip(0) < lengths[:, None]  # right-aligned: left padding
    padded_text = torch.randn(B, L, D, generator=g)
    padded_text[:, L - W :] = text
    padded_valid = torch.zeros(B, L, dtype=torch.bool)
    padded_valid[:, L - W :] = valid
    cfg = GroundingConfig()
    return interleaved_medians(
        {
            "matmul": lambda: torch.bmm(image, padded_text.transpose(1, 2)),
            "padded": lambda: ground(padded_text, image, padded_valid, cfg, g),
            "captions": lambda: ground(text, image, valid, cfg, g),
        },
        repeats,
        clock=clock,
    )


def report_fixed_width(L: int, t: dict) -> None:
    print(
        f"  fixed-width prompts (captions of {L // 8}-{L // 4} tokens left-padded to {L}): ground "
        f"{t['padded'] * 1e3:.2f} ms = {t['padded'] / t['captions']:.2f} x ground on the captions alone "
        f"({t['captions'] * 1e3:.2f} ms), {t['padded'] / t['matmul']:.2f} x the {L}-column matmul"
    )


def report(B: int, N: int, L: int, D: int, dtype: torch.dtype, t: dict) -> None:
    name = str(dtype).removeprefix("torch.")
    rate = 2 * B * N * L * D / t["matmul"] / 1e9
    threads = torch.get_num_threads()
    print(f"\nB={B} N={N} L={L} D={D} {name} inputs, torch threads={threads}, {t['clock']} medians")
    matmul_ms = t["matmul"] * 1e3
    print(f"  {name} matmul (a)      : {matmul_ms:8.2f} ms   ({rate:.0f} GFLOP/s {name} on this machine)")
    print(f"  ground                 : {t['ground'] * 1e3:8.2f} ms")
    if "loop" in t:
        print(f"  per-sample loop (b)    : {t['loop'] * 1e3:8.2f} ms")
    target = "  (target <= 1.5)" if dtype == torch.float32 else ""
    print(f"  ratio ground / matmul (a) = {t['ground'] / t['matmul']:.2f}{target}")
    if "matmul float32" in t:
        rate32 = 2 * B * N * L * D / t["matmul float32"] / 1e9
        ms32 = t["matmul float32"] * 1e3
        print(
            f"  ratio ground / float32 matmul = {t['ground'] / t['matmul float32']:.2f}"
            f"  (float32 matmul {ms32:.2f} ms, {rate32:.0f} GFLOP/s; ground computes in float32)"
        )
    if "loop" in t:
        print(f"  ratio ground / loop   (b) = {t['ground'] / t['loop']:.2f}")
    total = sum(t["stages"].values())
    print(f"  stages of ground (each timed alone; sum {total * 1e3:.2f} ms):")
    for stage, seconds in t["stages"].items():
        print(f"    {stage:16s} {seconds * 1e3:8.2f} ms  {seconds / t['matmul']:5.2f} x matmul")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, help=f"default {DEFAULT_SHAPE[0]}")
    p.add_argument("--image-tokens", type=int, help=f"default {DEFAULT_SHAPE[1]}")
    p.add_argument("--text-tokens", type=int, help=f"default {DEFAULT_SHAPE[2]}")
    p.add_argument("--dim", type=int, help=f"default {DEFAULT_SHAPE[3]}")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--all",
        action="store_true",
        help="the three issue shapes in float32 and bfloat16 (the default when no shape is given)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-loop", action="store_true", help="skip the per-sample loop baseline (b)")
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time (the target's measure, on an idle machine); cpu: this process's CPU "
        "time, steadier on a shared machine, best with --threads 1",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    given = (args.batch, args.image_tokens, args.text_tokens, args.dim)
    if args.all or all(v is None for v in given):
        shapes = list(SHAPES)
    else:
        shapes = [tuple(v if v is not None else d for v, d in zip(given, DEFAULT_SHAPE, strict=True))]
    dtypes = {"float32": [torch.float32], "bfloat16": [torch.bfloat16]}.get(
        args.dtype, [torch.float32, torch.bfloat16]
    )

    ratios = []
    for dtype in dtypes:
        for B, N, L, D in shapes:
            loop = not args.no_loop and dtype == torch.float32
            t = run_shape(B, N, L, D, dtype, args.repeats, loop, CLOCKS[args.clock])
            report(B, N, L, D, dtype, t)
            if dtype == torch.float32:
                report_fixed_width(L, run_fixed_width(B, N, L, D, args.repeats, CLOCKS[args.clock]))
            ratios.append((f"B{B} N{N} L{L} D{D} {str(dtype).removeprefix('torch.')}", t))
    print("\nsummary (matmul in the inputs' dtype)")
    print(f"  {'shape':34s} {'matmul GFLOP/s':>14s} {'ground/matmul':>14s} {'ground/loop':>12s}")
    for label, t in ratios:
        B, N, L, D = (int(part[1:]) for part in label.split()[:4])
        rate = 2 * B * N * L * D / t["matmul"] / 1e9
        loop = f"{t['ground'] / t['loop']:12.2f}" if "loop" in t else f"{'-':>12s}"
        print(f"  {label:34s} {rate:14.0f} {t['ground'] / t['matmul']:14.2f} {loop}")


if __name__ == "__main__":
    main()
