"""Text-to-image prompts in a chat template, tokenised with caption masks (Harmon, OpenUni).

A caption is tokenised in context, ``prefix + caption + suffix``, exactly as the model sees it. A
token is a caption token when its character span overlaps the caption (offsets of a fast
tokenizer), so the template, special tokens and padding are never valid for grounding; overlap, not
containment, because byte-level BPE (Qwen) glues the space before the first caption word to it.
``caption_stopword`` marks the caption tokens of English function words (:mod:`segros.stopwords`),
read off the same offsets clipped to the caption, so template words never count. Over-long prompts
lose the caption's last tokens and keep the whole template. Rows are right-padded.

Shared so that every chat-template adapter marks and cuts captions the same way; a backbone with
another layout (Show-o's fixed-width, left-padded prompt) keeps its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segros.stopwords import token_stopwords


def right_pad(rows: Sequence[Sequence[int | bool]], value: int | bool) -> torch.Tensor:
    """(B, max length) long or bool tensor of the rows, right-padded with ``value`` (bool if it is)."""
    width = max(1, max(len(r) for r in rows))
    dtype = torch.bool if isinstance(value, bool) else torch.long
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


def caption_tokens(
    tokenizer: Any, prefix: str, caption: str, suffix: str
) -> tuple[list[int], list[bool], list[bool]]:
    """Token ids of ``prefix + caption + suffix`` (special tokens added) and, per token, whether it
    is a caption token and whether it is a caption token of a function word."""
    enc = tokenizer(prefix + caption + suffix, add_special_tokens=True, return_offsets_mapping=True)
    start, end = len(prefix), len(prefix) + len(caption)
    inside = [b > a and a < end and b > start for a, b in enc["offset_mapping"]]
    spans = [(max(a, start) - start, min(b, end) - start) if c else (0, 0)
             for (a, b), c in zip(enc["offset_mapping"], inside, strict=True)]  # fmt: skip
    stop = [s and c for s, c in zip(token_stopwords(caption, spans), inside, strict=True)]
    return list(enc["input_ids"]), inside, stop


def cut_caption(
    ids: list[int], inside: list[bool], stop: list[bool], max_len: int, what: str
) -> tuple[list[int], list[bool], list[bool]]:
    """The rows without the caption's last tokens beyond ``max_len`` (the template stays); a
    ValueError naming ``what`` when the template alone is longer."""
    excess = len(ids) - max_len
    if excess <= 0:
        return ids, inside, stop
    where = [i for i, c in enumerate(inside) if c][-excess:]
    if len(where) < excess:
        raise ValueError(f"{what} alone is longer than max_text_len={max_len}")
    drop = set(where)
    ids, inside, stop = ([v for i, v in enumerate(row) if i not in drop] for row in (ids, inside, stop))
    return ids, inside, stop


def encode_captions(
    tokenizer: Any,
    captions: Sequence[str],
    prefix: str,
    suffix: str,
    max_len: int,
    pad_id: int,
    what: str = "the T2I template",
) -> dict[str, torch.Tensor]:
    """``text_ids`` / ``text_mask`` / ``caption_mask`` / ``caption_stopword`` (B, T) of each caption
    in ``prefix + caption + suffix``: at most ``max_len`` tokens, right-padded with ``pad_id``."""
    ids_rows, caption_rows, stop_rows = [], [], []
    for caption in captions:
        ids, inside, stop = cut_caption(*caption_tokens(tokenizer, prefix, caption, suffix), max_len, what)
        ids_rows.append(ids)
        caption_rows.append(inside)
        stop_rows.append(stop)
    return {
        "text_ids": right_pad(ids_rows, pad_id),
        "text_mask": right_pad([[True] * len(r) for r in ids_rows], False),
        "caption_mask": right_pad(caption_rows, False),
        "caption_stopword": right_pad(stop_rows, False),
    }


#: the words of the chat templates and the I2T questions of the test data, always in a test vocabulary
TEMPLATE_WORDS = "user assistant Generate an image : . , what is shown in this describe picture".split()


def word_level_tokenizer(
    specials: Sequence[str], words: Sequence[str], folder: str | Path | None = None
) -> Any:
    """A small fast word-level tokenizer: ``specials`` (the first is eos and padding, the last the
    unknown token, the others added specials), then :data:`TEMPLATE_WORDS`, then ``words``.

    For tests and CPU smoke runs of tiny configurations: the ``AutoTokenizer`` code path of a real
    chat tokenizer (offsets, added specials) with no download. Saved to ``folder`` when given.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [*specials, *TEMPLATE_WORDS, *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[-1]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=specials[-1],
        eos_token=specials[0],
        pad_token=specials[0],
        additional_special_tokens=list(specials[1:-1]),
    )
    if folder is not None:
        fast.save_pretrained(str(folder))
    return fast
