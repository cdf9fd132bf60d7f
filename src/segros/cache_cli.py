"""``segros cache --config FILE --out DIR``: run the backbone's frozen image encoder(s) over the
config's image-caption data once; train from it with ``data.cache=DIR`` (segros.data.cache).

The backbone is built exactly as ``segros train`` builds it from the same config (same seed), so
its encoders, and the cache's identity, are the run's, and put on the training device (a GPU when
there is one). Under ``accelerate launch`` / ``torchrun`` every process encodes its share of the
shards and the first writes the index (segros.data.cache). Killed mid-way, the same command resumes.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the training config (model: and data: sections are used)")
    parser.add_argument("--out", required=True, help="cache folder (resumed if a run was killed)")
    parser.add_argument("--shard-size", type=int, default=256, help="records per shard file")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder call")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from segros.train.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, list(args.overrides))
    except ConfigError as e:
        print(f"segros cache: {e}", file=sys.stderr)
        return 2
    if cfg.data.cache:
        print("segros cache: data.cache is set; the cache is made from the data itself", file=sys.stderr)
        return 2
    if args.shard_size < 1 or args.batch_size < 1:
        print("segros cache: --shard-size and --batch-size must be positive", file=sys.stderr)
        return 2
    import torch
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from segros.backbones.registry import build_backbone
    from segros.data.cache import write_cache
    from segros.data.sources import t2i_source

    # the launcher's processes (one without a launcher); with no GPU they form a gloo group
    state = PartialState(cpu=not torch.accelerator.is_available())
    rank, world = state.process_index, state.num_processes
    set_seed(cfg.run.seed)  # the trainer's initial weights, so the encoders are the run's
    backbone = build_backbone(cfg.model_options()).to(state.device)
    source = t2i_source(cfg.data, backbone)
    who = f"process {rank}/{world}: " if world > 1 else ""

    def progress(done: int, total: int) -> None:
        print(f"{who}encoded {done}/{total}", file=sys.stderr)

    try:
        index = write_cache(
            backbone, source, cfg.data, cfg.model["name"], args.out, args.shard_size, args.batch_size,
            progress, rank=rank, world=world, barrier=state.wait_for_everyone if world > 1 else None,
        )  # fmt: skip
    finally:
        if world > 1:
            state.destroy_process_group()  # not left to the interpreter's exit (see Trainer.finish)
    count, bad, shards = index["count"], len(index["bad"]), len(index["shards"])
    if rank == 0:
        print(f"cached {count} records ({bad} bad) in {shards} shards: {args.out}")
    return 0
