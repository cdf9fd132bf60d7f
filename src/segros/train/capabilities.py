"""A config's method knobs checked against what its backbone declares it can honour.

A backbone states its :class:`~segros.backbones.base.Capabilities` (does it mask image tokens,
does its image-to-text loss train anything, how it generates) and knows nothing of the config's
schema; this module, in the config layer, knows which ``method:`` keys need which capability. A
config setting a knob the backbone would silently ignore stops when it is read, naming the key,
the backbone and the capability, instead of training with a knob that does nothing.
"""

from __future__ import annotations

from typing import Any

from segros.backbones.base import Capabilities


def refused_knobs(method: Any, capabilities: Capabilities, backbone: str) -> dict[str, str]:
    """``{method key: why}`` for every key of the validated ``method:`` section ``method`` that a
    backbone named ``backbone`` with ``capabilities`` cannot honour (empty: all fine).

    Without ``masks_tokens`` nothing is corrupted by masking, so no token is kept visible
    (``seen_pick``), no masking ratio is drawn (``mask_schedule``, ``mask_per_batch``) and every
    image token carries the loss (``loss_targets: top``, ``loss_target_ratio``, preset
    ``segros_droploss``). Without ``trains_image_to_text`` an ``i2t_weight`` above 0 trains nothing.
    """
    refused: dict[str, str] = {}
    if not capabilities.masks_tokens:
        why = (
            f"the {backbone} backbone masks no image tokens (capabilities: masks_tokens=False, "
            f"generation={capabilities.generation!r}): its loss covers every image token"
        )
        if method.seen_pick is not None:
            refused["seen_pick"] = f"{why}, so no token is kept visible; leave seen_pick unset"
        for knob in ("mask_schedule", "mask_per_batch"):
            if getattr(method, knob) is not None:
                refused[knob] = f"{why}, so no masking ratio is used; leave {knob} unset"
        if method.loss_targets == "top" or "loss_target_ratio" in method.model_fields_set:
            key = "loss_targets" if method.loss_targets == "top" else "loss_target_ratio"
            refused[key] = f"{why}; drop-loss targets do not exist here"
        if method.preset == "segros_droploss":
            refused["preset"] = f"{why}; segros_droploss is segros here: use preset segros"
    if not capabilities.trains_image_to_text and method.i2t_weight > 0:
        refused["i2t_weight"] = (
            f"the {backbone} backbone trains nothing with its image-to-text loss (capabilities: "
            "trains_image_to_text=False, its understanding model is frozen): set i2t_weight 0"
        )
    return refused
