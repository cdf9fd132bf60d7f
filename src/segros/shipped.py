"""Files shipped inside the package: the pretrained TinyUMM and the demo's training recipes."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: the pretrained TinyUMM every demo method starts from (PROVENANCE.md beside it)
PRETRAINED_TINY = PACKAGE / "assets" / "tiny-pretrained"
#: demo-pretrain.yaml and demo-finetune.yaml
RECIPES = PACKAGE / "recipes"
