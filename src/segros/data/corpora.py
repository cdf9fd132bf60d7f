"""Named corpora the built-in tiny tokenizers are made from: words and questions for the
word-level text tokenizers, a stream of training images for TinyUMM's patch tokenizer.

A config names a corpus (``model.corpus: shapes`` for TinyUMM and the tiny Harmon / OpenUni,
``model.tokenizer: shapes-words`` for a tiny Show-o); the backbone asks this module for that
corpus's words or images and fits on what it is given. So the models hold no knowledge of any
data source (no module under ``segros.backbones`` imports ``segros.data.shapes``; checked by
``tests/test_architecture.py``), and a new corpus is an entry here, not a change to a backbone.

Today there is one corpus, ``shapes``: ShapesWorld's caption and evaluation-prompt words, the
image-to-text questions of its sources, and its training scenes (held-out compositions
excluded).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Annotated

import numpy as np
from pydantic import AfterValidator

from segros.data.shapes import ShapesWorld, vocabulary
from segros.data.sources import SHAPES_QUESTIONS

CORPORA: tuple[str, ...] = ("shapes",)


def check(name: str) -> str:
    """``name`` if it names a corpus, else a ``ValueError`` listing the ones there are."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}: the built-in corpora are {', '.join(CORPORA)}")
    return name


#: a config option naming a corpus, checked when the config is read
CorpusName = Annotated[str, AfterValidator(check)]


def words(name: str) -> list[str]:
    """Every word of the corpus's captions and evaluation prompts, sorted (no question words)."""
    check(name)
    return vocabulary()


def questions(name: str) -> tuple[str, ...]:
    """The image-to-text questions the corpus's sources ask."""
    check(name)
    return SHAPES_QUESTIONS


def training_images(
    name: str, image_size: int, seed: int = 0, *, layout: str = "free", cells: int = 4
) -> Iterator[np.ndarray]:
    """The corpus's training images in a fixed order, endless: uint8 ``(image_size, image_size, 3)``.

    ``shapes``: scene 0, 1, 2, ... of ``ShapesWorld(seed=seed)`` with held-out compositions
    excluded, drawn with ``layout`` (``"grid"`` snaps objects to a ``cells`` x ``cells`` grid).
    """
    check(name)
    world = ShapesWorld(image_size=image_size, seed=seed, exclude_held_out=True, layout=layout, cells=cells)
    return (world.scene(i).image for i in itertools.count())
