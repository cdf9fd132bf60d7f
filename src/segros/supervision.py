"""From a batch to its supervision plan: grounding inputs, masking ratios, plan (Secs. 3.2-3.4).

The trainer, the demo's grounding pictures, ``segros inspect`` and pointing precision all turn
image-caption records into a plan; they do it here, one way: the backbone's grounding inputs
without gradient, cast to float32 for the grounding (whatever the model's dtype), then
:func:`segros.plan.plan_batch`, which grounds only when the plan's picks read the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from segros.backbones.base import Backbone, T2IBatch
from segros.plan import PlanConfig, SupervisionPlan, plan_batch
from segros.schedules import sample_mask_ratio


def sample_ratio(
    backbone: Backbone,
    batch_size: int,
    generator: torch.Generator | None,
    schedule: str | None = None,
    per_batch: bool | None = None,
) -> torch.Tensor:
    """(B,) float64 masking ratios from the backbone's own schedule, unless ``schedule`` /
    ``per_batch`` (``method.mask_schedule`` / ``method.mask_per_batch``) override it."""
    per_batch = backbone.mask_per_batch if per_batch is None else per_batch
    return sample_mask_ratio(schedule or backbone.mask_schedule, batch_size, generator, per_batch)


def ground_and_plan(
    backbone: Backbone,
    batch: T2IBatch,
    cfg: PlanConfig,
    mask_ratio: torch.Tensor,
    generator: torch.Generator | None = None,
    model: Any = None,
) -> SupervisionPlan:
    """The plan for ``batch``: grounding inputs (through ``model``, the trainer's wrapped module,
    when given, so DDP / DeepSpeed see the call), then grounding and plan on the backbone's grids."""
    with torch.no_grad():
        g = model(batch, mode="ground") if model is not None else backbone.grounding_inputs(batch)
    return plan_batch(
        g.text_emb.float(),
        g.image_emb.float(),
        g.text_valid,
        cfg,
        mask_ratio,
        generator,
        token_grid=backbone.token_grid,
        hint_grid=backbone.hint_grid,
        text_stopword=g.text_stopword,
    )


def plan_records(
    backbone: Backbone,
    records: Sequence[Any],
    cfg: PlanConfig,
    mask_ratio: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[T2IBatch, SupervisionPlan]:
    """Prepare image-caption records and plan them: the batch and its plan."""
    batch = backbone.prepare_t2i(records)
    return batch, ground_and_plan(backbone, batch, cfg, mask_ratio, generator)
