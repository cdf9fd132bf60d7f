"""``segros validate CKPT``: masked-token loss and the alignment probe on validation scenes.

Independent of the 319 evaluation prompts and of generation (:mod:`segros.eval.validate`): fresh
ShapesWorld scenes from seeds no training run uses, drawn in the checkpoint's own world. Prints the
tables, then as its last line the JSON ``{"nll": {ratio: {"nll", "nll_on_objects"}}, "i2t_nll",
"probe": {tag: {"share", "low", "high", "margin", "ties", "n"}}, "probe_mean", ..., "seconds"}``.
"""

from __future__ import annotations

import argparse


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"mask ratios must be in (0, 1], got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segros.eval.probe_captions import DEFAULT_PER_TAG, DEFAULT_SCENES, MASK_RATIOS

    parser.add_argument(
        "checkpoint", help="run folder, checkpoint folder, or 'pretrained' (the shipped TinyUMM)"
    )
    parser.add_argument(
        "--scenes",
        type=int,
        default=DEFAULT_SCENES,
        help=f"scenes for the masked-token loss (default: {DEFAULT_SCENES})",
    )
    parser.add_argument(
        "--per-tag",
        type=int,
        default=DEFAULT_PER_TAG,
        help=f"probe scenes per tag (default: {DEFAULT_PER_TAG})",
    )
    parser.add_argument(
        "--ratios",
        type=_ratios,
        default=MASK_RATIOS,
        help="comma-separated mask ratios of the masked-token loss (default: "
        + ",".join(f"{r:g}" for r in MASK_RATIOS)
        + ")",
    )
    parser.add_argument(
        "--probe-ratio",
        type=float,
        default=1.0,
        help="mask ratio of the probe (default: 1, every image token masked: the caption alone)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks (default: 0)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    from segros.backbones.registry import load_backbone
    from segros.eval.checkpoint import resolve
    from segros.eval.validate import format_table, validate

    def error(message: str) -> int:
        print(f"segros validate: error: {message}", file=sys.stderr)
        return 2

    path = resolve(args.checkpoint)
    if not path.exists():
        return error(f"{path} does not exist")
    if args.scenes < 1 or args.per_tag < 1:
        return error("--scenes and --per-tag must be >= 1")
    if not 0.0 < args.probe_ratio <= 1.0:
        return error(f"--probe-ratio must be in (0, 1], got {args.probe_ratio}")
    start = time.perf_counter()
    backbone = load_backbone(path)
    result = validate(
        backbone,
        scenes=args.scenes,
        per_tag=args.per_tag,
        ratios=args.ratios,
        probe_ratio=args.probe_ratio,
        seed=args.seed,
    )
    result["checkpoint"] = args.checkpoint  # as typed: a report quoting it names no machine path
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(format_table(result))
    print(f"validated {path} in {result['seconds']} s")
    print(json.dumps(result))
    return 0
