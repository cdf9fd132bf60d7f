"""Training data sources built from a config's ``data:`` section.

These sources are map-style (see :mod:`segros.data.sampling`): ShapesWorld is streamed by index
(scene ``i`` is a pure function of the seed and ``i``), files are read by the readers in
:mod:`segros.data.readers` (Hugging Face datasets by :mod:`segros.data.hf`), conversations by
:mod:`segros.data.llava`. With ``data.files.streaming`` the image-caption data is an iterable source
instead, batched by :mod:`segros.data.streaming`.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from segros.data.formats import open_image_text
from segros.data.llava import I2TRecord, LlavaConversations
from segros.data.readers import ImageTextRecord

# Questions of the ShapesWorld image-to-text task (answer: the scene's caption).
SHAPES_QUESTIONS = ("what is shown in this image", "describe this picture", "what is in the image")
# The image-to-text stream of a ShapesWorld source draws from seed + I2T_SEED_OFFSET.
I2T_SEED_OFFSET = 7919


class ShapesImageText:
    """ShapesWorld scenes ``0 .. length-1`` as image-caption records."""

    def __init__(
        self,
        image_size: int,
        seed: int,
        length: int,
        layout: str = "free",
        cells: int = 4,
        caption_style: str = "mixed",
        coarse_color_rate: float = 0.5,
        coarse_relation_rate: float = 0.1,
        kind_weights: tuple[float, ...] | None = None,
        web_noise: Any = None,
    ) -> None:
        from segros.data.shapes import ShapesWorld

        self.world = ShapesWorld(
            image_size=image_size,
            seed=seed,
            caption_style=caption_style,
            layout=layout,
            cells=cells,
            coarse_color_rate=coarse_color_rate,
            coarse_relation_rate=coarse_relation_rate,
            kind_weights=kind_weights,
            web_noise=web_noise,
        )
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> ImageTextRecord:
        scene = self.world.scene(int(i))
        return ImageTextRecord(Image.fromarray(scene.image), scene.caption, f"shapes:{self.world.seed}:{i}")


class ShapesConversations:
    """The same scenes as one-turn image-to-text records: a question, answered by the caption.

    Uses a different seed stream from the T2I source so the two tasks see different scenes.
    """

    def __init__(self, image_size: int, seed: int, length: int, **world: Any) -> None:
        self.scenes = ShapesImageText(image_size, seed + I2T_SEED_OFFSET, length, **world)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> I2TRecord:
        record = self.scenes[i]
        question = SHAPES_QUESTIONS[int(i) % len(SHAPES_QUESTIONS)]
        return I2TRecord(record.image, [(question, record.caption)], record.key)


def world_for(backbone: Any, seed: int, **kwargs: Any) -> Any:
    """A ShapesWorld drawn the way ``backbone`` was trained to see it: its image size, and for a
    TinyUMM fitted on the grid layout, objects snapped to its token grid (``model.shapes_layout``)."""
    from segros.data.shapes import ShapesWorld

    layout = getattr(getattr(backbone, "options", None), "shapes_layout", "free")
    cells = int(backbone.token_grid[0])
    return ShapesWorld(image_size=backbone.image_size, seed=seed, layout=layout, cells=cells, **kwargs)


def _shapes_args(data: Any, backbone: Any) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """ShapesWorld arguments of a ``data:`` section (its ``shapes`` options) for ``backbone``: its
    image size, and its token grid as the cells of the grid layout."""
    from segros.data.shapes import WebNoise

    shapes = data.shapes
    world = {
        "layout": shapes.layout,
        "cells": int(backbone.token_grid[0]),
        "caption_style": shapes.caption_style,
        "coarse_color_rate": shapes.coarse_color_rate,
        "coarse_relation_rate": shapes.coarse_relation_rate,
        "kind_weights": shapes.kind_weights,
        "web_noise": WebNoise(**shapes.web_noise.model_dump()),
    }
    return (backbone.image_size, shapes.seed, shapes.scenes), world


def t2i_source(data: Any, backbone: Any) -> Any:
    """The image-caption dataset a ``data:`` section names, drawn (for ShapesWorld) for ``backbone``."""
    if data.source == "shapes":
        args, world = _shapes_args(data, backbone)
        return ShapesImageText(*args, **world)
    files = data.files
    if files.streaming:
        raise ValueError(
            "data.files.streaming: a streamed source has no records by index (segros cache needs them); "
            "leave data.files.streaming off to cache data.files.path"
        )
    return open_image_text(
        files.path, files.image_column, files.caption_column, split=files.split, cache_dir=files.hf_cache_dir
    )


def i2t_source(data: Any, backbone: Any) -> Any | None:
    """The image-to-text dataset, or None when ``data.i2t`` is ``none``."""
    if data.i2t == "none":
        return None
    if data.i2t == "shapes":
        args, world = _shapes_args(data, backbone)
        world["caption_style"] = data.shapes.i2t_caption_style or world["caption_style"]
        return ShapesConversations(*args, **world)
    return LlavaConversations(data.i2t_path, data.i2t_image_root)
