"""Show-o's text: the Phi-1.5 tokenizer (or a built-in word-level one), the joint vocabulary, the
T2I prompt and the MMU (image-to-text) prompt.

Facts from upstream ``training/prompting_utils.py`` (Show-o commit 45a5a2de):

- The Phi-1.5 tokenizer gets ``[PAD]`` (``add_special_tokens``), then nine tokens in this order
  (``add_tokens``): soi, eoi, sov, eov, t2i, mmu, t2v, v2v, lvg. ``[PAD]`` therefore has id
  ``llm_vocab_size`` (50,295) and image code ``c`` has id ``c + llm_vocab_size + 10``; the mask token
  is the last id of the joint vocabulary.
- T2I (L39-90): ``[t2i, bos, caption..., eos]`` left-padded with ``[PAD]`` to ``max_text_len + 1``
  tokens (over-long captions are cut and eos re-appended), then ``[soi, N image tokens, eoi]``.
  The empty prompt of classifier-free guidance is ``[t2i, bos, eos]`` (an empty caption).
- MMU (L162-212): ``[mmu, soi, image tokens, eoi, bos, text..., eos]`` right-padded.

BOS and EOS are the same ``<|endoftext|>`` in Phi-1.5; the tokenizer does not add them itself.
Everything here is batched tensor code over already-tokenised lists.

The T2I prompt also marks caption tokens of English function words (``method.text_stopwords``,
:mod:`segros.stopwords`): a sub-word token is a stopword when the whole word it belongs to is, read
off the fast tokenizer's character offsets (a slow tokenizer: off its decoding).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from segros.backbones.hub import resolve_files
from segros.data import corpora
from segros.stopwords import token_stopwords

PAD_TOKEN = "[PAD]"
NEW_TOKENS = (
    "<|soi|>",
    "<|eoi|>",
    "<|sov|>",
    "<|eov|>",
    "<|t2i|>",
    "<|mmu|>",
    "<|t2v|>",
    "<|v2v|>",
    "<|lvg|>",
)
NUM_NEW_SPECIAL_TOKENS = 1 + len(NEW_TOKENS)  # 10 in upstream's YAML (num_new_special_tokens)


# --- the text tokenizer: Phi-1.5's (model.tokenizer), or a word-level one over a built-in corpus ---
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)


WORD_TOKENIZER = "shapes-words"  # model.tokenizer of tiny smoke runs: built in, no download
WORDS_SUFFIX = "-words"  # model.tokenizer "<corpus>-words": a word-level tokenizer over a built-in corpus


def word_level_tokenizer(words: Iterable[str], questions: Iterable[str] = ()) -> Any:
    """A word-level tokenizer over ``words`` and the words of ``questions`` (a corpus's captions
    and image-to-text questions) with Phi-1.5's ``<|endoftext|>`` as bos and eos: the
    ``AutoTokenizer`` path of the real one, no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {w for q in questions for w in q.split()} | set(words)
    vocabulary |= {"user", "assistant", ":", "what", "is", "this", ".", ","}
    vocab = {"<|endoftext|>": 0, "[UNK]": 1}
    for w in sorted(vocabulary):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="[UNK]",
        padding_side="left",
    )  # fmt: skip


def word_corpus(source: str) -> str | None:
    """The corpus a ``model.tokenizer`` of the form ``<corpus>-words`` names (``shapes-words``:
    ``shapes``), or None for a hub id or folder."""
    name = source.removesuffix(WORDS_SUFFIX)
    return name if source.endswith(WORDS_SUFFIX) and name in corpora.CORPORA else None


