"""TinyUMM's text tokenizer: a closed word-level vocabulary.

Why word-level and not a subword tokenizer from a PyPI package: TinyUMM lives in ShapesWorld,
whose captions use a few dozen words. A 30k-entry WordPiece table would make the shared
text+code embedding table (which the grounding map reads, as in Show-o) a hundred times larger
than the model, and would split nothing that matters here. Words outside the vocabulary map to
``<unk>`` and are counted, so captions from other data are not silently garbled; the vocabulary
is saved with every checkpoint so a run is reproducible from its folder alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

PAD, BOS, EOS, UNK, SEP = "<pad>", "<bos>", "<eos>", "<unk>", "<sep>"
SPECIALS = (PAD, BOS, EOS, UNK, SEP)
WORD = re.compile(r"[a-z]+|[0-9]+")
# Words of the image-to-text questions, on top of the corpus's words (model.corpus).
QUESTION_WORDS = "what is shown describe this picture image how many are there where which color".split()


class WordTokenizer:
    """Maps lower-cased words to ids; ids 0..4 are the special tokens."""

    def __init__(self, words: Iterable[str]) -> None:
        vocab = list(SPECIALS)
        seen = set(vocab)
        for word in words:
            if not WORD.fullmatch(word):
                raise ValueError(f"vocabulary word {word!r} is not a lower-case word or number")
            if word not in seen:
                vocab.append(word)
                seen.add(word)
        self.vocab = vocab
        self.ids = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.bos_id, self.eos_id = self.ids[PAD], self.ids[BOS], self.ids[EOS]
        self.unk_id, self.sep_id = self.ids[UNK], self.ids[SEP]
        self.unknown_words = 0  # running count of words mapped to <unk>

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def words(self) -> list[str]:
        """The non-special vocabulary, in id order (what the constructor takes)."""
        return self.vocab[len(SPECIALS) :]

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` (no BOS/EOS)."""
        ids = [self.ids.get(w, self.unk_id) for w in WORD.findall(text.lower())]
        self.unknown_words += sum(i == self.unk_id for i in ids)
        return ids

    def stopword_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: True at ids of English function words (:mod:`segros.stopwords`)."""
        from segros.stopwords import is_stopword

        if not hasattr(self, "_stop_table"):
            self._stop_table = torch.tensor([is_stopword(w) for w in self.vocab], dtype=torch.bool)
        return self._stop_table.to(ids.device)[ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids, skipping special tokens."""
        return " ".join(self.vocab[i] for i in ids if i >= len(SPECIALS))

    def batch(self, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
        """``<bos> words <eos>`` per text, right-padded to the batch's longest (at most max_len).

        Returns ``ids`` (B, T) long, ``mask`` (B, T) bool at real tokens, and ``caption`` (B, T)
        bool at the caption words only (what the grounding map may read).
        """
        rows = [[self.bos_id, *self.encode(t)[: max_len - 2], self.eos_id] for t in texts]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row)
        mask = ids != self.pad_id
        caption = mask & (ids != self.bos_id) & (ids != self.eos_id)
        return {"ids": ids, "mask": mask, "caption": caption}

    def question_answer(self, pairs: Sequence[tuple[str, str]], max_len: int) -> dict[str, torch.Tensor]:
        """``<bos> question <sep> answer <eos>``; ``answer`` (B, T) marks answer tokens and EOS."""
        rows, starts = [], []
        for question, answer in pairs:
            q = [self.bos_id, *self.encode(question), self.sep_id][: max_len // 2]
            a = [*self.encode(answer), self.eos_id][: max_len - len(q)]
            rows.append(q + a)
            starts.append(len(q))
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        answer = torch.zeros(len(rows), T, dtype=torch.bool)
        for b, (row, start) in enumerate(zip(rows, starts, strict=True)):
            ids[b, : len(row)] = torch.tensor(row)
            answer[b, start : len(row)] = True
        return {"ids": ids, "mask": ids != self.pad_id, "answer": answer}
