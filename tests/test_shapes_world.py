"""ShapesWorld: determinism, ground truth, captions, vocabulary, prompt set and held-out list."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from segros.data.shapes import (
    BACKGROUND,
    HELD_OUT_PAIRS,
    HELD_OUT_RELATIONS,
    PALETTE,
    PLURALS,
    SHAPES,
    ShapeObject,
    ShapesWorld,
    UnsupportedPromptError,
    is_held_out_pair,
    is_held_out_relation,
    render_prompt,
    vocabulary,
    words,
)
from segros.data.shapes_prompts import build_prompts, default_prompts_path, load_prompts
from segros.eval.geneval import COLORS, RELATIONS, TAGS, relative_position


def test_palette_is_genevals_ten_colours_and_background_is_none_of_them():
    assert list(PALETTE) == list(COLORS)
    assert len(set(PALETTE.values())) == 10
    assert BACKGROUND not in PALETTE.values()
    assert len(SHAPES) >= 5


@pytest.mark.parametrize("size", [32, 64])
def test_same_seed_same_bytes_and_random_access(size):
    a, b = ShapesWorld(image_size=size, seed=7), ShapesWorld(image_size=size, seed=7)
    streamed = list(itertools.islice(iter(a), 5))
    for i, scene in enumerate(streamed):
        again = b.scene(i)
        assert scene.image.tobytes() == again.image.tobytes()
        assert scene.caption == again.caption
        assert [o.to_json() for o in scene.objects] == [o.to_json() for o in again.objects]
    other = ShapesWorld(image_size=size, seed=8)
    assert any(other.scene(i).image.tobytes() != streamed[i].image.tobytes() for i in range(5))


@pytest.mark.parametrize("size", [32, 64])
def test_ground_truth_matches_pixels(size):
    world = ShapesWorld(image_size=size, seed=3)
    counts = set()
    for i in range(200):
        scene = world.scene(i)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.objects) <= 4
        counts.add(len(scene.objects))
        covered = np.zeros((size, size), dtype=int)
        for obj in scene.objects:
            covered += obj.mask
            ys, xs = np.nonzero(obj.mask)
            assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight, exclusive
            assert (scene.image[obj.mask] == PALETTE[obj.color]).all()
            rebuilt = ShapeObject.from_json(json.loads(json.dumps(obj.to_json())), size)
            assert (rebuilt.mask == obj.mask).all()
        assert covered.max() == 1, "objects overlap"
        assert (scene.image[covered == 0] == BACKGROUND).all()
    assert counts == {1, 2, 3, 4}


def test_two_sizes_are_used():
    world = ShapesWorld(seed=1)
    sizes = {o.size for i in range(100) for o in world.scene(i).objects}
    assert sizes == {"small", "large"}


def test_captions_use_only_the_vocabulary_and_vary():
    vocab = set(ShapesWorld().vocabulary())
    assert vocab == set(vocabulary()) and ShapesWorld().vocabulary() == sorted(vocab)
    distinct = {}
    for style in ("geneval", "dense", "mixed"):
        world = ShapesWorld(seed=2, caption_style=style)
        captions = [world.scene(i).caption for i in range(150)]
        for caption in captions:
            assert set(words(caption)) <= vocab, caption
        distinct[style] = len(set(captions))
    assert distinct["dense"] >= 140 and distinct["geneval"] >= 60 and distinct["mixed"] >= 100, distinct
    dense = " ".join(ShapesWorld(seed=2, caption_style="dense").scene(i).caption for i in range(150))
    for word in ("small", "large", "top", "center", "left", "is"):  # sizes, places, relations
        assert f" {word} " in dense
    for record in load_prompts():
        assert set(words(record["prompt"])) <= vocab


def test_geneval_style_position_captions_hold_under_the_relation_test():
    world = ShapesWorld(seed=5, caption_style="geneval")
    noun = r"an? (?:(\w+) )?(\w+)"
    pattern = re.compile(rf"a photo of {noun} (left of|right of|above|below) {noun}$")
    checked = 0
    for i in range(400):
        scene = world.scene(i)
        match = pattern.match(scene.caption)
        if not match:
            continue
        _, shape_a, rel, _, shape_b = match.groups()
        a, b = scene.objects
        assert (a.shape, b.shape) == (shape_a, shape_b)
        assert relative_position(a.box, b.box) == {rel}
        checked += 1
    assert checked >= 20


def test_held_out_compositions_never_occur_in_10000_training_samples():
    world = ShapesWorld(seed=0)
    pair_words = {f"{c} {s}" for c, s in HELD_OUT_PAIRS}
    held_pairs = {(a, b) for a, _, b in HELD_OUT_RELATIONS} | {(b, a) for a, _, b in HELD_OUT_RELATIONS}
    seen_relations = set()
    for i in range(10_000):
        scene = world.scene(i)
        for obj in scene.objects:
            assert not is_held_out_pair(obj.color, obj.shape), (i, obj)
        for a, b in itertools.permutations(scene.objects, 2):
            if i < 2000 or (a.shape, b.shape) in held_pairs:
                for rel in relative_position(a.box, b.box):
                    assert not is_held_out_relation(a.shape, rel, b.shape), (i, a, rel, b)
                    seen_relations.add((a.shape, rel, b.shape))
        text = " ".join(words(scene.caption))
        assert not any(p in text for p in pair_words), scene.caption
    # the constraint is not vacuous: every other ordered shape pair occurs in every relation
    others = {(a, r, b) for a, b in itertools.permutations(SHAPES, 2) for r in RELATIONS}
    others -= {f for f in others if is_held_out_relation(*f)}
    assert others <= seen_relations


def test_without_exclusion_held_out_pairs_do_appear():
    world = ShapesWorld(seed=0, exclude_held_out=False)
    pairs = {(o.color, o.shape) for i in range(1000) for o in world.scene(i).objects}
    assert pairs >= HELD_OUT_PAIRS


def test_prompt_set_is_genevals_format_and_marks_held_out():
    records = load_prompts()
    assert records == build_prompts(), "shipped JSONL is stale: python -m segros.data.shapes_prompts"
    assert default_prompts_path().name == "shapes_eval_prompts.jsonl"
    assert len(records) >= 300 and len({r["prompt"] for r in records}) == len(records)
    assert {r["tag"] for r in records} == set(TAGS)
    for r in records:
        assert set(r) <= {"tag", "include", "exclude", "prompt", "held_out"}
        for item in r["include"]:
            assert item["class"] in SHAPES and item["count"] >= 1
            assert item.get("color", "red") in COLORS
            if "position" in item:
                rel, idx = item["position"]
                assert rel in RELATIONS and 0 <= idx < len(r["include"])
        if r["tag"] == "counting":
            item = r["include"][0]
            assert r["exclude"] == [{"class": item["class"], "count": item["count"] + 1}]
    colour_pairs = {
        (i["color"], i["class"]) for r in records if r["held_out"] for i in r["include"] if "color" in i
    }
    assert colour_pairs >= HELD_OUT_PAIRS
    held_positions = [r for r in records if r["tag"] == "position" and r["held_out"]]
    assert len(held_positions) == 2 * len(HELD_OUT_RELATIONS)
    plain = ("single_object", "two_object", "counting")
    assert all(r["held_out"] is False for r in records if r["tag"] in plain)


@pytest.mark.parametrize("size", [32, 64])
def test_render_prompt_draws_exactly_what_is_asked(size):
    for i, record in enumerate(load_prompts()):
        scene = render_prompt(record, np.random.default_rng([0, i]), size)
        assert scene.caption == record["prompt"]
        assert len(scene.objects) == sum(item["count"] for item in record["include"])
        for item in record["include"]:
            mine = [o for o in scene.objects if o.shape == item["class"]]
            assert len(mine) >= item["count"]
            if "color" in item:
                assert all(o.color == item["color"] for o in mine)
            if "position" in item:
                rel, idx = item["position"]
                target = scene.objects[0]  # the referenced item is drawn first
                assert target.shape == record["include"][idx]["class"]
                assert rel in relative_position(mine[0].box, target.box)


def test_render_prompt_rejects_classes_it_cannot_draw():
    with pytest.raises(UnsupportedPromptError):
        render_prompt(
            {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "x"},
            np.random.default_rng(0),
        )


def test_dense_caption_relations_hold_under_the_relation_test():
    world = ShapesWorld(seed=6, caption_style="dense")
    sentence = re.compile(r"the (\w+) (\w+) is (left of|right of|above|below) the (\w+) (\w+)")
    checked = 0
    for i in range(300):
        scene = world.scene(i)
        for ca, sa, rel, cb, sb in sentence.findall(scene.caption):
            (a,) = [o for o in scene.objects if (o.color, o.shape) == (ca, sa)]
            (b,) = [o for o in scene.objects if (o.color, o.shape) == (cb, sb)]
            assert relative_position(a.box, b.box) == {rel}, scene.caption
            checked += 1
    assert checked >= 50


def test_max_objects_and_argument_checks():
    world = ShapesWorld(seed=4, max_objects=2)
    assert max(len(world.scene(i).objects) for i in range(200)) == 2
    with pytest.raises(ValueError):
        ShapesWorld(caption_style="poetic")
    with pytest.raises(ValueError):
        ShapesWorld(max_objects=5)


NOUNS = set(SHAPES) | set(PLURALS.values())


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_coarse_colour_rate_sets_how_often_a_named_object_has_its_colour(rate):
    kwargs = dict(image_size=48, seed=5, caption_style="coarse", layout="grid", cells=3)
    world = ShapesWorld(**kwargs, coarse_color_rate=rate)
    named = coloured = 0
    for i in range(400):
        caption = world.scene(i).caption
        tokens = words(caption)
        nouns = [k for k, w in enumerate(tokens) if w in NOUNS]
        named += len(nouns)
        coloured += sum(k > 0 and tokens[k - 1] in COLORS for k in nouns)
    share = coloured / named
    # counting captions colour the plural noun only when every object has one colour, so even
    # rate 1 leaves some nouns bare; rate 0 must leave every one of them bare
    if rate == 0.0:
        assert share == 0.0
    elif rate == 0.5:
        assert abs(share - rate) < 0.15
    else:
        assert share > 0.8


def test_coarse_colour_rate_outside_0_1_is_refused():
    kwargs = dict(image_size=48, seed=5, caption_style="coarse", layout="grid", cells=3)
    with pytest.raises(ValueError, match="coarse_color_rate"):
        ShapesWorld(**kwargs, coarse_color_rate=1.5)


@pytest.mark.parametrize("rate", [0.0, 0.1, 1.0])
def test_coarse_relation_rate_sets_how_often_a_position_scene_states_its_relation(rate):
    kwargs = dict(image_size=48, seed=5, caption_style="coarse", layout="grid", cells=3)
    world = ShapesWorld(**kwargs, coarse_relation_rate=rate)
    stated = sum(any(f" {r} " in world.scene(i).caption for r in RELATIONS) for i in range(1000))
    # a fifth of the scenes are position scenes; only those may state a relation
    if rate == 0.0:
        assert stated == 0
    elif rate == 0.1:
        assert 5 <= stated <= 40
    else:
        assert 120 <= stated <= 260


def test_coarse_relation_rate_outside_0_1_is_refused():
    kwargs = dict(image_size=48, seed=5, caption_style="coarse", layout="grid", cells=3)
    with pytest.raises(ValueError, match="coarse_relation_rate"):
        ShapesWorld(**kwargs, coarse_relation_rate=-0.1)


def test_kind_weights_set_the_share_of_each_scene_kind():
    kwargs = dict(image_size=48, seed=5, caption_style="geneval", layout="grid", cells=3)
    uniform = ShapesWorld(**kwargs)
    heavy = ShapesWorld(**kwargs, kind_weights=(1, 1, 1, 5, 1))
    only_counting = ShapesWorld(**kwargs, kind_weights=(0, 0, 1, 0, 0))
    # the GenEval template of a position scene (a "scene" kind gets a dense caption, which may too)
    template = re.compile(rf"^a photo of an? (\w+ )?\w+ ({'|'.join(RELATIONS)}) an? (\w+ )?\w+$")

    def position_share(world):
        return sum(bool(template.match(world.scene(i).caption)) for i in range(600)) / 600

    assert 0.12 <= position_share(uniform) <= 0.28  # one kind in five
    assert 0.45 <= position_share(heavy) <= 0.68  # five in nine
    numbers = ("two ", "three ", "four ")
    assert all(any(n in only_counting.scene(i).caption for n in numbers) for i in range(100))


def test_kind_weights_none_keeps_the_uniform_stream_and_bad_weights_are_refused():
    kwargs = dict(image_size=48, seed=5, caption_style="coarse", layout="grid", cells=3)
    a, b = ShapesWorld(**kwargs), ShapesWorld(**kwargs, kind_weights=None)
    assert [a.scene(i).caption for i in range(50)] == [b.scene(i).caption for i in range(50)]
    for bad in [(1, 1, 1), (0, 0, 0, 0, 0), (1, 1, -1, 1, 1)]:
        with pytest.raises(ValueError, match="kind_weights"):
            ShapesWorld(**kwargs, kind_weights=bad)


def test_the_image_to_text_task_can_read_other_captions_than_generation():
    from types import SimpleNamespace

    from segros.data.sources import i2t_source, t2i_source
    from segros.train.config import load_config

    backbone = SimpleNamespace(
        image_size=48, token_grid=(3, 3), options=SimpleNamespace(shapes_layout="grid")
    )
    common = ["data.shapes.layout=grid", "data.shapes.caption_style=coarse"]
    split = load_config(None, [*common, "data.shapes.i2t_caption_style=dense"]).data
    same = load_config(None, common).data
    answers = [i2t_source(split, backbone)[i].turns[0][1] for i in range(40)]
    assert all(any(w in a for w in ("small", "large")) for a in answers)  # dense: every object's size
    assert all(t2i_source(split, backbone)[i].caption.startswith("a photo of") for i in range(40))
    coarse = [i2t_source(same, backbone)[i].turns[0][1] for i in range(40)]  # default: the T2I style
    assert not any(any(w in a for w in ("small", "large")) for a in coarse)
