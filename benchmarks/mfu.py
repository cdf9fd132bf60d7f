"""Model FLOP utilisation of the TinyUMM pretraining step, against this machine's matmul rate.

Measured in one run: the float32 matmul rate of this machine (square ``torch.mm``, the best case
for the BLAS), the model FLOPs of one pretraining step counted by ``torch.utils.flop_counter``
on a real batch (forward + backward of the text-to-image and image-to-text terms), and the
median wall time of (a) the model step alone (plan, forward, backward, AdamW on a fixed batch) and
(b) the whole trainer step (plus collating fresh ShapesWorld records). MFU = model FLOPs per
second / matmul rate.

    python benchmarks/mfu.py [--batch 64] [--size small] [--repeats 20] [--compile]

Variants tried for the closing note: larger batches (bigger matmuls), ``--compile``
(``torch.compile`` of the transformer blocks, inductor on the CPU), thread counts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from segros.shipped import RECIPES
from segros.train.config import load_config
from segros.train.loop import Trainer


def matmul_rate(n: int = 1024, repeats: int = 20) -> float:
    """float32 FLOP/s of an n x n x n matmul on this machine (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def step(trainer: Trainer, batch, i2t) -> None:
    plan = trainer.plan_for(batch)
    terms = trainer.model(batch, plan=plan, i2t=i2t)
    loss = terms["recon"] + trainer.cfg.method.i2t_weight * terms["i2t"]
    trainer.accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="T2I batch (default: the recipe's)")
    p.add_argument("--size", default=None, help="model size (default: the recipe's)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="run.compile=true: compile the transformer blocks")
    p.add_argument("--workers", type=int, default=None, help="data.workers (default: the config's default)")
    args = p.parse_args()
    overrides = ["logging.tensorboard=false", "run.progress=off"]
    overrides += [f"data.batch_size={args.batch}"] if args.batch else []
    overrides += [f"model.size={args.size}"] if args.size else []
    overrides += ["run.compile=true"] if args.compile else []  # the trainer's own switch
    overrides += [f"data.workers={args.workers}"] if args.workers is not None else []
    cfg = load_config(RECIPES / "pretrain.yaml", overrides)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out)
        # the trainer's own streams: collated in loader workers when data.workers > 0
        t2i_iter, i2t_iter = iter(trainer.t2i_batches), iter(trainer.i2t_batches)
        batch, _, i2t = trainer._micro_batch(t2i_iter, i2t_iter)
        for _ in range(3):  # warm-up (and compilation)
            step(trainer, batch, i2t)
        with FlopCounterMode(display=False) as counter:
            plan = trainer.plan_for(batch)
            terms = trainer.model(batch, plan=plan, i2t=i2t)
            (terms["recon"] + terms["i2t"]).backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()
        model_times, full_times = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step(trainer, batch, i2t)
            model_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b, _, i = trainer._micro_batch(t2i_iter, i2t_iter)
            step(trainer, b, i)
            full_times.append(time.perf_counter() - t0)
    rate = matmul_rate()
    model_s, full_s = statistics.median(model_times), statistics.median(full_times)
    print(
        f"TinyUMM {cfg.model['size']}, T2I batch {cfg.data.batch_size} + I2T {cfg.data.i2t_batch_size}, "
        f"{trainer.backbone.num_tokens} image tokens, threads={torch.get_num_threads()}"
        + (", torch.compile" if args.compile else "")
        + f", data.workers={trainer.workers}"
    )
    print(f"machine float32 matmul rate (1024^3 mm): {rate / 1e9:8.1f} GFLOP/s")
    print(f"model FLOPs per step (forward + backward, counted): {flops / 1e9:8.3f} GFLOP")
    for name, seconds in (("model step  ", model_s), ("trainer step", full_s)):
        achieved = flops / seconds
        print(f"{name}: {seconds * 1e3:7.1f} ms -> {achieved / 1e9:6.1f} GFLOP/s, MFU {achieved / rate:.3f}")
    print(f"steps per second (trainer): {1 / full_s:.2f}")


if __name__ == "__main__":
    main()
