"""A tiny randomly initialised Harmon (same classes as the released sizes) and ShapesWorld records."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from segros.backbones.harmon.adapter import HarmonBackbone, HarmonOptions
from segros.backbones.harmon.text import word_level_tokenizer
from segros.data.llava import I2TRecord
from segros.data.readers import ImageTextRecord
from segros.data.shapes import ShapesWorld, vocabulary

IMAGE_SIZE = 64  # 4 x 4 latent tokens at stride 16


def tiny_tokenizer(folder: Path) -> Path:
    word_level_tokenizer(vocabulary(), folder)
    return folder


def tiny_options(tokenizer: Path, **overrides) -> HarmonOptions:
    base = {
        "size": "tiny",
        "tokenizer": str(tokenizer),
        "image_size": IMAGE_SIZE,
        "max_text_len": 80,
        "generation_steps": 3,
        "diffusion_steps": 3,
        "diffusion_batch_mul": 2,
    }
    return HarmonOptions(**{**base, **overrides})


def tiny_backbone(tokenizer: Path, seed: int = 0, **overrides) -> HarmonBackbone:
    torch.manual_seed(seed)
    return HarmonBackbone.from_options(tiny_options(tokenizer, **overrides))


def records(n: int, seed: int = 0) -> list[ImageTextRecord]:
    world = ShapesWorld(image_size=IMAGE_SIZE, seed=seed)
    scenes = [world.scene(i) for i in range(n)]
    return [ImageTextRecord(Image.fromarray(s.image), s.caption, f"s{i}") for i, s in enumerate(scenes)]


def i2t_records(n: int, seed: int = 1) -> list[I2TRecord]:
    return [I2TRecord(r.image, [("what is shown", r.caption)], r.key) for r in records(n, seed)]
