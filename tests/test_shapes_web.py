"""ShapesWorld's web captions: vocabulary and lengths of the fine-tuning captions covered, the
configured rates measured from the caption text, determinism, and held-out compositions kept out."""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import pytest

from segros.data.shapes import (
    COLORS,
    NUMBERS,
    PLURALS,
    SHAPES,
    WEB_WORDS,
    ShapesWorld,
    WebNoise,
    is_held_out_pair,
    robust_relations,
    vocabulary,
    words,
)

WORLD = {"image_size": 48, "layout": "grid", "cells": 3}  # the shipped TinyUMM's world
SIZE_OR_PLACE = re.compile(r"\b(small|large|top|bottom|center|middle)\b|\bon the (left|right)\b(?! of)")
RELATION = re.compile(r"\b(left of|right of|above|below)\b")


@functools.lru_cache(maxsize=8)
def scenes(style: str, n: int, seed: int = 11, noise: WebNoise | None = None) -> list:
    world = ShapesWorld(seed=seed, caption_style=style, web_noise=noise, **WORLD)
    return [world.scene(i) for i in range(n)]


def within(measured: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    """``measured`` is a share of ``n`` draws whose expectation is ``expected`` (binomial noise)."""
    return abs(measured - expected) <= sigmas * math.sqrt(max(expected * (1 - expected), 1e-4) / n) + 1e-9


def test_every_word_and_length_of_the_fine_tuning_captions_occurs_in_web_captions():
    web = scenes("web", 4000)
    web_words = {w for s in web for w in words(s.caption)}
    mixed = ShapesWorld(seed=11, caption_style="mixed", **WORLD)
    assert set(mixed.vocabulary()) <= web_words  # every word the world's captions and prompts have
    assert web_words <= set(ShapesWorld(caption_style="web").vocabulary())
    assert set(ShapesWorld(caption_style="web").vocabulary()) == set(vocabulary()) | set(WEB_WORDS)
    fine_tuning_lengths = {len(words(s.caption)) for s in scenes("mixed", 2000)}
    web_lengths = {len(words(s.caption)) for s in web}
    assert fine_tuning_lengths <= web_lengths, sorted(fine_tuning_lengths - web_lengths)


def test_web_words_are_in_a_fresh_tinyumms_tokenizer():
    from segros.backbones.tiny.text import QUESTION_WORDS

    assert set(WEB_WORDS) <= set(vocabulary()) | set(QUESTION_WORDS)  # no <unk> when pretraining on web


NOISIER = WebNoise(detailed=0.6, omit=0.4, color=0.8, wrong=0.3, paraphrase=0.2)


@pytest.mark.parametrize("noise", [WebNoise(), NOISIER])
def test_stated_rates_hold_on_2000_scenes(noise):
    drawn = scenes("web", 2000, 12, noise)
    short = 1 - noise.detailed
    # the plain "a photo of" wording: short captions that were not paraphrased
    photo = sum("photo" in s.caption for s in drawn) / len(drawn)
    assert within(photo, short * (1 - noise.paraphrase), len(drawn))

    singles = [s for s in drawn if len(s.objects) == 1]
    color_words = [[w for w in words(s.caption) if w in COLORS] for s in singles]
    stated = [(s.objects[0].color, c[0]) for s, c in zip(singles, color_words, strict=True) if c]
    expected = noise.detailed * (1 - noise.omit / 3) + short * noise.color
    assert within(len(stated) / len(singles), expected, len(singles))
    assert within(sum(t != c for t, c in stated) / len(stated), noise.wrong, len(stated))
    detailed = sum(bool(SIZE_OR_PLACE.search(s.caption)) for s in singles) / len(singles)
    assert within(detailed, noise.detailed * (1 - (noise.omit / 3) ** 2), len(singles))

    counted = []  # one shape several times: a short caption counts it, or leaves the count out
    for s in drawn:
        if len(s.objects) >= 2 and len({o.shape for o in s.objects}) == 1:
            said = [w for w in words(s.caption) if w in ("two", "three", "four")]
            if said:
                counted.append(said[0] != NUMBERS[len(s.objects)])
    assert within(sum(counted) / len(counted), noise.wrong, len(counted))

    pairs = [s for s in drawn if len(s.objects) == 2 and s.objects[0].shape != s.objects[1].shape]
    one_named = [sum(o.shape in words(s.caption) for o in s.objects) == 1 for s in pairs]
    expected = short * noise.omit + noise.detailed * noise.omit / 3
    assert within(sum(one_named) / len(pairs), expected, len(pairs))

    wrong = []  # a stated relation between the two shapes: does it hold?
    for s in pairs:
        for m in RELATION.finditer(s.caption):
            before = [w for w in words(s.caption[: m.start()]) if w in SHAPES][-1:]
            after = [w for w in words(s.caption[m.end() :]) if w in SHAPES][:1]
            if before and after:
                a, b = (next(o for o in s.objects if o.shape == w) for w in (before[0], after[0]))
                wrong.append(m.group(1) not in robust_relations(a, b))
    assert len(wrong) > 50
    assert within(sum(wrong) / len(wrong), noise.wrong, len(wrong))


def test_zero_noise_states_only_true_facts_and_full_noise_names_one_group():
    exact = WebNoise(detailed=0.0, omit=0.0, color=1.0, relation=0.0, wrong=0.0, paraphrase=0.0)
    for s in scenes("web", 300, 13, exact):
        groups = {o.shape for o in s.objects}
        assert s.caption.startswith("a photo of ")
        assert all(o.shape in words(s.caption) or PLURALS[o.shape] in words(s.caption) for o in s.objects)
        if len({o.color for o in s.objects if o.shape == next(iter(groups))}) == 1 and len(groups) == 1:
            assert s.objects[0].color in words(s.caption)
    sparse = WebNoise(detailed=0.0, omit=1.0, color=0.0, relation=0.0)
    for s in scenes("web", 300, 13, sparse):
        named = {w for w in words(s.caption) if w in SHAPES or w in PLURALS.values()}
        assert len(named) == 1 and not set(words(s.caption)) & set(COLORS)


def test_web_captions_are_deterministic_per_seed_and_index():
    world = ShapesWorld(seed=5, caption_style="web", **WORLD)
    again = ShapesWorld(seed=5, caption_style="web", **WORLD)
    forward = [world.scene(i).caption for i in range(60)]
    assert [again.scene(i).caption for i in reversed(range(60))] == forward[::-1]
    other = ShapesWorld(seed=6, caption_style="web", **WORLD)
    assert [other.scene(i).caption for i in range(60)] != forward
    noisier = ShapesWorld(seed=5, caption_style="web", web_noise=WebNoise(wrong=0.5), **WORLD)
    assert [noisier.scene(i).caption for i in range(60)] != forward
    # the image does not depend on the caption style: the same scenes, other captions
    mixed = ShapesWorld(seed=5, caption_style="mixed", **WORLD)
    assert (mixed.scene(7).image == world.scene(7).image).all()


def test_web_captions_never_name_a_held_out_pairing():
    for s in scenes("web", 4000):
        ws = words(s.caption)
        for color, shape in zip(ws, ws[1:], strict=False):
            assert not is_held_out_pair(color, shape.removesuffix("es").removesuffix("s")), s.caption


def test_rates_are_validated_and_the_config_plumbs_them_into_the_world():
    with pytest.raises(ValueError, match="wrong"):
        WebNoise(wrong=1.5)
    from segros.data.sources import ShapesConversations, _shapes_args
    from segros.train.config import ConfigError, WebNoiseConfig, load_config

    assert WebNoiseConfig().model_dump() == dataclasses.asdict(WebNoise())  # one set of defaults
    cfg = load_config(None, ["data.shapes.caption_style=web", "data.shapes.web_noise.omit=0.6"])

    class Backbone:
        image_size, token_grid = 48, (3, 3)

    args, world = _shapes_args(cfg.data, Backbone())
    assert world["caption_style"] == "web" and world["web_noise"] == WebNoise(omit=0.6)
    conversations = ShapesConversations(*args, **world)
    assert conversations.scenes.world.web_noise == WebNoise(omit=0.6)
    for bad in ("data.shapes.web_noise.omit=-0.1", "data.shapes.web_noise.typo=0.1"):
        with pytest.raises(ConfigError, match=r"data\.shapes\.web_noise"):
            load_config(None, [bad])


def _wrong_relations(scene_list: list) -> tuple[int, int]:
    """(right, wrong) relations stated in captions of two-object scenes of two distinct shapes."""
    right = wrong = 0
    for s in scene_list:
        by_shape = {o.shape: o for o in s.objects}
        if len(s.objects) != 2 or len(by_shape) != 2:
            continue
        for a, rel, b in re.findall(
            r"(\w+) (?:is )?(?:on the )?(left of|right of|above|below) (?:a |an |the )?(?:\w+ )?(\w+)",
            s.caption,
        ):
            if a in by_shape and b in by_shape:
                ok = rel in robust_relations(by_shape[a], by_shape[b])
                right, wrong = right + ok, wrong + (not ok)
    return right, wrong


def test_an_aligned_share_mixes_in_the_fine_tuning_captions_and_zero_changes_nothing():
    """``aligned``: that share of captions is the fine-tuning's aligned ``mixed`` style (no web-only
    wording, no wrong fact); at 0 no draw is made, so the captions are those of the default rates
    exactly (the shipped model's recipe stays reproducible)."""
    n = 800
    plain = scenes("web", n)
    assert [s.caption for s in scenes("web", n, noise=WebNoise(aligned=0.0))] == [s.caption for s in plain]
    curated = scenes("web", n, noise=WebNoise(aligned=1.0))
    same = [[(o.shape, o.color, o.size) for o in s.objects] for s in curated]
    assert same == [[(o.shape, o.color, o.size) for o in s.objects] for s in plain]  # the same scenes
    mixed_words = set(ShapesWorld(caption_style="mixed").vocabulary())
    assert {w for s in curated for w in words(s.caption)} <= mixed_words
    assert not {w for s in plain for w in words(s.caption)} <= mixed_words  # web text has its own words
    right, wrong = _wrong_relations(curated)
    assert right > 50 and wrong == 0
    assert _wrong_relations(plain)[1] > 0  # the default web rates state some relations wrongly
    # at 0.5, captions with web-only words are half as common as at 0 (the draw shifts the rest)
    def web_only(scene_list: list) -> float:
        return sum(not set(words(s.caption)) <= mixed_words for s in scene_list) / len(scene_list)

    q = web_only(scenes("web", 2000, seed=12))
    half = web_only(scenes("web", 2000, seed=13, noise=WebNoise(aligned=0.5)))
    assert q > 0.2 and within(half, q / 2, 2000)
