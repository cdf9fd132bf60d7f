"""``segros train``: fine-tune (or pretrain) a backbone with any method from a YAML config."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); defaults apply to omitted keys")
    parser.add_argument("--out", help="run folder (default: runs/<config name>-<time>)")
    parser.add_argument("--max-steps", type=int, help="same as run.max_steps=N")
    parser.add_argument("--save-every", type=int, help="same as run.save_every=N")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    parser.add_argument(
        "--sample-prompts",
        default="auto",
        metavar="FILE|shapes|none",
        help="prompts drawn as sample pictures every run.picture_every steps: a file with one per "
        "line, the ShapesWorld ones, or none (default auto: ShapesWorld's for data.source=shapes)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")


def sample_pictures_for(choice: str, data_source: str) -> Any:
    """The picture callback ``--sample-prompts`` asks for (None: no sample pictures)."""
    if choice == "auto":
        choice = "shapes" if data_source == "shapes" else "none"
    if choice == "none":
        return None
    from segros.train.logger import sample_pictures

    if choice == "shapes":
        from segros.data.shapes_prompts import SAMPLE_PROMPTS

        return sample_pictures(SAMPLE_PROMPTS)
    prompts = [line.strip() for line in Path(choice).read_text().splitlines() if line.strip()]
    if not prompts:
        raise OSError(f"{choice} holds no prompt")
    return sample_pictures(prompts)


def run(args: argparse.Namespace) -> int:
    from segros.train.config import ConfigError, load_config

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"run.max_steps={args.max_steps}")
    if args.save_every is not None:
        overrides.append(f"run.save_every={args.save_every}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"segros train: {e}", file=sys.stderr)
        return 2
    if args.resume and not args.out:
        print("segros train: --resume needs --out (the run folder to continue)", file=sys.stderr)
        return 2
    try:
        pictures = sample_pictures_for(args.sample_prompts, cfg.data.source)
    except OSError as e:
        print(f"segros train: --sample-prompts: {e}", file=sys.stderr)
        return 2
    name = Path(args.config).stem if args.config else "default"
    out = Path(args.out) if args.out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from segros.runlock import FolderInUseError
    from segros.train import checkpoint as ckpt
    from segros.train.loop import train
    from segros.train.stopping import EXIT_CODES

    main_process = int(os.environ.get("RANK", "0")) == 0  # one line, not one per process
    started = time.time() - 1.0  # file times may be rounded to the second
    try:
        result = train(cfg, out, resume=args.resume, pictures=pictures)
    except FolderInUseError as err:  # another run holds the folder: nothing was written
        if main_process:
            print(f"segros train: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        # died while writing a checkpoint (a full disk): say so, and remove the partial folder
        failure = ckpt.write_failure(out, err, since=started)
        if failure is None:
            raise
        raise failure from err
    if result.stopped_by:
        if main_process:
            line = stopped_message(args, out, result, ckpt.latest_checkpoint(out))
            print(f"segros train: {line}", file=sys.stderr)
        return EXIT_CODES[signal.Signals[result.stopped_by]]
    if main_process:
        print(f"trained to step {result.step} in {result.seconds:.1f}s; run folder {out}")
    return 0


def stopped_message(args: argparse.Namespace, out: Path, result: Any, checkpoint: Path | None) -> str:
    """The one line after a run stopped by a signal: where its checkpoint is, how to continue."""
    command = ["segros", "train"] + (["--config", args.config] if args.config else [])
    command += ["--out", str(out)]
    if args.max_steps is not None:
        command += ["--max-steps", str(args.max_steps)]
    if args.save_every is not None:
        command += ["--save-every", str(args.save_every)]
    if args.sample_prompts != "auto":
        command += ["--sample-prompts", args.sample_prompts]
    command += [*args.overrides, "--resume"]
    return (
        f"stopped by {result.stopped_by} after step {result.step}; checkpoint {checkpoint or 'none'}; "
        f"continue with: {shlex.join(command)}"
    )
