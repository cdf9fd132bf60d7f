"""Cost of SeGroS over plain SFT per training step, on TinyUMM ``small`` and one fixed batch.

Measured in one run, on the same batch: the median wall time of a full optimizer step
(grounding + plan, forward, backward, AdamW) for the ``segros`` and ``sft`` presets, their
ratio, and the share of a ``segros`` step spent computing the grounding map and the plan.
Targets (issue 5): ratio <= 1.4, grounding + plan share <= 3%.

    python benchmarks/train_step.py [--size small] [--batch 16] [--repeats 20]

The extra cost of SeGroS that is not grounding is the hint prefix: 0.3 * N more tokens in
every sequence, which the paper's method requires.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segros.train.config import load_config
from segros.train.loop import Trainer


def build(preset: str, size: str, batch_size: int, out: str) -> Trainer:
    cfg = load_config(
        "configs/tiny/segros.yaml",
        [
            f"method.preset={preset}",
            f"model.size={size}",
            f"data.batch_size={batch_size}",
            "logging.tensorboard=false",
            "run.progress=off",
            "run.seed=0",
        ],
    )
    return Trainer(cfg, out)


def time_steps(trainer: Trainer, batch, i2t, repeats: int) -> tuple[list[float], list[float]]:
    """Per repeat: (seconds of the whole step, seconds of grounding + plan)."""
    totals, plans = [], []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        plan = trainer.plan_for(batch)
        t1 = time.perf_counter()
        terms = trainer.model(batch, plan=plan, i2t=i2t)
        loss = terms["recon"] + trainer.cfg.method.i2t_weight * terms["i2t"]
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= 2:  # warm-up steps are not counted
            totals.append(t2 - t0)
            plans.append(t1 - t0)
    return totals, plans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="/tmp/segros-bench-train-step")
    args = p.parse_args()

    results = {}
    batch = i2t = None
    for preset in ("sft", "segros", "sft", "segros"):  # interleaved: drift hits both alike
        trainer = build(preset, args.size, args.batch, f"{args.out}/{preset}")
        if batch is None:  # the same records for every method
            records = next(iter(trainer.t2i))
            i2t_records = next(iter(trainer.i2t))
        batch = trainer.backbone.prepare_t2i(records)
        i2t = trainer.backbone.prepare_i2t(i2t_records)
        totals, plans = time_steps(trainer, batch, i2t, args.repeats // 2)
        old = results.setdefault(preset, ([], []))
        old[0].extend(totals)
        old[1].extend(plans)

    sft = statistics.median(results["sft"][0])
    seg = statistics.median(results["segros"][0])
    plan_share = statistics.median(p / t for t, p in zip(*results["segros"], strict=True))
    n = trainer.backbone.num_tokens
    print(f"TinyUMM {args.size}, batch {args.batch}, {n} image tokens, threads={torch.get_num_threads()}")
    print(f"median step  sft    : {sft * 1e3:8.1f} ms")
    print(f"median step  segros : {seg * 1e3:8.1f} ms  (+{int(0.3 * n)} hint tokens per sequence)")
    print(f"ratio segros / sft  = {seg / sft:.3f}   (target <= 1.4)")
    print(f"grounding + plan share of a segros step = {100 * plan_share:.2f}%   (target <= 3%)")


if __name__ == "__main__":
    main()
