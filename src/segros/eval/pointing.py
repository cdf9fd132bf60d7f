"""Pointing precision: do the SeGroS visual hints land on the objects the caption names?

For ShapesWorld scenes (every object of a scene is named in its caption) this takes the top-eta
hint tokens of the grounding map m-bar (noise-free, Sec. 3.4) and counts the share whose image
patch holds at least one pixel of an object (the ground-truth masks). Two references put the
number in context, both exact (no sampling):

- ``random``: hints drawn uniformly without replacement; the expected share of on-object
  hints is the share of on-object tokens in the image (the mean of a hypergeometric draw / K).
- ``oracle``: the best any selection of K hints can do, ``min(1, on-object tokens / K)``.

A grounding that points at what the text describes scores near the oracle; untrained embeddings
score near random. Everything runs through the backbone protocol (``prepare_t2i``,
``grounding_inputs``, ``token_grid``, ``hint_grid``) and is batched tensor code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segros.grounding import GroundingConfig
from segros.plan import preset
from segros.supervision import plan_records


def patch_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool pixel masks -> (B, h*w) bool: the row-major patch holds a True pixel.

    The image must tile exactly into the grid (H % h == 0 and W % w == 0).
    """
    B, H, W = masks.shape
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"a {H}x{W} mask does not tile into a {h}x{w} token grid")
    return masks.reshape(B, h, H // h, w, W // w).any(dim=4).any(dim=2).reshape(B, h * w)


def _scores(hits: torch.Tensor, on: torch.Tensor, k: int, n: int) -> dict[str, torch.Tensor]:
    """Per-scene model / random / oracle precision from hit counts and on-object token counts."""
    on = on.to(torch.float64)
    return {
        "model": hits.to(torch.float64) / k,
        "random": on / n,  # E[hits] / K of K draws without replacement = on / N
        "oracle": torch.clamp(on / k, max=1.0),
    }


def pointing_precision(
    backbone: Any,
    scenes: Sequence[Any],
    hint_ratio: float = 0.3,
    grounding: GroundingConfig | None = None,
    batch_size: int = 64,
    mask_ratio: float = 0.5,
) -> dict[str, Any]:
    """Pointing precision of the backbone's top-eta hints on ShapesWorld scenes, and where the
    plan's other roles fall at mask ratio ``mask_ratio`` (gamma).

    Args:
        backbone: any :class:`~segros.backbones.base.Backbone` (only the grounding seam is used).
        scenes: :class:`~segros.data.shapes.Scene` s rendered at ``backbone.image_size``.
        hint_ratio: eta; K = floor(eta * N_hint) hints per scene.
        grounding: the grounding knobs; default ``GroundingConfig(noise_scale=0.0)`` (the hints
            are then a deterministic top-K of m-bar).
        batch_size: scenes per forward pass.
        mask_ratio: gamma of the plan whose seen / masked split is reported (hints do not depend
            on it: they are the top-K of m-bar, the seen tokens its bottom N - floor(gamma N)).

    Returns:
        ``{"model", "random", "oracle"}`` mean precisions over scenes, ``"scenes"`` (count),
        ``"hints_per_scene"`` (K), and ``"by_objects"``: the same three numbers and a scene count
        per number of objects in the scene; ``"roles"``: the share of hint, seen and masked tokens
        that lie on an object, beside the share of all tokens that do (what a random plan gives).
    """
    from segros.data.readers import ImageTextRecord

    grounding = grounding or GroundingConfig(noise_scale=0.0)
    if not scenes:
        raise ValueError("pointing_precision needs at least one scene")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg = preset("segros", hint_ratio=hint_ratio, grounding=grounding)
    token_grid = tuple(backbone.token_grid)
    hint_grid = tuple(backbone.hint_grid or token_grid)
    n = hint_grid[0] * hint_grid[1]
    k = int(np.floor(np.float64(hint_ratio) * n))
    if k < 1:
        raise ValueError(f"hint_ratio {hint_ratio} selects no hint among {n} tokens")
    size = backbone.image_size
    generator = torch.Generator().manual_seed(0)  # only draws noise, which is 0 by default

    parts: dict[str, list[torch.Tensor]] = {"model": [], "random": [], "oracle": []}
    roles = {"hint": [0, 0], "seen": [0, 0], "masked": [0, 0], "all": [0, 0]}  # [on object, tokens]
    counts = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        shapes = {tuple(s.image.shape[:2]) for s in chunk}
        if shapes != {(size, size)}:
            raise ValueError(
                f"scenes must be rendered at the backbone's {size} px, got sizes {sorted(shapes)}"
            )
        records = [
            ImageTextRecord(image=s.image, caption=s.caption, key=str(start + i)) for i, s in enumerate(chunk)
        ]
        gamma = torch.full((len(chunk),), float(mask_ratio), dtype=torch.float64)
        _, plan = plan_records(backbone, records, cfg, gamma, generator)
        # Union of the object masks per scene -> which hint-grid patches touch an object.
        union = np.stack(
            [
                np.logical_or.reduce([o.mask for o in s.objects] or [np.zeros((size, size), bool)])
                for s in chunk
            ]
        )
        on_object = patch_coverage(torch.from_numpy(union), hint_grid)  # (B, N_hint)
        hits = on_object.gather(1, plan.hint_idx.cpu()).sum(1)
        if hint_grid == token_grid:  # seen / masked index the generation tokens
            seen = plan.seen.cpu()
            for role, where in (("seen", seen), ("masked", ~seen), ("all", torch.ones_like(seen))):
                roles[role][0] += int((on_object & where).sum())
                roles[role][1] += int(where.sum())
        roles["hint"][0] += int(hits.sum())
        roles["hint"][1] += k * len(chunk)
        for name, value in _scores(hits, on_object.sum(1), k, n).items():
            parts[name].append(value)
        counts.extend(len(s.objects) for s in chunk)

    per_scene = {name: torch.cat(values) for name, values in parts.items()}
    objects = torch.tensor(counts)
    by_objects = {}
    for count in sorted(set(counts)):
        sel = objects == count
        by_objects[count] = {name: float(v[sel].mean()) for name, v in per_scene.items()}
        by_objects[count]["scenes"] = int(sel.sum())
    return {
        **{name: float(v.mean()) for name, v in per_scene.items()},
        "scenes": len(scenes),
        "hints_per_scene": k,
        "by_objects": by_objects,
        "mask_ratio": mask_ratio,
        "roles": {role: on / total for role, (on, total) in roles.items() if total},
    }
