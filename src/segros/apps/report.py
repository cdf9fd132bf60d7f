"""The demo's report: one set of numbers and pictures, written as Markdown and as HTML.

Numbers are the GenEval summary (mean per tag, overall = unweighted mean of tag means) as
mean +/- std over seeds; pointing precision says whether the grounding map points at the
objects the caption names, next to random selection and the best possible choice.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segros.eval.geneval import TAGS

SAMPLE_PROMPT_TAGS = ("single_object", "counting", "position", "color_attr")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if len(values) > 1 else f"{100 * mean:.1f}"


# Paired comparisons of the report: each model against its reference, seed by seed (the same
# fine-tuning data order and sampling seed; the pretrained model is sampled with every seed).
# SeGroS with eta 0 keeps only SeGroS's grounded choice of seen tokens, so its reference is plain SFT.
PAIRS = (
    ("segros", "sft"),
    ("sft", "pretrained"),
    ("segros", "pretrained"),
    ("reca", "sft"),
    ("segros_eta0", "sft"),
)


def paired_difference(a: list[float], b: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of the per-seed differences a - b with its two-sided t interval (None for one seed)."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "low": None, "high": None, "n": len(d)}
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(d)}


def paired_differences(
    results: dict[str, list[dict[str, Any]]], pairs: tuple[tuple[str, str], ...] = PAIRS
) -> dict[str, dict[str, Any]]:
    """``{"segros - sft": {tag or "overall": paired_difference}}`` for every pair in ``pairs``
    (default :data:`PAIRS`) whose two models both ran."""
    out = {}
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        per = {}
        for key in (*TAGS, "overall"):
            def score(s: dict[str, Any], key: str = key) -> float:
                return s["overall"] if key == "overall" else s["tags"][key]

            if all(key == "overall" or key in s["tags"] for s in results[a] + results[b]):
                per[key] = paired_difference([score(s) for s in results[a]], [score(s) for s in results[b]])
        out[f"{a} - {b}"] = per
    return out


def paired_table(diffs: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Points of accuracy: mean [95 % interval]; an interval that excludes 0 is marked with *."""
    header = ["difference", *TAGS, "overall"]

    def cell(d: dict[str, Any] | None) -> str:
        if d is None:
            return "–"
        if d["low"] is None:
            return f"{100 * d['mean']:+.1f}"
        star = "*" if d["low"] > 0 or d["high"] < 0 else ""
        return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]{star}"

    rows = [[name] + [cell(per.get(k)) for k in (*TAGS, "overall")] for name, per in diffs.items()]
    return header, rows


