"""Harmon's release layout, the inverse of :meth:`HarmonBackbone.load_upstream`.

Upstream's inference scripts (``scripts/text2image.py`` and ``image2text.py``) build ``Harmon`` from
its config and ``load_state_dict`` a flat ``harmon_<size>.pth`` of the model's own attribute names
(``llm.*``, ``mar.*``, ``proj_in.*``, ``proj_out.*``); the KL-16 VAE comes separately from
``kl16.ckpt`` and the Qwen2.5 tokenizer from its hub repo (docs/upstream/harmon.md section 7).
segros keeps those names, so the export is the model's state dict as it is, saved with
``torch.save`` as a plain dict of tensors (``torch.load(weights_only=True)`` reads it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PUBLISHED_VAE = "wusize/harmon"  # where kl16.ckpt is published beside the .pth files


def upstream_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Harmon`` (``HarmonBackbone.model``) weights under upstream's names: every key as it is
    (the VAE is not part of this module and is never included)."""
    return {k: v for k, v in state.items() if not k.startswith("vae.")}


def pth_name(size: str) -> str:
    """The release's file name for a size (``harmon_1.5b.pth``); tiny models say ``tiny``."""
    return f"harmon_{size}.pth"


def write_upstream(backbone: Any, out: Path) -> dict[str, Any]:
    """Write ``out/harmon_<size>.pth``; returns what upstream loads separately (``kl16.ckpt``, the
    Qwen2.5 tokenizer), by the folder or hub id the model came from: referenced, not copied."""
    from segros.backbones.base import plain_state
    from segros.backbones.harmon.adapter import QWEN_TOKENIZERS

    out.mkdir(parents=True, exist_ok=True)
    options = backbone.options
    name = pth_name(options.size)
    torch.save(plain_state(upstream_state(backbone.model.state_dict())), out / name)
    refs = {
        "vae (kl16.ckpt)": options.vae or PUBLISHED_VAE,
        "tokenizer (Qwen2.5)": options.tokenizer or QWEN_TOKENIZERS.get(options.size, "?"),
    }
    return {"files": [name], "references": refs}