def load_tokenizer(source: str) -> Any:
    """The Phi-1.5 text tokenizer (``model.tokenizer``), left padding as upstream sets it;
    ``<corpus>-words`` (``shapes-words``): :func:`word_level_tokenizer` over that corpus."""
    from transformers import AutoTokenizer

    if corpus := word_corpus(source):
        return word_level_tokenizer(corpora.words(corpus), corpora.questions(corpus))
    files = resolve_files(
        source, ["tokenizer_config.json"], "Phi-1.5 tokenizer", "model.tokenizer", optional=TOKENIZER_FILES
    )
    return AutoTokenizer.from_pretrained(str(files["tokenizer_config.json"].parent), padding_side="left")


def extend_tokenizer(tokenizer: Any) -> Any:
    """Add ``[PAD]`` and the nine Show-o tokens in upstream order (no-op if already added)."""
    vocab = tokenizer.get_vocab()
    if PAD_TOKEN not in vocab:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    elif tokenizer.pad_token != PAD_TOKEN:
        tokenizer.pad_token = PAD_TOKEN
    missing = [t for t in NEW_TOKENS if t not in tokenizer.get_vocab()]
    if missing and len(missing) != len(NEW_TOKENS):
        raise ValueError(f"tokenizer has some Show-o tokens but lacks {missing}")
    if missing:
        tokenizer.add_tokens(list(NEW_TOKENS))
    return tokenizer


