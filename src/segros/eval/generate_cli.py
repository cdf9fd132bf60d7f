"""``segros generate``: a benchmark's prompts through any checkpoint, in its scorer's layout.

    segros generate --checkpoint RUN --benchmark geneval --prompts evaluation_metadata.jsonl --out DIR

The checkpoint is anything ``load_backbone`` reads (a run folder, ``checkpoints/latest``, a model
folder). Layouts and file formats: :mod:`segros.eval.benchmarks`.
"""

from __future__ import annotations

import argparse

from segros.eval.benchmarks import BENCHMARKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run folder, checkpoints/latest, or model folder")
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--prompts", required=True, help="the benchmark's prompt file (your copy)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--samples", type=int, default=4, help="images per prompt (default 4)")
    parser.add_argument("--seed", type=int, default=0)
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
        backbone = load_backbone(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"segros generate: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, FileNotFoundError) else 1  # a wrong path vs a broken checkpoint
    if args.skip_existing:
        # an output cut short (full disk, interrupted copy) is not "existing": make it again
        removed = remove_undecodable(args.out)
        for path, problem in removed:
            print(f"{path} does not decode ({problem}); generating it again", file=sys.stderr)
    if torch.accelerator.is_available():
        backbone.to(torch.accelerator.current_accelerator())
    options = {k: v for k, v in {"guidance_scale": args.guidance_scale, "steps": args.steps}.items() if v}
    start = time.perf_counter()
    made = generate_benchmark(
        backbone, records, args.benchmark, args.out, args.samples, args.seed, args.batch_size,
        skip_existing=args.skip_existing, progress=sys.stderr.isatty(), options=options,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"{len(records)} prompts, {made} images generated in {seconds:.1f} s -> {args.out}")
    return 0
