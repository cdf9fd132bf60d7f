"""OpenUni's prompts, tokenised with caption masks (docs/upstream/openuni.md section 3).

Text-to-image: ``<|im_start|>user\\nGenerate an image: {caption}<|im_end|>\\n<|im_start|>assistant\\n<img>``
(upstream's ``INSTRUCTION`` around ``GENERATION``, then ``IMG_START_TOKEN``); the classifier-free
guidance prompt is the same around ``Generate an image.``. No system prompt, right padding, and
the learnable queries follow the padded prompt. Image-to-text (the frozen MLLM's own task, for
the contract's I2T term) puts ``<img>`` + the image tokens + ``</img>`` before the question, as
InternVL's chat format does.

Grounding reads caption tokens only: a token is a caption token when its character span
overlaps the caption (offsets of a fast tokenizer), so the template, ``<img>`` and padding are
never valid. Over-long prompts lose caption tokens from the end and keep the template (upstream
truncates the whole prompt to its first 128 tokens, losing the template's tail).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segros.stopwords import token_stopwords

USER, ASSISTANT, END = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
T2I_PREFIX = USER + "Generate an image: "
T2I_SUFFIX = END + "\n" + ASSISTANT + IMG_START
NULL_PROMPT = USER + "Generate an image." + END + "\n" + ASSISTANT + IMG_START
PAD_ID = 0  # upstream's collate pads with 0 (masked, so never read)


def right_pad(rows: Sequence[list[Any]], value: int | bool) -> torch.Tensor:
    """(B, max length) long or bool tensor of the rows, right-padded with ``value``."""
    width = max(1, max(len(r) for r in rows))
    dtype = torch.bool if isinstance(value, bool) else torch.long
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


def encode_t2i(tokenizer: Any, captions: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """``text_ids`` / ``text_mask`` / ``caption_mask`` / ``caption_stopword`` (B, T) of the
    text-to-image prompt of each caption (stripped, as upstream's ``_process_text``)."""
    ids_rows, caption_rows, stop_rows = [], [], []
    start = len(T2I_PREFIX)
    for raw in captions:
        caption = raw.strip()
        enc = tokenizer(
            T2I_PREFIX + caption + T2I_SUFFIX, add_special_tokens=True, return_offsets_mapping=True
        )
        end = start + len(caption)
        # overlap, not containment: byte-level BPE glues the space before a word to it
        inside = [b > a and a < end and b > start for a, b in enc["offset_mapping"]]
        spans = [(max(a, start) - start, min(b, end) - start) if c else (0, 0)
                 for (a, b), c in zip(enc["offset_mapping"], inside, strict=True)]  # fmt: skip
        stop = [s and c for s, c in zip(token_stopwords(caption, spans), inside, strict=True)]
        ids = list(enc["input_ids"])
        excess = len(ids) - max_len
        if excess > 0:  # the caption's last tokens go, the template stays
            where = [i for i, c in enumerate(inside) if c][-excess:]
            if len(where) < excess:
                raise ValueError(f"the OpenUni prompt template alone is longer than max_text_len={max_len}")
            keep = [i for i in range(len(ids)) if i not in set(where)]
            ids, inside, stop = ([row[i] for i in keep] for row in (ids, inside, stop))
        ids_rows.append(ids)
        caption_rows.append(inside)
        stop_rows.append(stop)
    return {
        "text_ids": right_pad(ids_rows, PAD_ID),
        "text_mask": right_pad([[True] * len(r) for r in ids_rows], False),
        "caption_mask": right_pad(caption_rows, False),
        "caption_stopword": right_pad(stop_rows, False),
    }


def encode_null(tokenizer: Any) -> list[int]:
    """Token ids of the classifier-free-guidance prompt (upstream's ``CFG`` in the template)."""
    return list(tokenizer(NULL_PROMPT, add_special_tokens=True)["input_ids"])


def encode_i2t(tokenizer: Any, turns: Sequence[tuple[str, str]], max_len: int) -> dict[str, Any]:
    """The understanding prompt split around the image tokens: constant ``prefix_ids``
    (``<|im_start|>user\\n<img>``) and per sample ``tail_ids`` / ``tail_mask`` / ``answer_mask``
    for ``</img>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>``."""
    prefix = list(tokenizer(USER + IMG_START, add_special_tokens=True)["input_ids"])
    rows, answers = [], []
    for question, answer in turns:
        head = tokenizer(IMG_END + "\n" + question + END + "\n" + ASSISTANT, add_special_tokens=False)
        ans = tokenizer(answer + END, add_special_tokens=False)
        ids = (list(head["input_ids"]) + list(ans["input_ids"]))[:max_len]
        n_head = len(head["input_ids"])
        rows.append(ids)
        answers.append([False] * min(n_head, len(ids)) + [True] * max(0, len(ids) - n_head))
    return {
        "prefix_ids": torch.tensor(prefix, dtype=torch.long),
        "tail_ids": right_pad(rows, PAD_ID),
        "tail_mask": right_pad([[True] * len(r) for r in rows], False),
        "answer_mask": right_pad(answers, False),
    }


SPECIALS = [END, "<|im_start|>", "<|endoftext|>", IMG_START, IMG_END, IMG_CONTEXT, "[UNK]"]
TEMPLATE_WORDS = "user assistant Generate an image : . , what is shown in this describe picture".split()


def word_level_tokenizer(words: Sequence[str], folder: str | Path | None = None) -> Any:
    """A small fast word-level tokenizer with InternVL3's chat and image specials.

    For tests and CPU smoke runs of the tiny configuration: the ``AutoTokenizer`` code path of the
    real tokenizer (offsets, added specials) with no download. Saved to ``folder`` when given.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [*SPECIALS, *TEMPLATE_WORDS, *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        eos_token=END,
        pad_token=END,
        additional_special_tokens=SPECIALS[1:6],
    )
    if folder is not None:
        fast.save_pretrained(str(folder))
    return fast
