"""``segros export --merge RUN --out DIR``: a LoRA run's adapter folded into a plain model folder.

RUN is a run folder (its newest complete checkpoint), a checkpoint folder or a
``checkpoints/latest`` file. The adapter (``adapter/``, peft's format) is merged into the base
weights with peft's ``merge_and_unload`` and the backbone's ``save_pretrained`` writes DIR, which
``segros generate`` / ``eval`` / ``inspect`` and ``model.init_from`` read like any model folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder, checkpoint folder or checkpoints/latest")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument(
        "--merge", action="store_true", help="merge the LoRA adapter into the weights (required)"
    )


def run(args: argparse.Namespace) -> int:
    if not args.merge:
        print("segros export: only --merge is supported (a merged model folder)", file=sys.stderr)
        return 2
    from segros.backbones.registry import load_backbone, resolve_checkpoint
    from segros.train.lora import has_adapter

    folder = resolve_checkpoint(args.run)
    if not has_adapter(folder):
        raise ValueError(
            f"{folder} has no LoRA adapter (adapter/adapter_config.json): nothing to merge; "
            "it already is a model folder"
        )
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty")
    backbone = load_backbone(folder)  # merges the adapter (segros.train.lora.merge_adapter)
    backbone.save_pretrained(out)
    print(f"merged {folder} into {out}")
    return 0
