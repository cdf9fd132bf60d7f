"""Backbones by name. Adding one is a line here; the trainer never names a backbone.

Each entry is ``"module:Class"`` of a :class:`~segros.backbones.base.Backbone` subclass with an
``Options`` pydantic model (the config's ``model:`` section), ``from_options`` and
``from_pretrained``. Modules are imported only when their backbone is used.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from segros.backbones.base import Backbone

BACKBONES: dict[str, str] = {
    "tiny": "segros.backbones.tiny.adapter:TinyBackbone",
    "showo": "segros.backbones.showo.adapter:ShowoBackbone",
    "harmon": "segros.backbones.harmon.adapter:HarmonBackbone",
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


def resolve_checkpoint(path: str | Path) -> Path:
    """A model folder from what a user may point at: the folder itself, a run's
    ``checkpoints/latest`` pointer file, or a run folder (its newest complete checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name == "latest":
        return path.parent / path.read_text().strip()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "checkpoints").is_dir():
        from segros.train.checkpoint import latest_checkpoint

        found = latest_checkpoint(path)
        if found is not None:
            return found
    return path


def load_backbone(path: str | Path, **overrides: Any) -> Backbone:
    """Load any backbone folder written by ``save_pretrained`` (its config.json names it);
    a run folder or its ``checkpoints/latest`` file works too."""
    path = resolve_checkpoint(path)
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a segros checkpoint folder")
    name = json.loads(config_file.read_text()).get("backbone")
    return backbone_class(name).from_pretrained(path, **overrides)
