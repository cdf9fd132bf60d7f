"""``segros eval``: score generated images on a benchmark.

``segros eval shapes DIR`` scores a GenEval-layout folder of ShapesWorld images with the rule-based
judge, writes ``DIR/results.jsonl`` and prints, as its last line, the JSON summary
``{"overall": ..., "tags": {...}, "images": n}`` computed as GenEval's ``summary_scores.py`` does.
The folder is first checked against the prompts (``--prompts FILE``; by default the shipped
ShapesWorld prompts when the folder holds them): missing prompt folders or samples, extra ones
and metadata that differ are an error listing them (exit 1) unless ``--allow-incomplete``, which
scores the expected images present, leaves extras out and adds ``expected_images`` /
``missing_images`` / ``missing_prompts`` to the summary. An image that cannot be read is named
and scored as a failure of that sample (``unreadable`` in the summary).

``segros eval checkpoint CKPT`` generates every ShapesWorld evaluation prompt with a checkpoint
(a run folder, a checkpoint folder or ``pretrained``, the TinyUMM shipped in the package), scores
it the same way and prints the summary, with seen / held-out accuracy, as its last line.
"""

from __future__ import annotations

import argparse

WEIGHTS_HELP = "the trained weights (raw, default) or their EMA (ema: runs with optim.ema_decay)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    p = sub.add_parser("shapes", help="score a GenEval-layout folder of ShapesWorld images")
    p.add_argument("dir", help="folder with <index:05d>/metadata.jsonl and <index:05d>/samples/<n>.png")
    p.add_argument("--out", default=None, help="results file (default: DIR/results.jsonl)")
    p.add_argument(
        "--prompts",
        default=None,
        help="the GenEval metadata JSONL the folder was generated from (default: the shipped "
        "ShapesWorld prompts if the folder holds them, else the folder's own metadata)",
    )
    p.add_argument(
        "--samples", type=int, default=None, help="images per prompt (default: the most common count)"
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="score what is there (missing prompts/samples and extras reported, extras not scored)",
    )
    c = sub.add_parser("checkpoint", help="generate the ShapesWorld prompts with a checkpoint and score them")
    c.add_argument("checkpoint", help="run folder, checkpoint folder, or 'pretrained' (the shipped TinyUMM)")
    c.add_argument("--samples", type=int, default=4, help="images per prompt (default: 4)")
    c.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    c.add_argument("--weights", choices=("raw", "ema"), default="raw", help=WEIGHTS_HELP)
    c.add_argument(
        "--out",
        default=None,
        help="GenEval-layout folder (default: runs/eval/<name>[-ema]-seed<S>[-g<G>][-steps<N>])",
    )
    c.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's own)",
    )
    c.add_argument("--decode-steps", type=int, default=None, help="decoding steps (default: the model's own)")


