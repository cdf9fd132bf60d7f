"""Named corpora the built-in tiny tokenizers are made from: words and questions for the
word-level text tokenizers, a stream of training images for TinyUMM's patch tokenizer.

A config names a corpus (``model.corpus: shapes`` for TinyUMM and the tiny Harmon / OpenUni,
``model.tokenizer: shapes-words`` for a tiny Show-o); the backbone asks this module for that
corpus's words or images and fits on what it is given. So the models hold no knowledge of any
data source (no module under ``segros.backbones`` imports ``segros.data.shapes``; checked by
``tests/test_architecture.py``), and a new corpus is an entry of :data:`CORPORA`, not a change to
a backbone.

Today there is one corpus, ``shapes``: ShapesWorld's caption and evaluation-prompt words, the
image-to-text questions of its sources, and its training scenes (held-out compositions
excluded).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import AfterValidator

from segros.data.shapes import ShapesWorld, vocabulary
from segros.data.sources import SHAPES_QUESTIONS

#: ``(image_size, seed, layout, cells)`` -> the corpus's training images, endless and in a fixed
#: order: uint8 ``(image_size, image_size, 3)`` arrays
ImageStream = Callable[[int, int, str, int], Iterator[np.ndarray]]


@dataclass(frozen=True)
class Corpus:
    """What the built-in tokenizers made from one corpus read."""

    words: Callable[[], list[str]]  # every word of its captions and prompts, sorted
    questions: Callable[[], tuple[str, ...]]  # the image-to-text questions its sources ask
    training_images: ImageStream


def _shapes_images(image_size: int, seed: int, layout: str, cells: int) -> Iterator[np.ndarray]:
    """Scene 0, 1, 2, ... of ``ShapesWorld(seed=seed)`` with held-out compositions excluded, drawn
    with ``layout`` (``"grid"`` snaps objects to a ``cells`` x ``cells`` grid)."""
    world = ShapesWorld(image_size=image_size, seed=seed, exclude_held_out=True, layout=layout, cells=cells)
    return (world.scene(i).image for i in itertools.count())


CORPORA: dict[str, Corpus] = {
    "shapes": Corpus(words=vocabulary, questions=lambda: SHAPES_QUESTIONS, training_images=_shapes_images),
}


def corpus(name: str) -> Corpus:
    """The corpus ``name``, or a ``ValueError`` listing the ones there are."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}: the built-in corpora are {', '.join(sorted(CORPORA))}")
    return CORPORA[name]


def check(name: str) -> str:
    """``name`` if it names a corpus (else :func:`corpus`'s ``ValueError``)."""
    corpus(name)
    return name


#: a config option naming a corpus, checked when the config is read
CorpusName = Annotated[str, AfterValidator(check)]


def words(name: str) -> list[str]:
    """Every word of the corpus's captions and evaluation prompts, sorted (no question words)."""
    return corpus(name).words()


def questions(name: str) -> tuple[str, ...]:
    """The image-to-text questions the corpus's sources ask."""
    return corpus(name).questions()


def training_images(
    name: str, image_size: int, seed: int = 0, *, layout: str = "free", cells: int = 4
) -> Iterator[np.ndarray]:
    """The corpus's training images in a fixed order, endless: uint8 ``(image_size, image_size, 3)``
    (``shapes``: its training scenes drawn with ``layout`` on a ``cells`` x ``cells`` grid)."""
    return corpus(name).training_images(image_size, seed, layout, cells)