@dataclass(frozen=True)
class Vocab:
    """Ids of the joint vocabulary (text | 10 new tokens | codes | mask)."""

    llm_vocab_size: int  # text tokens of the base tokenizer (50,295 for Phi-1.5)
    codebook_size: int
    bos: int
    eos: int
    pad: int
    soi: int
    eoi: int
    t2i: int
    mmu: int

    @property
    def code_offset(self) -> int:
        return self.llm_vocab_size + NUM_NEW_SPECIAL_TOKENS

    @property
    def mask(self) -> int:
        return self.code_offset + self.codebook_size

    @property
    def size(self) -> int:
        return self.mask + 1

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, codebook_size: int) -> Vocab:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD_TOKEN, *NEW_TOKENS)}
        llm = ids[PAD_TOKEN]
        expected = {t: llm + i for i, t in enumerate((PAD_TOKEN, *NEW_TOKENS))}
        if ids != expected or len(tokenizer) != llm + NUM_NEW_SPECIAL_TOKENS:
            raise ValueError(
                f"tokenizer does not follow Show-o's layout ([PAD] then {', '.join(NEW_TOKENS)} appended "
                f"last): got ids {ids} with {len(tokenizer)} tokens"
            )
        bos = tokenizer.bos_token_id
        eos = tokenizer.eos_token_id
        if bos is None or eos is None:
            raise ValueError("the text tokenizer needs bos and eos tokens (Phi-1.5: <|endoftext|>)")
        return cls(
            llm_vocab_size=llm,
            codebook_size=codebook_size,
            bos=bos,
            eos=eos,
            pad=llm,
            soi=ids["<|soi|>"],
            eoi=ids["<|eoi|>"],
            t2i=ids["<|t2i|>"],
            mmu=ids["<|mmu|>"],
        )


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, with no special tokens added."""
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def tokenize_captions(tokenizer: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[list[bool]]]:
    """Token ids of each text (no special tokens added, as :func:`tokenize`) and, per token, whether
    the whole word it belongs to is an English function word (:func:`segros.stopwords.token_stopwords`).

    A fast tokenizer gives the character offsets directly. A slow one (no offsets) is read off its
    decoding: token ``k`` spans the characters its id adds to the decoded prefix ``ids[:k]``, so the
    leading-space marker of byte-level BPE / SentencePiece pieces separates the words.
    """
    ids_rows, stop_rows = [], []
    for text in texts:
        if getattr(tokenizer, "is_fast", False):
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        else:
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            text = tokenizer.decode(ids)
            ends = [len(tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]
            offsets = [(min(a, b), b) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        ids_rows.append(ids)
        stop_rows.append(token_stopwords(text, offsets))
    return ids_rows, stop_rows


def _pad(rows: Sequence[Sequence[int]], length: int, pad: int, left: bool) -> torch.Tensor:
    out = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, row in enumerate(rows):  # collation of ragged lists (CPU, once per batch)
        if row:
            r = torch.as_tensor(row, dtype=torch.long)
            if left:
                out[i, length - len(r) :] = r
            else:
                out[i, : len(r)] = r
    return out


def t2i_prompt(
    tokenizer: Any, vocab: Vocab, captions: Sequence[str], max_text_len: int
) -> dict[str, torch.Tensor]:
    """The text block of Show-o's T2I sequence, ``(B, max_text_len + 1)``, left-padded.

    Returns ``ids``, ``mask`` (True at non-pad tokens), ``caption`` (True only at caption tokens:
    not t2i, bos, eos or padding; what grounding may use) and ``stopword`` (True at the caption
    tokens of English function words; False everywhere else, see :func:`tokenize_captions`).
    """
    length = max_text_len + 1
    rows, caption_rows, stop_rows = [], [], []
    for text, stop in zip(*tokenize_captions(tokenizer, captions), strict=True):
        if text and text[0] == vocab.bos:
            text, stop = text[1:], stop[1:]
        row = [vocab.t2i, vocab.bos, *text, vocab.eos]
        if len(row) > length:  # upstream: cut to max_text_len + 1 - 1 tokens, re-append eos
            row = [*row[: length - 1], vocab.eos]
        rows.append(row)
        n = len(row) - 3  # caption tokens kept
        caption_rows.append([0, 0, *([1] * n), 0])
        stop_rows.append([0, 0, *(int(f) for f in stop[:n]), 0])
    ids = _pad(rows, length, vocab.pad, left=True)
    caption = _pad(caption_rows, length, 0, left=True).bool()
    stopword = _pad(stop_rows, length, 0, left=True).bool()
    return {"ids": ids, "mask": ids != vocab.pad, "caption": caption, "stopword": stopword}


def empty_prompt(vocab: Vocab, batch_size: int, length: int, device: torch.device) -> torch.Tensor:
    """``[PAD ..., t2i, bos, eos]``: the null condition of classifier-free guidance (B, length)."""
    ids = torch.full((batch_size, length), vocab.pad, dtype=torch.long, device=device)
    ids[:, -3:] = torch.tensor([vocab.t2i, vocab.bos, vocab.eos], device=device)
    return ids


# The LLaVA first turn in the phi1.5 conversation template (upstream llava/llava/conversation.py
# L395-404: roles USER / ASSISTANT, separator " ").
def chat_turn(question: str) -> str:
    return f"USER: {question} ASSISTANT:"


def mmu_text(
    tokenizer: Any, vocab: Vocab, turns: Sequence[tuple[str, str]], max_text_len: int
) -> dict[str, torch.Tensor]:
    """The text part of an MMU sequence, ``[bos, USER: q ASSISTANT:, answer..., eos]`` right-padded.

    Returns ``ids``, ``mask`` (non-pad) and ``answer`` (True at answer tokens and the closing eos, the
    tokens that receive the image-to-text loss; the question template never does).
    """
    questions = tokenize(tokenizer, [chat_turn(q) for q, _ in turns])
    answers = tokenize(tokenizer, [" " + a for _, a in turns])
    rows, answer_rows = [], []
    for q, a in zip(questions, answers, strict=True):
        room = max_text_len - 3 - len(q)
        if room < 1:  # keep at least one answer token: cut the question instead
            q, room = q[: max(0, max_text_len - 4)], 1
        a = a[:room]
        rows.append([vocab.bos, *q, *a, vocab.eos])
        answer_rows.append([0] * (1 + len(q)) + [1] * (len(a) + 1))
    length = max(len(r) for r in rows)
    ids = _pad(rows, length, vocab.pad, left=False)
    answer = _pad(answer_rows, length, 0, left=False).bool()
    return {"ids": ids, "mask": ids != vocab.pad, "answer": answer}
