"""``segros eval``: score generated images on a benchmark.

``segros eval shapes DIR`` scores a GenEval-layout folder of ShapesWorld images with the rule-based
judge, writes ``DIR/results.jsonl`` and prints, as its last line, the JSON summary
``{"overall": ..., "tags": {...}, "images": n}`` computed as GenEval's ``summary_scores.py`` does.

``segros eval checkpoint CKPT`` generates every ShapesWorld evaluation prompt with a checkpoint
(a run folder, a checkpoint folder or ``pretrained``, the TinyUMM shipped in the package), scores
it the same way and prints the summary, with seen / held-out accuracy, as its last line.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    p = sub.add_parser("shapes", help="score a GenEval-layout folder of ShapesWorld images")
    p.add_argument("dir", help="folder with <index:05d>/metadata.jsonl and <index:05d>/samples/<n>.png")
    p.add_argument("--out", default=None, help="results file (default: DIR/results.jsonl)")
    c = sub.add_parser("checkpoint", help="generate the ShapesWorld prompts with a checkpoint and score them")
    c.add_argument("checkpoint", help="run folder, checkpoint folder, or 'pretrained' (the shipped TinyUMM)")
    c.add_argument("--samples", type=int, default=4, help="images per prompt (default: 4)")
    c.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    c.add_argument("--out", default=None, help="GenEval-layout folder (default: runs/eval/<name>-seed<S>)")


def _checkpoint(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from segros.eval.checkpoint import evaluate_checkpoint, resolve

    path = resolve(args.checkpoint)
    if not path.exists():
        print(f"segros eval checkpoint: error: {path} does not exist", file=sys.stderr)
        return 2
    if args.samples < 1:
        print("segros eval checkpoint: error: --samples must be >= 1", file=sys.stderr)
        return 2
    name = "pretrained" if args.checkpoint == "pretrained" else path.resolve().name
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{name}-seed{args.seed}"
    try:
        summary = evaluate_checkpoint(
            path, out, samples=args.samples, seed=args.seed, progress=sys.stderr.isatty()
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"segros eval checkpoint: error: {err}", file=sys.stderr)
        return 2
    print(f"images and results.jsonl in {out}" + (" (reused)" if summary.get("reused") else ""))
    keys = ("overall", "tags", "seen", "held_out", "images")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "checkpoint":
        return _checkpoint(args)
    import json
    import time
    from pathlib import Path

    from segros.data.shapes import SHAPES
    from segros.eval.geneval import score_folder, summarize, write_results
    from segros.eval.shapes_judge import detect_file

    start = time.perf_counter()
    rows = score_folder(args.dir, detect_file, supported_classes=SHAPES)
    elapsed = time.perf_counter() - start
    out = Path(args.out) if args.out else Path(args.dir) / "results.jsonl"
    write_results(out, rows)
    unsupported = sum(1 for r in rows if r.get("unsupported"))
    n_scored = len(rows) - unsupported
    print(f"scored {n_scored} images in {elapsed:.1f} s; {unsupported} unsupported; wrote {out}")
    for split in (False, True):
        part = [r for r in rows if bool(json.loads(r["metadata"]).get("held_out", False)) is split]
        if part and any(json.loads(r["metadata"]).get("held_out") for r in rows):
            s = summarize(part)
            name = "held-out" if split else "seen"
            print(f"{name}: {s['images']} images, " + ", ".join(f"{t} {v:.3f}" for t, v in s["tags"].items()))
    print(json.dumps(summarize(rows)))
    return 0
