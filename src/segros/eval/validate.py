"""Validation without the 319 evaluation prompts and without generation: ``segros validate``.

Two measures on freshly drawn ShapesWorld scenes, in the checkpoint's own world
(:func:`segros.data.sources.world_for`), from seeds no training run or evaluation prompt uses
(:data:`segros.data.shapes.VALIDATION_SEEDS`; training configs refuse them) and with held-out
compositions excluded as in training:

**Masked-token loss** (:func:`masked_nll`). The backbone's own reconstruction loss (image-token
NLL for TinyUMM and Show-o) under the scenes' aligned fine-tuning captions (the ``mixed`` style:
templates and dense descriptions), at fixed mask ratios (default 0.5, 0.8, 1.0) with an SFT plan:
no hints, random masks drawn from one seeded generator, so every checkpoint is scored on the same
masks. Also on the tokens that lie on objects, and the image-to-text NLL of the captions.

**Alignment probe** (:func:`alignment_probe`). For each GenEval tag, scenes with a true caption
and a minimally perturbed one (:mod:`segros.eval.probe_captions`: relation flipped, colours
swapped, count changed, object or colour replaced). The model "prefers" the true caption when the
image's NLL under it is lower. The NLL is taken with *every* image token masked (ratio 1.0, one
step), by default: the caption is then the only information the model has, so no visible token
can give away what the caption is asked to carry (a visible object token states its own colour);
there is no random mask, so both captions are scored on exactly the same input; and it is the
first step of MaskGIT decoding, where layout and binding are decided. ``probe_ratio`` < 1 scores
both captions on one random mask per scene instead. Reported per tag: the share of scenes where
the true caption wins (ties, as for a model that ignores its text, count one half; chance 0.5)
with a 95 % Wilson interval, and the mean margin (NLL per target token, perturbed minus true).

Everything goes through the backbone contract (``prepare_t2i``, ``reconstruction_loss`` with an
SFT plan, ``prepare_i2t``, ``i2t_loss``), one sample per call where a per-scene value is needed,
so it works on every backbone. Draws: one ``torch.Generator`` seeded by ``seed`` makes the masks;
a backbone whose loss draws noise from the global RNG (Harmon's diffusion) gets it seeded from
the same generator, and the same noise for both captions of a probe scene.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.stats import norm

from segros.data.llava import I2TRecord
from segros.data.readers import ImageTextRecord
from segros.data.shapes import VALIDATION_SEEDS
from segros.data.sources import world_for
from segros.eval.pointing import patch_coverage
from segros.eval.probe_captions import (
    DEFAULT_PER_TAG,
    DEFAULT_SCENES,
    MASK_RATIOS,
    PROBE_TAGS,
    ProbeItem,
    probe_items,
)
from segros.plan import make_plan, preset

NLL_SEED, PROBE_SEED = VALIDATION_SEEDS[0], VALIDATION_SEEDS[1]  # the two scene streams


def _device(backbone: Any) -> torch.device:
    return next(backbone.parameters()).device


def _records(scenes: Sequence[Any], captions: Sequence[str] | None = None) -> list[ImageTextRecord]:
    captions = [s.caption for s in scenes] if captions is None else captions
    return [
        ImageTextRecord(Image.fromarray(s.image), c, str(i))
        for i, (s, c) in enumerate(zip(scenes, captions, strict=True))
    ]


def _sft_plan(n: int, num_tokens: int, ratio: float, generator: torch.Generator) -> Any:
    return make_plan(preset("sft"), torch.full((n,), ratio, dtype=torch.float64), num_tokens, None, generator)


@torch.no_grad()
def masked_nll(
    backbone: Any, scenes: Sequence[Any], mask_ratio: float, generator: torch.Generator, batch_size: int = 64
) -> dict[str, float]:
    """Reconstruction loss of the scenes' images under their captions at one mask ratio.

    SFT plans (no hints, random masks from ``generator``), averaged over every target token
    (``nll``) and over the targets whose patch holds an object pixel (``nll_on_objects``).
    """
    totals = {"nll": 0.0, "nll_on_objects": 0.0}
    weights = {"nll": 0.0, "nll_on_objects": 0.0}
    device = _device(backbone)
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        batch = backbone.prepare_t2i(_records(chunk)).to(device)
        B, N = len(batch), backbone.num_tokens
        plan = _sft_plan(B, N, mask_ratio, generator).to(device)
        on_objects = patch_coverage(
            torch.stack([torch.from_numpy(sum(o.mask for o in s.objects).astype(bool)) for s in chunk]),
            backbone.token_grid,
        ).reshape(B, N)
        for name, weight in (
            ("nll", plan.loss_weight),
            ("nll_on_objects", plan.loss_weight * on_objects.to(device)),
        ):
            plan_w = dataclasses.replace(plan, loss_weight=weight)
            totals[name] += float(backbone.reconstruction_loss(batch, plan_w)) * float(weight.sum())
            weights[name] += float(weight.sum())
    return {k: totals[k] / max(weights[k], 1e-9) for k in totals}


@torch.no_grad()
def i2t_nll(backbone: Any, scenes: Sequence[Any], batch_size: int = 64) -> float:
    """Image-to-text NLL per answer token of the scenes' captions ("describe this picture")."""
    total, count = 0.0, 0.0
    device = _device(backbone)
    for start in range(0, len(scenes), batch_size):
        records = _records(scenes[start : start + batch_size])
        batch = backbone.prepare_i2t(
            [I2TRecord(r.image, [("describe this picture", r.caption)], r.key) for r in records]
        ).to(device)
        answers = float(batch.answer_mask[:, 1:].sum())
        total += float(backbone.i2t_loss(batch)) * answers
        count += answers
    return total / max(count, 1e-9)


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial share (``successes`` may be a half-integer: ties).

    The same formula as ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``, which
    takes whole counts only.
    """
    if n <= 0:
        return (0.0, 1.0)
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@torch.no_grad()
def probe_nll(
    backbone: Any, items: Sequence[ProbeItem], generator: torch.Generator, ratio: float = 1.0
) -> np.ndarray:
    """``(len(items), 2)`` NLL per target token of each item's image under its true and its
    perturbed caption, both on the same mask (and the same global-RNG noise)."""
    device = _device(backbone)
    out = np.zeros((len(items), 2))
    for k, item in enumerate(items):
        plan = _sft_plan(1, backbone.num_tokens, ratio, generator).to(device)
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        for j, caption in enumerate((item.true, item.perturbed)):
            batch = backbone.prepare_t2i(_records([item.scene], [caption])).to(device)
            torch.manual_seed(noise_seed)
            out[k, j] = float(backbone.reconstruction_loss(batch, plan))
    return out


def summarize_probe(items: Sequence[ProbeItem], nll: np.ndarray) -> dict[str, dict[str, float]]:
    """Per tag: ``share`` of scenes where the true caption wins (ties count one half), its 95 %
    Wilson interval ``low`` / ``high``, ``margin`` (mean perturbed minus true NLL), ``ties``, ``n``."""
    tags = [t for t in PROBE_TAGS if any(i.tag == t for i in items)]
    out = {}
    for tag in tags:
        rows = np.array([k for k, i in enumerate(items) if i.tag == tag])
        true, perturbed = nll[rows, 0], nll[rows, 1]
        wins, ties = float((true < perturbed).sum()), float((true == perturbed).sum())
        n = len(rows)
        low, high = wilson_interval(wins + ties / 2, n)
        out[tag] = {
            "share": (wins + ties / 2) / n,
            "low": low,
            "high": high,
            "margin": float((perturbed - true).mean()),
            "ties": int(ties),
            "n": n,
        }
    return out


def alignment_probe(
    backbone: Any,
    per_tag: int = DEFAULT_PER_TAG,
    generator: torch.Generator | None = None,
    ratio: float = 1.0,
    tags: tuple[str, ...] = PROBE_TAGS,
) -> dict[str, dict[str, float]]:
    """The probe on ``per_tag`` scenes per tag of the validation stream (:func:`summarize_probe`)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    items = probe_items(world_for(backbone, seed=PROBE_SEED), per_tag, tags)
    return summarize_probe(items, probe_nll(backbone, items, generator, ratio))


