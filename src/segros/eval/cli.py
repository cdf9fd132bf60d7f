"""``segros eval``: score generated images on a benchmark.

``segros eval shapes DIR`` scores a GenEval-layout folder of ShapesWorld images with the rule-based
judge, writes ``DIR/results.jsonl`` and prints, as its last line, the JSON summary
``{"overall": ..., "tags": {...}, "images": n}`` computed as GenEval's ``summary_scores.py`` does.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    p = sub.add_parser("shapes", help="score a GenEval-layout folder of ShapesWorld images")
    p.add_argument("dir", help="folder with <index:05d>/metadata.jsonl and <index:05d>/samples/<n>.png")
    p.add_argument("--out", default=None, help="results file (default: DIR/results.jsonl)")


def run(args: argparse.Namespace) -> int:
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
