"""The chat-template T2I prompts of Harmon and OpenUni, pinned token by token.

Both adapters tokenise ``prefix + caption + suffix`` in context, mark caption tokens by character
overlap, cut over-long captions from the end while keeping the template, and right-pad. These
tests fix their exact outputs (word-level literals and a byte-level BPE like Qwen's), so the code
they share cannot drift from what each adapter produced when it was written.
"""

from __future__ import annotations

import pytest
import torch

from segros.backbones.harmon import text as harmon_text
from segros.backbones.openuni import text as openuni_text

WORDS = ["a", "red", "circle", "the", "blue", "square", "above", "green", "triangle"]
CAPTIONS = ["a red circle", " the blue square above a green triangle ", "circle"]


def _rows(out: dict[str, torch.Tensor]) -> dict[str, list[list[int]]]:
    return {k: v.int().tolist() for k, v in out.items()}


# harmon: <|im_start|> user Generate an image : | caption | <|im_end|> <|im_start|> assistant
HARMON_FULL = {
    "text_ids": [
        [1, 4, 6, 7, 8, 9, 19, 20, 21, 0, 1, 5, 0, 0, 0, 0],
        [1, 4, 6, 7, 8, 9, 22, 23, 24, 25, 19, 26, 27, 0, 1, 5],
        [1, 4, 6, 7, 8, 9, 21, 0, 1, 5, 0, 0, 0, 0, 0, 0],
    ],
    "text_mask": [[1] * 12 + [0] * 4, [1] * 16, [1] * 10 + [0] * 6],
    "caption_mask": [[0] * 6 + [1] * 3 + [0] * 7, [0] * 6 + [1] * 7 + [0] * 3, [0] * 6 + [1] + [0] * 9],
    "caption_stopword": [[0] * 6 + [1] + [0] * 9, [0] * 6 + [1, 0, 0, 1, 1] + [0] * 5, [0] * 16],
}
HARMON_CUT = {  # max_text_len 11: the two long captions keep their first two tokens
    "text_ids": [
        [1, 4, 6, 7, 8, 9, 19, 20, 0, 1, 5],
        [1, 4, 6, 7, 8, 9, 22, 23, 0, 1, 5],
        [1, 4, 6, 7, 8, 9, 21, 0, 1, 5, 0],
    ],  # fmt: skip
    "text_mask": [[1] * 11, [1] * 11, [1] * 10 + [0]],
    "caption_mask": [[0] * 6 + [1, 1] + [0] * 3, [0] * 6 + [1, 1] + [0] * 3, [0] * 6 + [1] + [0] * 4],
    "caption_stopword": [[0] * 6 + [1] + [0] * 4, [0] * 6 + [1] + [0] * 4, [0] * 11],
}
# openuni: the same template followed by <img> (id 3)
OPENUNI_FULL = {
    "text_ids": [
        [1, 7, 9, 10, 11, 12, 22, 23, 24, 0, 1, 8, 3, 0, 0, 0, 0],
        [1, 7, 9, 10, 11, 12, 25, 26, 27, 28, 22, 29, 30, 0, 1, 8, 3],
        [1, 7, 9, 10, 11, 12, 24, 0, 1, 8, 3, 0, 0, 0, 0, 0, 0],
    ],
    "text_mask": [[1] * 13 + [0] * 4, [1] * 17, [1] * 11 + [0] * 6],
    "caption_mask": [[0] * 6 + [1] * 3 + [0] * 8, [0] * 6 + [1] * 7 + [0] * 4, [0] * 6 + [1] + [0] * 10],
    "caption_stopword": [[0] * 6 + [1] + [0] * 10, [0] * 6 + [1, 0, 0, 1, 1] + [0] * 6, [0] * 17],
}
OPENUNI_CUT = {  # max_text_len 12
    "text_ids": [
        [1, 7, 9, 10, 11, 12, 22, 23, 0, 1, 8, 3],
        [1, 7, 9, 10, 11, 12, 25, 26, 0, 1, 8, 3],
        [1, 7, 9, 10, 11, 12, 24, 0, 1, 8, 3, 0],
    ],  # fmt: skip
    "text_mask": [[1] * 12, [1] * 12, [1] * 11 + [0]],
    "caption_mask": [[0] * 6 + [1, 1] + [0] * 4, [0] * 6 + [1, 1] + [0] * 4, [0] * 6 + [1] + [0] * 5],
    "caption_stopword": [[0] * 6 + [1] + [0] * 5, [0] * 6 + [1] + [0] * 5, [0] * 12],
}


