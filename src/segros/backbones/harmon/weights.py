"""Harmon's release layout: reading it (``HarmonBackbone.from_upstream``) and writing it (export).

Upstream's inference scripts (``scripts/text2image.py`` and ``image2text.py``) build ``Harmon`` from
its config and ``load_state_dict`` a flat ``harmon_<size>.pth`` of the model's own attribute names
(``llm.*``, ``mar.*``, ``proj_in.*``, ``proj_out.*``); the KL-16 VAE comes separately from
``kl16.ckpt`` and the Qwen2.5 tokenizer from its hub repo (docs/upstream/harmon.md section 7).
segros keeps those names, so loading is the model's ``load_state_dict`` and the export is the
model's state dict as it is, saved with ``torch.save`` as a plain dict of tensors
(``torch.load(weights_only=True)`` reads both).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segros.backbones.files import plain_state, unwrap
from segros.backbones.hub import MissingCheckpointError, resolve_files

log = logging.getLogger(__name__)

PUBLISHED_VAE = "wusize/harmon"  # where kl16.ckpt is published beside the .pth files
VAE_FILE = "kl16.ckpt"


def release_files(source: str, vae: str | None, checkpoint_file: str | None, size: str) -> tuple[Path, Path]:
    """Local paths of ``harmon_<size>.pth`` (or ``checkpoint_file``) in ``source`` and of
    ``kl16.ckpt`` in ``vae`` (default ``source``); one error names every file missing."""
    ckpt_name = checkpoint_file or pth_name(size)
    found, errors = {}, []
    for src, files, what, key in (
        (source, [ckpt_name], f"Harmon-{size} checkpoint", "model.init_from"),
        (vae or source, [VAE_FILE], "Harmon KL-16 VAE", "model.vae"),
    ):
        try:
            found |= resolve_files(src, files, what, key)
        except MissingCheckpointError as err:
            errors.append(str(err))
    if errors:
        raise MissingCheckpointError("\n".join(errors))
    return found[ckpt_name], found[VAE_FILE]


def load_release(model: nn.Module, vae: nn.Module, harmon_pth: str | Path, kl16_ckpt: str | Path) -> None:
    """Load the released ``harmon_*.pth`` (flat state dict of ``Harmon``) into ``model`` and
    ``kl16.ckpt`` (``{"model": state dict}``) into ``vae``, both with ``weights_only=True``.
    Missing keys other than the tied ``llm.lm_head.weight`` are an error; ``vae.*`` and unknown
    keys of the ``.pth`` are ignored (logged)."""
    state = unwrap(torch.load(harmon_pth, map_location="cpu", weights_only=True), harmon_pth)
    state = {k: v for k, v in state.items() if not k.startswith("vae.")}
    result = model.load_state_dict(state, strict=False)
    tied = {"llm.lm_head.weight"} if model.llm.config.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing:
        raise ValueError(f"{harmon_pth} lacks {len(missing)} Harmon weights, e.g. {missing[:5]}")
    if result.unexpected_keys:
        log.warning("%s: ignored %d unknown keys, e.g. %s", harmon_pth, len(result.unexpected_keys),
                    result.unexpected_keys[:5])  # fmt: skip
    if tied:
        model.llm.tie_weights()
    vae_state = unwrap(torch.load(kl16_ckpt, map_location="cpu", weights_only=True), kl16_ckpt)
    own = vae.state_dict()
    missing = [k for k in own if k not in vae_state]
    if missing:
        raise ValueError(f"{kl16_ckpt} lacks {len(missing)} VAE weights, e.g. {missing[:5]}")
    vae.load_state_dict({k: vae_state[k] for k in own})


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
    from segros.backbones.harmon.text import QWEN_TOKENIZERS

    out.mkdir(parents=True, exist_ok=True)
    options = backbone.options
    name = pth_name(options.size)
    torch.save(plain_state(upstream_state(backbone.model.state_dict())), out / name)
    refs = {
        "vae (kl16.ckpt)": options.vae or PUBLISHED_VAE,
        "tokenizer (Qwen2.5)": options.tokenizer or QWEN_TOKENIZERS.get(options.size, "?"),
    }
    return {"files": [name], "references": refs}
