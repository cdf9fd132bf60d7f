"""``segros generate``: a benchmark's prompts through any checkpoint, in its scorer's layout.

    segros generate --checkpoint RUN --benchmark geneval --prompts evaluation_metadata.jsonl --out DIR

The checkpoint is anything ``load_backbone`` reads (a run folder, ``checkpoints/latest``, a model
folder). Layouts and file formats: :mod:`segros.eval.benchmarks`.

Launched on several processes (``accelerate launch -m segros.cli generate ...`` or ``torchrun``)
each process takes every ``world``-th batch of the single-process batching, so the folder holds
the same bytes as a one-process run; ``--skip-existing`` resumes either way.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from segros.eval.benchmarks import BENCHMARKS, DEFAULT_SAMPLES

WEIGHTS_HELP = "the trained weights (raw, default) or their EMA (ema: runs with optim.ema_decay)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run folder, checkpoints/latest, or model folder")
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--prompts", required=True, help="the benchmark's prompt file (your copy)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--samples", type=int, default=None, help="images per prompt (default 4; WISE: 1, what it scores)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", choices=("raw", "ema"), default="raw", help=WEIGHTS_HELP)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (a quick look)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the backbone's")
    parser.add_argument("--steps", type=int, default=None, help="decoding steps; default: the backbone's")
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="resume: keep images already written (those that decode), make the rest",
    )


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    import torch

    from segros.backbones.registry import load_backbone
    from segros.eval.benchmarks import PromptFileError, generate_benchmark, read_benchmark_prompts
    from segros.eval.generate import remove_undecodable

    if args.samples is None:
        args.samples = DEFAULT_SAMPLES[args.benchmark]
    if args.benchmark == "wise" and args.samples != 1:
        print("--samples: WISE scores one image per prompt (<prompt_id>.png); use 1", file=sys.stderr)
        return 2
    if args.samples < 1 or args.batch_size < 1:
        print("--samples and --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        records = read_benchmark_prompts(args.prompts, args.benchmark)
    except PromptFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = records[: args.limit] if args.limit else records
    try:
        backbone = load_backbone(args.checkpoint, weights=args.weights)
    except (FileNotFoundError, ValueError) as e:
        print(f"segros generate: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, FileNotFoundError) else 1  # a wrong path vs a broken checkpoint
    share, barrier, device = processes()
    if args.skip_existing and share.rank == 0:
        # an output cut short (full disk, interrupted copy) is not "existing": make it again
        removed = remove_undecodable(args.out)
        for path, problem in removed:
            print(f"{path} does not decode ({problem}); generating it again", file=sys.stderr)
    if device is not None and device.type != "cpu":
        backbone.to(device)
    elif device is None and torch.accelerator.is_available():
        backbone.to(torch.accelerator.current_accelerator())
    options = {k: v for k, v in {"guidance_scale": args.guidance_scale, "steps": args.steps}.items() if v}
    start = time.perf_counter()
    if barrier is not None:
        barrier()  # undecodable files are gone before anyone lists what is missing
    made = generate_benchmark(
        backbone, records, args.benchmark, args.out, args.samples, args.seed, args.batch_size,
        skip_existing=args.skip_existing, progress=sys.stderr.isatty() and share.rank == 0,
        options=options, share=share, barrier=barrier,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if barrier is not None:
        barrier()
        # destroyed here, not left to the interpreter's exit, which may abort a gloo process
        torch.distributed.destroy_process_group()
    if share.rank == 0:
        on = f" on {share.world} processes" if share.world > 1 else ""
        print(f"{len(records)} prompts, {made} images generated{on} in {seconds:.1f} s -> {args.out}")
    return 0


def processes() -> tuple[Any, Any, Any]:
    """(this process's :class:`~segros.eval.generate.Share`, a barrier, its device) under a
    multi-process launcher (``WORLD_SIZE`` > 1: accelerate's ``PartialState`` joins the process
    group, gloo on CPU); one process: (everything, None, None)."""
    from segros.eval.generate import ONE_PROCESS, Share

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ONE_PROCESS, None, None
    import torch
    from accelerate import PartialState

    # with no GPU, accelerate forms a multi-process (gloo) group only when told cpu=True
    state = PartialState(cpu=not torch.accelerator.is_available())
    return Share(state.process_index, state.num_processes), state.wait_for_everyone, state.device
