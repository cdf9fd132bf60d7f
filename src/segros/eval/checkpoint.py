"""Evaluate a checkpoint on ShapesWorld: generate the evaluation prompts, judge them, summarise.

``segros eval checkpoint CKPT`` and the demo both go through :func:`evaluate_checkpoint`: all 319
prompts (or a subset) in GenEval's folder layout, ``samples`` images each, scored by the
rule-based judge with GenEval's rules. The summary adds accuracy over seen vs held-out
compositions and the wall time, and is cached in ``summary.json``: a folder already scored for
the same checkpoint, samples and seed is reused, keeping the time it first took.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from segros.data.shapes_prompts import load_prompts
from segros.shipped import PRETRAINED_TINY


def resolve(checkpoint: str | Path) -> Path:
    """``pretrained`` -> the TinyUMM shipped in the package; anything else as given."""
    if str(checkpoint) == "pretrained":
        return PRETRAINED_TINY
    return Path(checkpoint)


def held_out_split(folder: Path) -> dict[str, float]:
    """Accuracy over the images of seen vs held-out compositions (``results.jsonl``)."""
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for name, flag in (("seen", False), ("held_out", True)):
        part = [r["correct"] for r in rows if bool(json.loads(r["metadata"]).get("held_out", False)) is flag]
        if part:
            out[name] = sum(part) / len(part)
    return out


def decoding_options(guidance_scale: float | None = None, steps: int | None = None) -> dict[str, Any]:
    """Checked overrides of the backbone's decoding defaults (None keeps the default)."""
    if guidance_scale is not None and not (guidance_scale >= 0 and math.isfinite(guidance_scale)):
        raise ValueError(f"the guidance scale must be a finite number >= 0, got {guidance_scale}")
    if steps is not None and steps < 1:
        raise ValueError(f"the decoding steps must be >= 1, got {steps}")
    return {"guidance_scale": guidance_scale, "steps": steps}


def saved_evaluation(
    checkpoint: str | Path,
    folder: str | Path,
    prompts: int,
    samples: int,
    seed: int,
    decoding: dict[str, Any] | None = None,
    weights: str = "raw",
) -> dict[str, Any] | None:
    """The summary ``folder`` holds if it is a finished evaluation of ``checkpoint`` with these
    settings (``prompts`` records, ``samples`` per prompt, sampling ``seed``, the
    :func:`decoding_options`, the ``weights``: raw or EMA), else None. A summary written before
    decoding overrides (or EMA weights) existed counts as one with the defaults."""
    from segros.backbones.registry import resolve_checkpoint

    summary_file = Path(folder) / "summary.json"
    if not summary_file.is_file():
        return None
    saved = json.loads(summary_file.read_text())
    decoding = decoding or decoding_options()
    checkpoint = resolve_checkpoint(resolve(checkpoint))
    # recorded relative to the evaluation folder; summaries written before that hold it absolute
    if saved.get("checkpoint") not in (checkpoint_record(checkpoint, folder), str(checkpoint)):
        return None
    # the same path with other weights (a run trained again in place) is another model; summaries
    # from before fingerprints existed are matched by path alone
    fingerprint = checkpoint_fingerprint(checkpoint)
    if saved.get("weights_files", fingerprint) != fingerprint:
        return None
    same = (saved.get("samples"), saved.get("seed"), saved.get("prompts"), saved.get("weights", "raw"))
    same += tuple(saved.get("decoding", {}).get(key) for key in decoding)
    wanted = (samples, seed, prompts, weights, *decoding.values())
    return saved if same == wanted else None


def checkpoint_fingerprint(checkpoint: Path) -> list[list[Any]]:
    """``[name, bytes, mtime_ns]`` of every weight file in a checkpoint folder: cheap at any model
    size, and changed by any rewrite (a copy without its times only costs a re-evaluation)."""
    files = sorted(p for p in Path(checkpoint).rglob("*") if p.suffix in (".safetensors", ".bin", ".pt"))
    return [[str(p.relative_to(checkpoint)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def checkpoint_record(checkpoint: Path, folder: str | Path) -> str:
    """How a summary names its checkpoint: a model shipped inside segros as ``segros/<path in the
    package>``, anything else relative to the evaluation folder, so a report that quotes it names
    no machine's paths."""
    import segros

    checkpoint, package = Path(checkpoint).resolve(), Path(segros.__file__).resolve().parent
    if checkpoint.is_relative_to(package):
        return f"segros/{checkpoint.relative_to(package).as_posix()}"
    return os.path.relpath(checkpoint, Path(folder).resolve())


def evaluate_checkpoint(
    checkpoint: str | Path,
    folder: str | Path,
    records: list[dict[str, Any]] | None = None,
    samples: int = 4,
    seed: int = 0,
    progress: bool = True,
    guidance_scale: float | None = None,
    steps: int | None = None,
    weights: str = "raw",
) -> dict[str, Any]:
    """Generate and judge ``records`` (default: every evaluation prompt) with a checkpoint.

    ``guidance_scale`` and ``steps`` override the backbone's decoding defaults (None: its own);
    ``weights="ema"`` generates with the checkpoint's EMA weights (``load_backbone``).
    Returns ``{"overall", "tags", "images", "seen", "held_out", "checkpoint", "samples", "seed",
    "decoding", "weights", "seconds"}``; ``reused: true`` when ``folder`` already held this evaluation.
    """
    from segros.backbones.registry import load_backbone, resolve_checkpoint
    from segros.eval.generate import generate_folder, score_shapes_folder

    decoding = decoding_options(guidance_scale, steps)
    checkpoint = resolve_checkpoint(resolve(checkpoint))
    folder = Path(folder)
    records = load_prompts() if records is None else records
    saved = saved_evaluation(checkpoint, folder, len(records), samples, seed, decoding, weights)
    if saved is not None:
        return saved | {"reused": True}
    summary_file = folder / "summary.json"
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    backbone = load_backbone(checkpoint, weights=weights)
    generate_folder(
        backbone, records, folder, samples_per_prompt=samples, seed=seed, progress=progress, options=decoding
    )
    summary = score_shapes_folder(folder)
    summary |= held_out_split(folder)
    summary |= {
        "checkpoint": checkpoint_record(checkpoint, folder),
        "weights_files": checkpoint_fingerprint(checkpoint),
        "samples": samples,
        "seed": seed,
        "prompts": len(records),
        "decoding": decoding,
        "weights": weights,
        "seconds": round(time.perf_counter() - start, 1),
    }
    tmp = summary_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(summary_file)  # written last and atomically: its presence means a finished evaluation
    return summary
