"""A tiny Show-o for tests: a word-level Phi-style tokenizer saved to a folder, and small sizes.

The tokenizer goes through the same ``AutoTokenizer.from_pretrained`` + ``extend_tokenizer`` path as
Phi-1.5 in real runs; the model uses the same classes as the published sizes, only smaller.
"""

from __future__ import annotations

from pathlib import Path

from segros.backbones.showo.adapter import ShowoBackbone, ShowoOptions
from segros.backbones.showo.text import word_level_tokenizer
from segros.data.shapes import vocabulary
from segros.data.sources import SHAPES_QUESTIONS

TINY_ARCH = {
    "showo": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    "magvit": {
        "ch": 8,
        "encoder_ch_mult": [1, 2, 2],
        "encoder_res_blocks": [1, 1, 1],
        "decoder_ch_mult": [1, 2, 2],
        "decoder_res_blocks": [1, 1, 1],
        "z_channels": 4,  # 16 codes
        "norm_groups": 4,
    },
}
TINY_CLIP = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32, "image_size": 56}


def save_word_tokenizer(folder: Path) -> Path:
    """The built-in ``shapes-words`` tokenizer (a WordLevel tokenizer over ShapesWorld's words with
    Phi-1.5's <|endoftext|> as bos and eos), saved as a tokenizer folder."""
    folder.mkdir(parents=True, exist_ok=True)
    word_level_tokenizer(vocabulary(), SHAPES_QUESTIONS).save_pretrained(str(folder))
    return folder


def tiny_options(tokenizer: Path, clip: bool = False, **changes) -> ShowoOptions:
    arch = {**TINY_ARCH, "clip": TINY_CLIP if clip else None}
    return ShowoOptions(
        init_from=None,
        tokenizer=str(tokenizer),
        arch=arch,
        image_size=32,
        max_text_len=16,
        generation_steps=4,
        guidance_scale=2.0,
        **changes,
    )


def tiny_backbone(tokenizer: Path, clip: bool = False, seed: int = 0, **changes) -> ShowoBackbone:
    import torch

    torch.manual_seed(seed)
    return ShowoBackbone.from_options(tiny_options(tokenizer, clip, **changes)).eval()
