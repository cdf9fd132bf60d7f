"""BAGEL's prompts, tokenised with caption masks (docs/upstream/bagel.md sections 3 and 5).

BAGEL puts no chat template around a caption: a text split is ``<|im_start|>`` + the caption's
tokens + ``<|im_end|>``, in training and at inference alike, and the unconditional prompt of
classifier-free guidance is no text at all (caption dropout drops the whole split). Image-to-text
samples are a ViT image split followed by the question and the answer, each its own
``<|im_start|> ... <|im_end|>`` split; the answer's tokens and its closing ``<|im_end|>`` carry
the loss. Caption masks, stopwords and cutting over-long captions are the shared
:mod:`segros.backbones.prompts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segros.backbones import prompts
from segros.backbones.prompts import encode_captions, right_pad

BOS, EOS = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
SPECIALS = [EOS, BOS, VISION_START, VISION_END, "<|endoftext|>", "[UNK]"]

# RecA trains BAGEL to reconstruct an image from its ViT tokens plus a text split holding one
# instruction drawn per sample from a fixed list (364 entries in RecA's repository; docs/upstream/
# bagel.md section 6), never the caption. These are ours, in the styles that list uses (inventory,
# short label, imperative, question); ``model.recon_prompts: FILE`` reads RecA's own list instead.
RECON_PROMPTS = (
    "Describe this picture in full detail.",
    "Write a detailed caption for this image.",
    "What does this image show?",
    "Tell me about everything that is visible in this photo.",
    "List the objects in the image with their colors, sizes and places.",
    "Details: objects, colors, shapes, sizes, counts, positions, background.",
    "Explain what is in the picture and where each thing is.",
    "Give a complete account of the scene, its style and its layout.",
)


def recon_prompts(source: str | None) -> tuple[str, ...]:
    """The reconstruction instructions of ``model.recon_prompts``: ``builtin`` (:data:`RECON_PROMPTS`),
    ``none`` / None (no text: the caption-less prompt of the other backbones) or a UTF-8 text file,
    one instruction per line (blank lines skipped)."""
    if source in (None, "none"):
        return ()
    if source == "builtin":
        return RECON_PROMPTS
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.recon_prompts: {source} is not a file (or use builtin / none)")
    lines = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not lines:
        raise ValueError(f"model.recon_prompts: {source} holds no instruction (one per line)")
    return lines


def special_ids(tokenizer: Any) -> dict[str, int]:
    """The ids of the four tokens BAGEL adds when the tokenizer lacks them (upstream's
    ``add_special_tokens``): bos, eos, vision start and end."""
    names = {"bos": BOS, "eos": EOS, "start": VISION_START, "end": VISION_END}
    return {k: int(tokenizer.convert_tokens_to_ids(v)) for k, v in names.items()}


def add_special_tokens(tokenizer: Any) -> Any:
    """The tokenizer with BAGEL's four special tokens added where missing (as upstream does)."""
    missing = [t for t in (BOS, EOS, VISION_START, VISION_END) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    return tokenizer


def encode_t2i(tokenizer: Any, captions: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """``text_ids`` / ``text_mask`` / ``caption_mask`` / ``caption_stopword`` (B, T) of each
    caption as a text split, right-padded with ``<|im_end|>``."""
    return encode_captions(tokenizer, captions, BOS, EOS, max_len, pad_id(tokenizer), "BAGEL's text split")


def encode_i2t(tokenizer: Any, turns: Sequence[tuple[str, str]], max_len: int) -> dict[str, torch.Tensor]:
    """``text_ids`` / ``text_mask`` / ``answer_mask`` (B, T) of question and answer splits."""
    rows, answers = [], []
    for question, answer in turns:
        head = list(tokenizer(BOS + question + EOS + BOS, add_special_tokens=False)["input_ids"])
        tail = list(tokenizer(answer + EOS, add_special_tokens=False)["input_ids"])
        ids = (head + tail)[:max_len]
        rows.append(ids)
        answers.append([False] * min(len(head), len(ids)) + [True] * max(0, len(ids) - len(head)))
    return {
        "text_ids": right_pad(rows, pad_id(tokenizer)),
        "text_mask": right_pad([[True] * len(r) for r in rows], False),
        "answer_mask": right_pad(answers, False),
    }


def pad_id(tokenizer: Any) -> int:
    return int(tokenizer.convert_tokens_to_ids(EOS))


def word_level_tokenizer(words: Sequence[str], folder: str | Path | None = None) -> Any:
    """A small fast word-level tokenizer with BAGEL's specials, for tiny CPU runs (no download)."""
    return prompts.word_level_tokenizer(SPECIALS, words, folder)


def load_tokenizer(source: str | Path) -> Any:
    """``AutoTokenizer`` of a folder (the published folder holds Qwen2's tokenizer files), with
    BAGEL's specials added where missing."""
    from transformers import AutoTokenizer

    return add_special_tokens(AutoTokenizer.from_pretrained(str(Path(source).expanduser())))