def results_table(results: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    header = ["model", *TAGS, "overall", "seen", "held-out"]
    rows = []
    for name, summaries in results.items():
        row = [name]
        row += [_fmt([s["tags"][t] for s in summaries if t in s["tags"]]) for t in TAGS]
        row.append(_fmt([s["overall"] for s in summaries]))
        row += [_fmt([s[k] for s in summaries if k in s]) for k in ("seen", "held_out")]
        rows.append(row)
    return header, rows


def grounding_quality(pretrained: Path, segros_run: Path | None, scenes: int) -> dict[str, Any]:
    """Pointing precision of the pretrained and the SeGroS-fine-tuned embeddings on ShapesWorld,
    with every caption token grounded and with English stopwords left out (method.text_stopwords);
    the pretrained model's alone when SeGroS did not run (``segros_run`` None)."""
    from segros.backbones.registry import load_backbone
    from segros.data.sources import world_for
    from segros.eval.pointing import pointing_precision
    from segros.grounding import GroundingConfig

    out = {}
    for name, path in (("pretrained", pretrained), ("segros", segros_run)):
        if path is None:
            continue
        backbone = load_backbone(path).eval()
        world = world_for(backbone, seed=4242)
        scene_list = [world.scene(i) for i in range(scenes)]
        for stopwords in ("none", "english"):
            cfg = GroundingConfig(noise_scale=0.0, text_stopwords=stopwords)
            out[f"{name}, stopwords {stopwords}"] = pointing_precision(backbone, scene_list, grounding=cfg)
    return out


def grounding_picture(checkpoint: Path, path: Path, n: int = 4) -> Path:
    """Grounding map and SeGroS token roles for a few ShapesWorld scenes, from a checkpoint."""
    from segros.backbones.registry import load_backbone
    from segros.data.readers import ImageTextRecord
    from segros.data.sources import world_for
    from segros.plan import preset
    from segros.supervision import plan_records
    from segros.viz import grounding_panel

    backbone = load_backbone(checkpoint).eval()
    world = world_for(backbone, seed=777)
    scenes = [world.scene(i) for i in range(n)]
    records = [ImageTextRecord(Image.fromarray(s.image), s.caption, str(i)) for i, s in enumerate(scenes)]
    gamma = torch.full((n,), 0.8)
    batch, plan = plan_records(backbone, records, preset("segros"), gamma, torch.Generator().manual_seed(0))
    panel = grounding_panel(
        batch.images,
        plan.grounding.scores,
        backbone.token_grid,
        plan.hint_idx,
        plan.seen,
        [s.caption for s in scenes],
    )
    Image.fromarray(panel).save(path)
    return path


def sample_grid(
    work: Path, models: list[str], records: list[dict[str, Any]], path: Path, seed: int = 0
) -> Path | None:
    """Rows = models, columns = a few prompts (sample 0 of the first seed), with a title row."""
    from segros.viz import captioned_grid

    picks = []
    for tag in SAMPLE_PROMPT_TAGS:
        picks += [i for i, r in enumerate(records) if r["tag"] == tag][:1]
    if not picks:
        return None
    images, captions = [], []
    for model in models:
        for i in picks:
            images.append(
                np.asarray(
                    Image.open(work / "eval" / f"{model}-seed{seed}" / f"{i:05d}" / "samples" / "0.png")
                )
            )
            captions.append(f"{model}: {records[i]['prompt'].removeprefix('a photo of ')}")
    Image.fromarray(captioned_grid(np.stack(images), captions, ncols=len(picks))).save(path)
    return path


def decoding_settings(checkpoint: Path) -> str:
    """The sampler settings a TinyUMM checkpoint decodes with, as the report states them."""
    from segros.backbones.files import saved_config
    from segros.backbones.registry import options_schema, resolve_checkpoint

    config = saved_config(resolve_checkpoint(checkpoint))
    o = options_schema(config["backbone"])(**config["options"])  # older option names read as today's
    order = o.generation_temperature
    return (
        f"{o.generation_steps} MaskGIT steps, guidance {o.guidance_scale:g}, temperature {o.temperature:g}, "
        + (f"unmasking-order noise {order:g}" if order else "no noise on the unmasking order")
        + " (the model's own)"
    )


def near_floor(results: dict[str, list[dict[str, Any]]], floor: float = 0.05) -> bool:
    """True when every model's overall score is below ``floor``: the table cannot rank them."""
    return all(s["overall"] < floor for summaries in results.values() for s in summaries)


def write_reports(
    out: Path,
    work: Path,
    results: dict[str, list[dict[str, Any]]],
    pointing: dict[str, Any],
    runs: dict[str, list[Path]],
    pretrained: Path,
    clock: Any,
    records: list[dict[str, Any]],
    quick: bool,
    seed_list: list[int],
) -> Path:
    seconds, seeds = clock.seconds, len(seed_list)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    pictures = {
        f"Generated samples (rows: models; sample 0, seed {seed_list[0]})": sample_grid(
            work, list(results), records, figures / "samples.png", seed_list[0]
        ),
        "Grounding map and token roles, pretrained embeddings": grounding_picture(
            pretrained, figures / "grounding-pretrained.png"
        ),
    }
    if "segros" in runs:
        pictures["Grounding map and token roles, after SeGroS fine-tuning"] = grounding_picture(
            runs["segros"][0], figures / "grounding-segros.png"
        )
    header, rows = results_table(results)
    diffs = paired_differences(results)
    p_header = [
        "embeddings, text tokens",
        "pointing precision",
        "random",
        "best possible",
        "seen on objects",
        "masked on objects",
        "scenes",
    ]

    def role(p: dict[str, Any], name: str) -> str:
        return f"{p['roles'][name]:.3f}" if name in p.get("roles", {}) else "–"

    p_rows = [
        [name, f"{p['model']:.3f}", f"{p['random']:.3f}", f"{p['oracle']:.3f}"]
        + [role(p, "seen"), role(p, "masked"), str(p["scenes"])]
        for name, p in pointing.items()
    ]
    lift = {name: p["model"] - p["random"] for name, p in pointing.items()}

    def judge(v: float) -> str:
        return "near random" if abs(v) < 0.05 else ("above" if v > 0 else "below") + " random"

    verdict = "; ".join(f"{name}: {judge(v)} ({v:+.3f})" for name, v in lift.items())
    t_rows = [[k, f"{v:.1f}", "reused" if k in clock.reused else ""] for k, v in seconds.items()]
    t_rows.append(["total", f"{sum(seconds.values()):.1f}", ""])
    summary = {
        "results": results,
        "paired_differences": diffs,
        "pointing": pointing,
        "seconds": seconds,
        "reused": sorted(clock.reused),
        "quick": quick,
        "seeds": seed_list,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))

    samples = next(iter(results.values()))[0].get("samples", "?")
    names = {"sft": "SFT", "reca": "RecA", "segros": "SeGroS"}
    compared = [names.get(name, name) for name in results if name != "pretrained"]
    intro = (
        f"{' vs '.join(compared)} fine-tuning of the same pretrained TinyUMM on ShapesWorld; seeds "
        f"{', '.join(map(str, seed_list))} (fine-tuning and sampling; the pretrained model is sampled with "
        f"each), {len(records)} evaluation prompts in GenEval's format x {samples} samples, scored by the "
        f"rule-based ShapesWorld judge (accuracy in %, mean ± std over {seeds} seed(s))."
    )
    from segros.eval.checkpoint import checkpoint_record

    intro += f" Pretrained model: {checkpoint_record(pretrained, out)}."
    intro += f" Decoding: {decoding_settings(pretrained)}."
    if quick:
        intro += " **--quick smoke run: these numbers are not meaningful.**"
    if near_floor(results):
        intro += (
            " **Every model scores below 5 % overall: at this level the numbers cannot rank the methods.**"
        )
    sections = [
        ("Results", intro, (header, rows)),
        (
            "Paired differences",
            f"Per seed, model minus reference, in points of accuracy: mean over {seeds} seed(s) "
            "[95 % t interval]; * marks an interval that excludes zero (no interval for one seed). "
            "segros_eta0 (SeGroS without hints: only its grounded choice of seen tokens) is compared "
            "with plain SFT.",
            paired_table(diffs),
        ),
        (
            "Grounding quality",
            "Share of the top-30% grounded tokens (no noise) that lie on an object the caption names. "
            "The SeGroS plan at mask ratio 0.5 splits the rest: the share of the seen (least grounded) "
            "and of the masked tokens that lie on an object; random is the share of all tokens that do. "
            f"Verdict: {verdict}.",
            (p_header, p_rows),
        ),
        (
            "Wall time per stage (seconds)",
            "Reused stages show the time they took when first computed.",
            (["stage", "seconds", ""], t_rows),
        ),
    ]
    md = ["# segros demo report", ""]
    for title, text, (h, r) in sections:
        md += [f"## {title}", "", text, "", "| " + " | ".join(h) + " |", "|" + "---|" * len(h)]
        md += ["| " + " | ".join(row) + " |" for row in r] + [""]
    for title, path in pictures.items():
        if path is not None:
            md += [f"### {title}", "", f"![{title}](figures/{path.name})", ""]
    (out / "report.md").write_text("\n".join(md))

    def table(h: list[str], r: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in h)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in r)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = [
        "<!doctype html><meta charset='utf-8'><title>segros demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:3px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}td:first-child{text-align:left}</style>",
        "<h1>segros demo report</h1>",
    ]
    for title, text, (h, r) in sections:
        parts += [
            f"<h2>{html.escape(title)}</h2>",
            f"<p>{html.escape(text).replace('**', '')}</p>",
            table(h, r),
        ]
    for title, path in pictures.items():
        if path is not None:
            parts += [
                f"<h3>{html.escape(title)}</h3>",
                f"<img src='figures/{path.name}' style='max-width:100%'>",
            ]
    (out / "report.html").write_text("\n".join(parts))
    return out / "report.md"