def validate(
    backbone: Any,
    scenes: int = DEFAULT_SCENES,
    per_tag: int = DEFAULT_PER_TAG,
    ratios: Sequence[float] = MASK_RATIOS,
    probe_ratio: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Both measures on one backbone: ``{"nll": {ratio: {...}}, "i2t_nll", "probe": {tag: {...}},
    "probe_mean", "scenes", "per_tag", "probe_ratio", "seed"}``. Deterministic given ``seed``; puts
    the backbone in eval mode and leaves the global RNG as it found it."""
    for r in (*ratios, probe_ratio):
        if not 0.0 < r <= 1.0:
            raise ValueError(f"mask ratios must be in (0, 1], got {r}")
    if scenes < 1 or per_tag < 1:
        raise ValueError(f"need at least one scene and one probe scene per tag, got {scenes}, {per_tag}")
    backbone.eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        world = world_for(backbone, seed=NLL_SEED, caption_style="mixed")
        drawn = [world.scene(i) for i in range(scenes)]
        nll = {f"{r:g}": masked_nll(backbone, drawn, r, generator, batch_size) for r in ratios}
        i2t = i2t_nll(backbone, drawn, batch_size)
        probe = alignment_probe(backbone, per_tag, generator, probe_ratio)
    return {
        "nll": nll,
        "i2t_nll": i2t,
        "probe": probe,
        "probe_mean": float(np.mean([v["share"] for v in probe.values()])),
        "scenes": scenes,
        "per_tag": per_tag,
        "probe_ratio": probe_ratio,
        "seed": seed,
    }


def format_table(result: dict[str, Any]) -> str:
    """The human-readable tables of :func:`validate`'s result."""
    lines = [f"masked-token loss on {result['scenes']} validation scenes (aligned captions, SFT masks)"]
    lines.append(f"  {'mask ratio':>10}  {'nll':>8}  {'on objects':>10}")
    for ratio, v in result["nll"].items():
        lines.append(f"  {ratio:>10}  {v['nll']:8.4f}  {v['nll_on_objects']:10.4f}")
    lines.append(f"  image-to-text nll {result['i2t_nll']:.4f}")
    lines.append(
        f"alignment probe: {result['per_tag']} scenes per tag, true vs perturbed caption, "
        f"mask ratio {result['probe_ratio']:g} (chance 0.5)"
    )
    lines.append(f"  {'tag':<14}{'share':>7}  {'95% interval':>15}  {'margin':>8}")
    for tag, v in result["probe"].items():
        lines.append(f"  {tag:<14}{v['share']:7.3f}  [{v['low']:.3f}, {v['high']:.3f}]  {v['margin']:8.4f}")
    lines.append(f"  {'mean':<14}{result['probe_mean']:7.3f}")
    return "\n".join(lines)
