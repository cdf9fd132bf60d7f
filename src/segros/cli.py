"""The `segros` command line: one subcommand per module, imported only when it runs.

It names command modules as strings, the application layer (:mod:`segros.apps`) among them,
so it sits above every layer and no library module imports it.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. Adding a
command is one line in ``COMMANDS``. Only the module of the command being run is imported (and
none for ``segros --help``), and command modules keep heavy imports (torch, models) inside
``run``, so that ``segros --help`` and ``segros COMMAND --help`` stay instant.

Exit codes: 0 success; 2 a usage or config error (one line naming the option or key); 1 a data
or runtime error (bad records, a broken checkpoint, a full disk, a folder another run holds, ...):
one line ``segros COMMAND: error: ...``, with the traceback only under ``--debug``; 143 or 130 a
run stopped by SIGTERM or Ctrl-C at a step boundary, with a checkpoint (one line: where it is and
how to continue).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("segros.apps.demo", "SFT vs RecA vs SeGroS on ShapesWorld end to end, with a report"),
    "pretrain": ("segros.apps.pretrain", "train the TinyUMM the demo starts from (SFT from scratch)"),
    "train": ("segros.train.cli", "fine-tune a backbone with SeGroS, SFT or RecA from a YAML config"),
    "shapes": ("segros.data.shapes_cli", "ShapesWorld: render evaluation images, write training sets"),
    "generate": (
        "segros.eval.generate_cli",
        "GenEval / DPG-Bench / T2I-CompBench prompts to images",
    ),
    "eval": ("segros.eval.cli", "score generated images on a benchmark (shapes)"),
    "validate": (
        "segros.eval.validate_cli",
        "masked-token loss and caption alignment probe of a checkpoint on fresh validation scenes",
    ),
    "inspect": (
        "segros.apps.inspection",
        "picture the grounding map, text scores and token roles for an image",
    ),
    "export": ("segros.export", "a run for other tools: merged LoRA, upstream layout or a Hub folder"),
    "cache": ("segros.cache_cli", "pre-encode a dataset's images with the backbone's frozen encoder(s)"),
}

DEBUG_HELP = "on an error, show the full Python traceback instead of one line"

log = logging.getLogger(__name__)


def _requested_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first token that is not a top-level option."""
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def build_parser(only: str | None = None, lazy: bool = False) -> argparse.ArgumentParser:
    """The full parser; with ``lazy``, only the module of command ``only`` (if any) is imported
    and given its arguments (argparse only ever parses the one command that was named)."""
    parser = argparse.ArgumentParser(
        prog="segros",
        description="Fine-tune unified multimodal models with Semantically-Grounded Supervision.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if lazy and name != only:
            continue
        module = importlib.import_module(module_name)
        module.add_arguments(cmd)
        # also accepted after the command; SUPPRESS keeps a top-level --debug from being overwritten
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        cmd.set_defaults(_module=module)
    return parser


# Errors that come from the data, the files or the run, not from a bug: one clean line.
def _clean_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, OSError]
    loop = sys.modules.get("segros.train.loop")  # only if it was imported: never import torch here
    if loop is not None:
        errors += [loop.TrainingDivergedError, loop.RunStoppedError]
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_requested_command(argv), lazy=True)
    args = parser.parse_args(argv)
    if args.version:
        from segros import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._module.run(args) or 0)
    except Exception as err:
        if args.debug or not isinstance(err, _clean_errors()):
            raise
        log.debug("segros %s failed", args.command, exc_info=True)
        print(f"segros {args.command}: error: {err} (run with --debug for the traceback)", file=sys.stderr)
        return getattr(err, "exit_code", 1)  # a run stopped by a signal: 128 + its number


if __name__ == "__main__":
    sys.exit(main())
