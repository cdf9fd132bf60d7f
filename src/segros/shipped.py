"""Files shipped inside the package: the pretrained TinyUMM and the training configs (the demo's too)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: the pretrained TinyUMM every demo method starts from (PROVENANCE.md beside it)
PRETRAINED_TINY = PACKAGE / "assets" / "tiny-pretrained"
#: the earlier shipped TinyUMM, pretrained on clean coarse captions (docs/miniature.md)
PRETRAINED_TINY_COARSE = PACKAGE / "assets" / "tiny-pretrained-coarse"
#: every config of the README and the paper's tables, one folder per backbone (their one home; a
#: ``--config configs/...`` path that does not exist in the working directory is read from here)
CONFIGS = PACKAGE / "configs"
#: the demo's recipes: pretrain.yaml (the shipped TinyUMM), pretrain-coarse.yaml (the earlier one) and
#: finetune.yaml (every demo method)
RECIPES = CONFIGS / "demo"
