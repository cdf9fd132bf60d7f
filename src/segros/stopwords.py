"""English function words, and which caption tokens belong to one (``method.text_stopwords``).

The paper's Fig. 3 says its text scores "exclude non-semantic functional stopwords". None of our
dependencies ships a stopword list (scikit-learn, NLTK and spaCy are not among them, and pulling
one in for a word list is not worth it), so this module keeps a small one: the closed classes of
English grammar only: articles and determiners, pronouns, auxiliary and copular verbs,
prepositions, conjunctions and a few particles. Unlike the long retrieval lists (scikit-learn's
includes "top", "bottom", "front", "back", "four", "three", ...), it holds no noun, adjective or
numeral, so colour, shape, size, count and place words are always content. Spatial prepositions
("above", "below", "under", "over") are function words here as in NLTK's list: they name a relation,
not a thing an image token shows.

For sub-word tokenizers a token is a stopword when the whole word it belongs to is
(:func:`token_stopwords` takes the tokenizer's character offsets).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a an the this that these those some any each every either neither no another such what which
    whose whatever whichever
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves who whom
    am is are was were be been being have has had having do does did doing will would shall should
    can could may might must
    of in on at to for with by from into onto upon over under above below about against between
    among through during before after within without across along around behind beneath beside
    besides beyond near off out up down toward towards via per
    and or but nor so yet if then than as because while although though whether
    not also too very just only there here where when how why all both
    """.split()
)

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def is_stopword(word: str) -> bool:
    """True if ``word`` (any case) is an English function word of :data:`ENGLISH_STOPWORDS`."""
    return word.lower() in ENGLISH_STOPWORDS


def token_stopwords(text: str, offsets: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token, True when the whole word it overlaps is a stopword.

    ``offsets`` are the tokens' ``(start, end)`` character spans in ``text`` (a fast Hugging Face
    tokenizer's ``return_offsets_mapping``). A token overlapping no word (spaces, punctuation,
    special tokens with span ``(0, 0)``) is not a stopword.
    """
    spans = [(m.start(), m.end(), is_stopword(m.group())) for m in WORD.finditer(text)]
    flags = []
    for start, end in offsets:
        hit = [stop for s, e, stop in spans if s < end and start < e] if end > start else []
        flags.append(bool(hit) and all(hit))
    return flags
