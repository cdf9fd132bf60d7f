"""Harmon's text: the Qwen2.5 tokenizer (or a built-in word-level one) and its chat prompts,
tokenised with caption masks (docs/upstream/harmon.md section 5).

Text-to-image prompts are ``<|im_start|>user\\nGenerate an image: {caption}<|im_end|>\\n
<|im_start|>assistant\\n``; the classifier-free-guidance prompt is the same template around
``Generate an image.``. Image-to-text samples are ``<|im_start|>user\\n<image>\\n{question}
<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>`` with ``<image>`` expanded to every image
token plus the buffers. Batches are right-padded with ``<|im_end|>`` as upstream's collate does.

Grounding reads only *caption* tokens: a token is a caption token when its character span
overlaps the caption (offset mapping of a fast tokenizer), so the template, "Generate an image:",
special tokens and padding are never valid, and the caption is tokenised in context exactly as
the model sees it. Over-long captions lose their last tokens; the template is never cut (the
shared :mod:`segros.backbones.prompts`).
``caption_stopword`` marks the caption tokens of English function words (``method.text_stopwords``):
a sub-word token is one when the whole caption word it belongs to is (the same offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segros.backbones import prompts
from segros.backbones.hub import resolve_files
from segros.backbones.prompts import encode_captions, right_pad

QWEN_TOKENIZERS = {"0.5b": "Qwen/Qwen2.5-0.5B-Instruct", "1.5b": "Qwen/Qwen2.5-1.5B-Instruct"}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]

USER, ASSISTANT, END = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"
T2I_PREFIX = USER + "Generate an image: "
T2I_SUFFIX = END + "\n" + ASSISTANT
NULL_PROMPT = USER + "Generate an image." + T2I_SUFFIX


def pad_id(tokenizer: Any) -> int:
    return int(tokenizer.convert_tokens_to_ids(END))


def encode_t2i(tokenizer: Any, captions: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """``text_ids`` / ``text_mask`` / ``caption_mask`` / ``caption_stopword`` (B, T) for the T2I
    prompt of each caption (``caption_stopword``: True at caption tokens of function words)."""
    return encode_captions(tokenizer, captions, T2I_PREFIX, T2I_SUFFIX, max_len, pad_id(tokenizer))


def encode_null(tokenizer: Any) -> list[int]:
    """Token ids of the classifier-free-guidance prompt."""
    return list(tokenizer(NULL_PROMPT, add_special_tokens=True)["input_ids"])


def encode_i2t(tokenizer: Any, turns: Sequence[tuple[str, str]], max_len: int) -> dict[str, Any]:
    """The I2T prompt split around the image: constant ``prefix_ids`` (user header) and, per
    sample, ``tail_ids`` / ``tail_mask`` / ``answer_mask`` (B, T) for question, header and answer
    (the answer's closing ``<|im_end|>`` is supervised, as upstream)."""
    prefix = list(tokenizer(USER, add_special_tokens=True)["input_ids"])
    rows, answers = [], []
    for question, answer in turns:
        head = list(tokenizer("\n" + question + T2I_SUFFIX, add_special_tokens=False)["input_ids"])
        ans = list(tokenizer(answer + END, add_special_tokens=False)["input_ids"])
        ids = (head + ans)[:max_len]
        rows.append(ids)
        answers.append([False] * len(head) + [True] * (len(ids) - len(head)))
    return {
        "prefix_ids": torch.tensor(prefix, dtype=torch.long),
        "tail_ids": right_pad(rows, pad_id(tokenizer)),
        "tail_mask": right_pad([[True] * len(r) for r in rows], False),
        "answer_mask": right_pad(answers, False),
    }


def word_level_tokenizer(words: Sequence[str], folder: str | Path | None = None) -> Any:
    """A small fast word-level tokenizer with Qwen's chat specials, saved to ``folder`` if given.

    For tests and CPU smoke runs of the tiny configuration: the same ``AutoTokenizer`` code path
    as the real Qwen tokenizer, with no download. Template words are always in the vocabulary.
    """
    return prompts.word_level_tokenizer([END, "<|im_start|>", "<|endoftext|>", "[UNK]"], words, folder)


def load_tokenizer(source: str | None, size: str = "tiny", words: Sequence[str] | None = None) -> Any:
    """``AutoTokenizer`` from a folder or hub id (files looked up through :func:`resolve_files`);
    with no source, for ``tiny``, a word-level tokenizer over ``words`` (smoke runs, no download)."""
    from transformers import AutoTokenizer

    if not source:
        if size == "tiny" and words is not None:
            return word_level_tokenizer(words)
        raise ValueError(f"model.tokenizer is required for size {size!r} (a folder with tokenizer.json)")
    files = resolve_files(source, TOKENIZER_FILES, "Qwen tokenizer", "model.tokenizer",
                          optional=["vocab.json", "merges.txt", "special_tokens_map.json"])  # fmt: skip
    return AutoTokenizer.from_pretrained(str(files["tokenizer.json"].parent))
