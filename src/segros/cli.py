"""The `segros` command line: one subcommand per module, imported only when it runs.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. Adding a
command is one line in ``COMMANDS``. Command modules keep heavy imports (torch, models) inside
``run`` so that ``segros --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("segros.demo", "SFT vs RecA vs SeGroS on ShapesWorld end to end, with a report"),
    "pretrain": ("segros.pretrain", "train the TinyUMM the demo starts from (SFT from scratch)"),
    "train": ("segros.train.cli", "fine-tune a backbone with SeGroS, SFT or RecA from a YAML config"),
    "shapes": ("segros.data.shapes_cli", "ShapesWorld: render evaluation images, write training sets"),
    "generate": (
        "segros.eval.generate_cli",
        "GenEval / DPG-Bench / T2I-CompBench prompts to images",
    ),
    "eval": ("segros.eval.cli", "score generated images on a benchmark (shapes)"),
    "inspect": ("segros.inspect", "picture the grounding map, text scores and token roles for an image"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segros",
        description="Fine-tune unified multimodal models with Semantically-Grounded Supervision.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from segros import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
