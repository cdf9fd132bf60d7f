"""Backbones by name. Adding one is a line here; the trainer never names a backbone.

Each entry is ``"module:Class"`` of a :class:`~segros.backbones.base.Backbone` subclass (the
contract: ``name`` equal to the key, ``Options``, ``build``, storage hooks; see ``base.py`` and
``tests/test_backbone_contract.py``, which runs every entry). Modules are imported only when
their backbone is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from segros.backbones.base import Backbone
from segros.backbones.files import saved_config
from segros.backbones.lora import has_adapter, merge_adapter
from segros.storage import EMA_FILE, load_ema_weights, safetensors_problem
from segros.storage import resolve_checkpoint as resolve_checkpoint  # its old home

BACKBONES: dict[str, str] = {
    "tiny": "segros.backbones.tiny.adapter:TinyBackbone",
    "showo": "segros.backbones.showo.adapter:ShowoBackbone",
    "harmon": "segros.backbones.harmon.adapter:HarmonBackbone",
    "openuni": "segros.backbones.openuni.adapter:OpenUniBackbone",
    "bagel": "segros.backbones.bagel.adapter:BagelBackbone",
}


def backbone_class(name: str) -> type[Backbone]:
    if name not in BACKBONES:
        raise ValueError(f"model.name must be one of {', '.join(sorted(BACKBONES))}; got {name!r}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def options_schema(name: str) -> type[BaseModel]:
    """The pydantic model that validates a config's ``model:`` section for this backbone."""
    return backbone_class(name).Options


def build_backbone(options: BaseModel) -> Backbone:
    return backbone_class(options.name).from_options(options)


def load_backbone(path: str | Path, weights: str = "raw", **overrides: Any) -> Backbone:
    """Load any backbone folder written by ``save_pretrained`` (its config.json names it);
    a run folder or its ``checkpoints/latest`` file works too.

    ``weights="ema"`` puts the checkpoint's EMA of the trainable weights (``ema.safetensors``,
    ``optim.ema_decay``) over the trained ones; a folder without one is a ``ValueError``.

    A weights file that is cut short or corrupt, or that does not fit the model, is a
    ``ValueError`` naming the file (safetensors alone says "incomplete metadata" and no path).
    A LoRA run's checkpoint (an ``adapter/`` folder beside the base weights) loads merged.
    """
    if weights not in ("raw", "ema"):
        raise ValueError(f"weights must be 'raw' or 'ema', got {weights!r}")
    path = resolve_checkpoint(path)
    config = saved_config(path)
    if config is None:
        raise FileNotFoundError(
            f"{path} has no config.json naming a backbone: not a segros checkpoint folder"
        )
    name = config["backbone"]
    if weights == "ema" and not (Path(path) / EMA_FILE).is_file():
        raise ValueError(
            f"{path} holds no EMA weights ({EMA_FILE}): it was trained without optim.ema_decay "
            "(use --weights raw)"
        )
    for file in sorted([*Path(path).glob("*.safetensors"), *Path(path).glob("adapter/*.safetensors")]):
        if problem := safetensors_problem(file):
            raise ValueError(f"cannot load checkpoint {path}: {file}: {problem}")
    cls = backbone_class(name)
    try:
        backbone = cls.from_pretrained(path, **overrides)
        if has_adapter(path):
            backbone = merge_adapter(backbone, path)
        if weights == "ema":
            load_ema_weights(backbone, path)
        return backbone
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # safetensors' SafetensorError, load_state_dict's RuntimeError, ...
        raise ValueError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e