@pytest.mark.parametrize(
    ("module", "full", "cut", "cut_len", "message"),
    [
        (harmon_text, HARMON_FULL, HARMON_CUT, 11, "the T2I template alone is longer than max_text_len=8"),
        (openuni_text, OPENUNI_FULL, OPENUNI_CUT, 12,
         "the OpenUni prompt template alone is longer than max_text_len=9"),
    ],
)  # fmt: skip
def test_word_level_prompts_token_by_token(tmp_path, module, full, cut, cut_len, message):
    tok = module.word_level_tokenizer(WORDS, tmp_path)
    assert _rows(module.encode_t2i(tok, CAPTIONS, 64)) == full
    assert _rows(module.encode_t2i(tok, CAPTIONS, cut_len)) == cut
    with pytest.raises(ValueError, match=f"^{message}$"):
        module.encode_t2i(tok, CAPTIONS, cut_len - 3)


def _byte_level_bpe(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>"]  # <|im_end|> is not id 0
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(corpus * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[2], pad_token=specials[2])


@pytest.mark.parametrize(("module", "pad"), [(harmon_text, 2), (openuni_text, 0)])
def test_byte_level_prompts_cut_only_the_captions_last_tokens(module, pad):
    captions = ["a red circle above the blue square", "the green triangle", " a blue circle "]
    tok = _byte_level_bpe([module.T2I_PREFIX + c + module.T2I_SUFFIX for c in captions])
    assert (module.pad_id(tok) if module is harmon_text else module.PAD_ID) == pad
    full = module.encode_t2i(tok, captions, 200)
    strip = module is openuni_text  # upstream's _process_text strips; Harmon's template does not
    for ids, real, valid, caption in zip(full["text_ids"], full["text_mask"], full["caption_mask"],
                                         captions, strict=True):  # fmt: skip
        assert tok.decode(ids[valid].tolist()).strip() == caption.strip()
        assert tok.decode(ids[real].tolist()) == module.T2I_PREFIX + (
            caption.strip() if strip else caption) + module.T2I_SUFFIX  # fmt: skip
        assert (ids[~real] == pad).all()
    n_caption = full["caption_mask"].sum(1)
    width = int(full["text_mask"].sum(1).max()) - 3
    cut = module.encode_t2i(tok, captions, width)
    for b in range(len(captions)):
        real = full["text_mask"][b]
        ids, valid, stop = (full[k][b][real] for k in ("text_ids", "caption_mask", "caption_stopword"))
        excess = max(0, len(ids) - width)
        drop = set(valid.nonzero().flatten().tolist()[len(valid.nonzero()) - excess :]) if excess else set()
        keep = torch.tensor([i not in drop for i in range(len(ids))])
        n = int(cut["text_mask"][b].sum())
        assert n == len(ids) - excess and int(cut["caption_mask"][b].sum()) == int(n_caption[b]) - excess
        assert torch.equal(cut["text_ids"][b][:n], ids[keep])
        assert torch.equal(cut["caption_mask"][b][:n], valid[keep])
        assert torch.equal(cut["caption_stopword"][b][:n], stop[keep])
        assert (cut["text_ids"][b][n:] == pad).all() and not cut["caption_mask"][b][n:].any()