def _checkpoint(args: argparse.Namespace) -> int:
    import json
    import math
    import sys
    from pathlib import Path

    from segros.eval.checkpoint import decoding_options, evaluate_checkpoint, resolve

    def error(message: str) -> int:
        print(f"segros eval checkpoint: error: {message}", file=sys.stderr)
        return 2

    path = resolve(args.checkpoint)
    if not path.exists():
        return error(f"{path} does not exist")
    if args.samples < 1:
        return error("--samples must be >= 1")
    if args.guidance is not None and not (args.guidance >= 0 and math.isfinite(args.guidance)):
        return error(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.decode_steps is not None and args.decode_steps < 1:
        return error(f"--decode-steps must be >= 1, got {args.decode_steps}")
    decoding = decoding_options(args.guidance, args.decode_steps)
    name = "pretrained" if args.checkpoint == "pretrained" else path.resolve().name
    suffix = "".join(
        f"-{tag}{value:g}"
        for tag, value in zip(("g", "steps"), decoding.values(), strict=True)
        if value is not None
    )
    name += "-ema" if args.weights == "ema" else ""
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{name}-seed{args.seed}{suffix}"
    try:
        summary = evaluate_checkpoint(
            path, out, samples=args.samples, seed=args.seed, progress=sys.stderr.isatty(),
            weights=args.weights, **decoding,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        return error(str(err))
    overrides = ", ".join(f"{k} {v:g}" for k, v in decoding.items() if v is not None)
    print(
        f"images and results.jsonl in {out}"
        + (f" (decoding: {overrides})" if overrides else "")
        + (" (reused)" if summary.get("reused") else "")
    )
    keys = ("overall", "tags", "seen", "held_out", "images")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}): {', '.join(items[:limit])}{more}"


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "checkpoint":
        return _checkpoint(args)
    import json
    import sys
    import time
    from pathlib import Path

    from segros.data.shapes import SHAPES
    from segros.data.shapes_prompts import default_prompts_path, load_prompts
    from segros.eval.geneval import check_folder, read_prompts, score_folder, summarize, write_results
    from segros.eval.shapes_judge import detect_file

    def error(message: str, code: int) -> int:
        print(f"segros eval shapes: error: {message}", file=sys.stderr)
        return code

    root = Path(args.dir)
    if not root.is_dir():
        return error(f"{root} is not a folder", 2)
    if args.samples is not None and args.samples < 1:
        return error("--samples must be >= 1", 2)
    try:
        if args.prompts is not None:
            records, reference, default = read_prompts(args.prompts), args.prompts, None
        else:
            records, reference = None, ""
            default = (load_prompts(), f"the shipped ShapesWorld prompt file {default_prompts_path().name}")
    except (OSError, ValueError) as e:
        return error(f"cannot read the prompt file: {e}", 2)
    try:
        check = check_folder(root, records, args.samples, reference, default)
    except (OSError, ValueError) as e:
        return error(str(e), 1)
    expected = f"{check.prompts} prompts x {check.samples} samples = {check.expected_images} images"
    problems = [
        _listing(title, items)
        for title, items in (
            ("prompt folders missing", check.missing_prompts),
            ("images missing", check.missing_images),
            ("extra, not expected (not scored)", check.extra),
            ("metadata differing from the prompts", check.mismatched),
        )
        if items
    ]
    if check.mismatched or (problems and not args.allow_incomplete):
        hint = (
            "the folder was made from other prompts: pass the right --prompts"
            if check.mismatched
            else "pass --allow-incomplete to score what is there, or --prompts/--samples if these are wrong"
        )
        what = "does not match its prompts" if check.mismatched else "is incomplete"
        detail = "\n".join(problems)
        return error(f"{root} {what}; expected {expected} ({check.reference}):\n{detail}\n{hint}", 1)
    if problems:
        print(f"warning: {root} is incomplete; expected {expected} ({check.reference}):", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)

    start = time.perf_counter()
    rows = score_folder(root, detect_file, supported_classes=SHAPES, images=check.images)
    elapsed = time.perf_counter() - start
    out = Path(args.out) if args.out else root / "results.jsonl"
    write_results(out, rows)
    unreadable = [r for r in rows if r.get("unreadable")]
    for r in unreadable:
        print(f"warning: {r['filename']}: {r['reason']} (scored as a failure)", file=sys.stderr)
    unsupported = sum(1 for r in rows if r.get("unsupported"))
    n_scored = len(rows) - unsupported
    print(f"scored {n_scored} images in {elapsed:.1f} s; {unsupported} unsupported; wrote {out}")
    if problems:
        print(
            f"incomplete: {len(check.images)} of {check.expected_images} expected images scored; "
            f"{check.missing_image_count} missing ({len(check.missing_prompts)} prompt folders); "
            f"{len(check.extra)} extra left out"
        )
    for split in (False, True):
        part = [r for r in rows if bool(json.loads(r["metadata"]).get("held_out", False)) is split]
        if part and any(json.loads(r["metadata"]).get("held_out") for r in rows):
            s = summarize(part)
            name = "held-out" if split else "seen"
            print(f"{name}: {s['images']} images, " + ", ".join(f"{t} {v:.3f}" for t, v in s["tags"].items()))
    summary = summarize(rows)
    if unreadable:
        summary["unreadable"] = len(unreadable)
    if problems:
        summary |= {
            "expected_images": check.expected_images,
            "missing_images": check.missing_image_count,
            "missing_prompts": len(check.missing_prompts),
            "extra": len(check.extra),
        }
    print(json.dumps(summary))
    return 0
