"""A toy corpus for the tests that check a backbone builds its tokenizers from what the config's
corpus gives it (``segros.data.corpora``), not from ShapesWorld."""

from __future__ import annotations

import numpy as np

from segros.data.corpora import Corpus

TOY_WORDS = ["zag", "zig"]
TOY_QUESTIONS = ("zig or zag",)


def toy_corpus(colours: list[tuple[int, int, int]]) -> Corpus:
    """Two words, one question, and images that are mosaics of 4 px tiles, each one flat colour of
    ``colours``: a patch tokenizer (4 px patches) fitted on them can only hold those flat tiles."""

    def images(image_size: int, seed: int, layout: str, cells: int):
        rng = np.random.default_rng(seed)
        while True:
            pick = rng.integers(0, len(colours), (image_size // 4, image_size // 4))
            yield np.asarray(colours, dtype=np.uint8)[pick].repeat(4, 0).repeat(4, 1)

    return Corpus(words=lambda: list(TOY_WORDS), questions=lambda: TOY_QUESTIONS, training_images=images)
