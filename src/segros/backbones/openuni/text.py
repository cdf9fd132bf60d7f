"""OpenUni's text: the InternVL3 tokenizer (or a built-in word-level one) and its prompts,
tokenised with caption masks (docs/upstream/openuni.md section 3).

Text-to-image: ``<|im_start|>user\\nGenerate an image: {caption}<|im_end|>\\n<|im_start|>assistant\\n<img>``
(upstream's ``INSTRUCTION`` around ``GENERATION``, then ``IMG_START_TOKEN``); the classifier-free
guidance prompt is the same around ``Generate an image.``. No system prompt, right padding, and
the learnable queries follow the padded prompt. Image-to-text (the frozen MLLM's own task, for
the contract's I2T term) puts ``<img>`` + the image tokens + ``</img>`` before the question, as
InternVL's chat format does.

Grounding reads caption tokens only: a token is a caption token when its character span
overlaps the caption (offsets of a fast tokenizer), so the template, ``<img>`` and padding are
never valid. Over-long prompts lose caption tokens from the end and keep the template, as
Harmon's (:mod:`segros.backbones.prompts`); upstream truncates the whole prompt to its first 128
tokens, losing the template's tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segros.backbones import prompts
from segros.backbones.hub import resolve_files
from segros.backbones.openuni.model import RELEASES
from segros.backbones.prompts import encode_captions, right_pad

USER, ASSISTANT, END = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
T2I_PREFIX = USER + "Generate an image: "
T2I_SUFFIX = END + "\n" + ASSISTANT + IMG_START
NULL_PROMPT = USER + "Generate an image." + END + "\n" + ASSISTANT + IMG_START
PAD_ID = 0  # upstream's collate pads with 0 (masked, so never read)


def encode_t2i(tokenizer: Any, captions: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """``text_ids`` / ``text_mask`` / ``caption_mask`` / ``caption_stopword`` (B, T) of the
    text-to-image prompt of each caption (stripped, as upstream's ``_process_text``)."""
    stripped = [c.strip() for c in captions]
    return encode_captions(
        tokenizer, stripped, T2I_PREFIX, T2I_SUFFIX, max_len, PAD_ID, "the OpenUni prompt template"
    )


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


def word_level_tokenizer(words: Sequence[str], folder: str | Path | None = None) -> Any:
    """A small fast word-level tokenizer with InternVL3's chat and image specials.

    For tests and CPU smoke runs of the tiny configuration: the ``AutoTokenizer`` code path of the
    real tokenizer (offsets, added specials) with no download. Saved to ``folder`` when given.
    """
    return prompts.word_level_tokenizer(SPECIALS, words, folder)


# --- the tokenizer (model.tokenizer) ---------------------------------------------------------------
TOKENIZER_OPTIONAL = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
]


def load_tokenizer(source: str | None, size: str, words: Sequence[str] | None = None) -> Any:
    """The InternVL3 tokenizer (``AutoTokenizer`` from a folder or hub id), or for ``tiny`` without
    one a word-level tokenizer over ``words`` (no download)."""
    from transformers import AutoTokenizer

    if not source:
        if size != "tiny":
            source = RELEASES[size]["mllm"]
        elif words is None:
            raise ValueError("model.tokenizer is required for size 'tiny' without a word list")
        else:
            return word_level_tokenizer(words)
    if not Path(source).expanduser().is_dir():
        found = resolve_files(source, ["tokenizer_config.json"], "InternVL3 tokenizer", "model.tokenizer",
                              optional=TOKENIZER_OPTIONAL)  # fmt: skip
        source = str(found["tokenizer_config.json"].parent)
    return AutoTokenizer.from_pretrained(str(Path(source).expanduser()))
