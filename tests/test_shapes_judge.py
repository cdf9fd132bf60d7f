"""The ShapesWorld judge: GenEval's rules on rule-based detections."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segros.data.shapes import (
    BACKGROUND,
    COLORS,
    PALETTE,
    SHAPES,
    ShapesWorld,
    render,
    render_prompt,
    shape_mask,
)
from segros.data.shapes_prompts import load_prompts
from segros.eval.geneval import (
    TAGS,
    Detection,
    evaluate,
    read_prompts,
    relative_position,
    score_image,
    select_detections,
    summarize,
)
from segros.eval.shapes_judge import detect

# GenEval's own metadata file, if you have it: $SEGROS_BENCHMARK_DIR/geneval/evaluation_metadata.jsonl
BENCHMARKS = Path(os.environ.get("SEGROS_BENCHMARK_DIR", "/nonexistent"))
GENEVAL_METADATA = BENCHMARKS / "geneval/evaluation_metadata.jsonl"
DERANGEMENT = dict(zip(COLORS, COLORS[1:] + COLORS[:1], strict=True))


def _score(size: int, samples: int, corrupt: str = "none", stride: int = 1) -> dict:
    """Summary of judging rendered prompts (every ``stride``-th one; each tag keeps >= 2 prompts)."""
    rows = []
    for i, record in enumerate(load_prompts()[::stride]):
        for n in range(samples):
            scene = render_prompt(record, np.random.default_rng([11, i, n]), size)
            image = scene.image
            if corrupt == "permute":
                for obj in scene.objects:
                    obj.color = DERANGEMENT[obj.color]
                image = render(scene.objects, size)
            elif corrupt == "blank":
                image = np.full_like(image, BACKGROUND)
            rows.append(score_image(f"{i}/{n}", detect(image), record))
    return summarize(rows)


@pytest.mark.parametrize("size,samples", [(64, 1), (32, 1)])
def test_ground_truth_renderings_score_at_least_098(size, samples):
    summary = _score(size, samples)
    assert summary["overall"] >= 0.98
    assert set(summary["tags"]) == set(TAGS)
    assert all(v >= 0.98 for v in summary["tags"].values()), summary


def test_permuted_colours_fail_colour_tags_only():
    summary = _score(64, 1, "permute", stride=2)
    assert summary["tags"]["colors"] <= 0.2 and summary["tags"]["color_attr"] <= 0.2, summary
    assert summary["tags"]["single_object"] >= 0.98  # nothing else changed


def test_blank_images_score_zero_everywhere():
    summary = _score(64, 1, "blank", stride=3)
    assert set(summary["tags"]) == set(TAGS) and all(v == 0 for v in summary["tags"].values()), summary


@pytest.mark.parametrize("size", [32, 64])
def test_detections_read_back_random_scenes_exactly(size):
    world = ShapesWorld(image_size=size, seed=9, exclude_held_out=False)
    for i in range(150):
        scene = world.scene(i)
        found = sorted((d.cls, d.color, tuple(int(v) for v in d.box)) for d in detect(scene.image))
        assert found == sorted((o.shape, o.color, o.box) for o in scene.objects)


def test_judge_tolerates_blur_and_noise():
    from scipy import ndimage

    rows = []
    for i, record in enumerate(load_prompts()[::2]):
        rng = np.random.default_rng([5, i])
        image = ndimage.gaussian_filter(render_prompt(record, rng, 64).image.astype(float), (0.6, 0.6, 0))
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        rows.append(score_image(str(i), detect(image), record))
    assert summarize(rows)["overall"] >= 0.9


def test_stray_pixels_are_not_objects():
    image = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)
    image[10:13, 10:13] = PALETTE["red"]  # 9 px speck
    image[40, 5:9] = PALETTE["blue"]
    assert detect(image) == []


# --- garbage is not objects: the confidence says how clean an instance a blob is -------------------


def _real_tiles(size: int = 32, patch: int = 4, scenes: int = 60) -> np.ndarray:
    """The distinct ``patch`` x ``patch`` tiles of real scenes: the vocabulary of a patch decoder."""
    world = ShapesWorld(image_size=size, seed=3)
    n = size // patch
    images = np.stack([world.scene(i).image for i in range(scenes)])
    tiles = images.reshape(scenes, n, patch, n, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    return np.unique(tiles.reshape(-1, patch, patch, 3), axis=0)


def _mosaic(tiles: np.ndarray, rng: np.random.Generator, n: int = 8) -> np.ndarray:
    """An ``n`` x ``n`` grid of random tiles, as an untrained generator decodes random codes."""
    p = tiles.shape[1]
    grid = tiles[rng.integers(0, len(tiles), n * n)].reshape(n, n, p, p, 3)
    return grid.transpose(0, 2, 1, 3, 4).reshape(n * p, n * p, 3)


def test_random_tile_mosaics_score_at_most_005_on_every_tag():
    tiles = _real_tiles()
    rows = [
        score_image(str(i), detect(_mosaic(tiles, np.random.default_rng([13, i]))), record)
        for i, record in enumerate(load_prompts()[::3])
    ]
    summary = summarize(rows)
    assert set(summary["tags"]) == set(TAGS)
    assert all(v <= 0.05 for v in summary["tags"].values()), summary


def _circle_and_square() -> np.ndarray:
    image = np.full((32, 32, 3), BACKGROUND, dtype=np.uint8)
    image[3:14, 3:14][shape_mask("circle", 11)] = PALETTE["red"]
    image[18:29, 18:29][shape_mask("square", 11)] = PALETTE["blue"]
    return image


def _confident(image: np.ndarray, threshold: float = 0.3) -> set[tuple[str, str]]:
    return {(d.cls, d.color) for d in detect(image) if d.confidence >= threshold}


def test_a_corrupted_object_is_lost_and_the_intact_one_kept():
    assert _confident(_circle_and_square(), 0.9) == {("circle", "red"), ("square", "blue")}
    half = _circle_and_square()
    half[3:14, 8:14] = BACKGROUND  # right half of the circle erased
    bite = _circle_and_square()
    bite[8:14, 8:14] = BACKGROUND  # a quarter bitten off
    patched = _circle_and_square()
    patched[4:8, 4:8] = PALETTE["yellow"]  # a foreign tile inside it
    for image in (half, bite, patched):
        assert _confident(image) == {("square", "blue")}
        assert _confident(image, 0.9) == {("square", "blue")}


def test_circle_tiles_replaced_by_random_tiles_lose_the_circle():
    tiles = _real_tiles()
    rng = np.random.default_rng(0)
    for _ in range(10):
        image = _circle_and_square()
        replaced = 0
        while replaced < 3:  # at least 3 of the circle's 9 tiles, all but the corner tiles hit it
            ty, tx = (int(v) for v in rng.integers(0, 3, 2))
            tile = tiles[rng.integers(len(tiles))]
            if (image[ty * 4 + 1 : ty * 4 + 5, tx * 4 + 1 : tx * 4 + 5] != tile).any():
                replaced += 1
            image[ty * 4 + 1 : ty * 4 + 5, tx * 4 + 1 : tx * 4 + 5] = tile
        assert ("circle", "red") not in _confident(image, 0.9)
        assert ("square", "blue") in _confident(image, 0.9)


def test_touching_objects_are_both_kept():
    image = _circle_and_square()
    image[3:14, 14:25][shape_mask("square", 11)] = PALETTE["green"]  # flush against the circle
    assert _confident(image, 0.9) == {("circle", "red"), ("square", "green"), ("square", "blue")}


def test_blobs_far_below_the_smallest_object_are_not_objects():
    image = np.full((32, 32, 3), BACKGROUND, dtype=np.uint8)
    image[4:8, 4:8] = PALETTE["red"]  # a lone 4 px square: half the smallest object's side
    image[20:24, 10:14][shape_mask("circle", 4)] = PALETTE["green"]
    assert _confident(image) == set()


# --- the relation test, golden cases around its thresholds ----------------------------------------


def test_relation_threshold_on_one_axis():
    # equal 10 px boxes side by side on one axis: the shrink is 0.1 * 20 = 2, so the direction's
    # component is (d - 2) / d, beyond 0.5 exactly when the centre offset d exceeds 4
    b = (20, 20, 30, 30)
    assert relative_position((16, 20, 26, 30), b) == set()
    assert relative_position((15.9, 20, 25.9, 30), b) == {"left of"}
    assert relative_position((24.1, 20, 34.1, 30), b) == {"right of"}
    assert relative_position((20, 16, 30, 26), b) == set()
    assert relative_position((20, 15.9, 30, 25.9), b) == {"above"}
    assert relative_position((20, 24.1, 30, 34.1), b) == {"below"}
    assert relative_position(b, b) == set()


def test_relation_on_the_diagonal_can_hold_twice():
    # offset (d, d): component (d - 2) / (d * sqrt 2) > 0.5 iff d > 6.83
    b = (20, 20, 30, 30)
    assert relative_position((13.2, 13.2, 23.2, 23.2), b) == set()
    assert relative_position((13.1, 13.1, 23.1, 23.1), b) == {"left of", "above"}


def _two_shapes(offset_main: int, rel: str) -> np.ndarray:
    """A 10 px square placed relative to a 10 px circle at (27, 27): `offset_main` px along the
    relation's axis, 12 px across it (so they never overlap)."""
    image = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)
    bx, by = 27, 27
    dx, dy = {"left of": (-offset_main, 12), "right of": (offset_main, 12),
              "above": (12, -offset_main), "below": (12, offset_main)}[rel]
    image[by : by + 10, bx : bx + 10][shape_mask("circle", 10)] = PALETTE["blue"]
    image[by + dy : by + dy + 10, bx + dx : bx + dx + 10][shape_mask("square", 10)] = PALETTE["red"]
    return image


@pytest.mark.parametrize("rel", ["left of", "right of", "above", "below"])
def test_position_golden_images_around_the_threshold(rel):
    # along-axis offset m, across 12: component (m - 2) / sqrt(m^2 + 144) crosses 0.5 at m = 9.72
    record = {
        "tag": "position",
        "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": [rel, 0]}],
        "prompt": f"a photo of a square {rel} a circle",
    }
    far = score_image("far", detect(_two_shapes(10, rel)), record)
    near = score_image("near", detect(_two_shapes(9, rel)), record)
    assert far["correct"], far["reason"]
    assert not near["correct"] and f"expected square {rel} target" in near["reason"]


# --- counting and the other rules ------------------------------------------------------------------


def _stars(n: int) -> np.ndarray:
    image = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)
    for k in range(n):
        x, y = 4 + 30 * (k % 2), 4 + 30 * (k // 2)
        star = shape_mask("star", 16)
        image[y : y + star.shape[0], x : x + star.shape[1]][star] = PALETTE["green"]
    return image


def test_exact_counting_via_exclude():
    record = {
        "tag": "counting",
        "include": [{"class": "star", "count": 3}],
        "exclude": [{"class": "star", "count": 4}],
        "prompt": "a photo of three stars",
    }
    results = {n: score_image(str(n), detect(_stars(n)), record) for n in (1, 2, 3, 4)}
    assert [results[n]["correct"] for n in (1, 2, 3, 4)] == [False, False, True, False]
    assert results[2]["reason"] == "expected star>=3, found 2"
    assert results[4]["reason"] == "expected star<4, found 4"


def test_colour_rule_uses_only_the_top_count_detections():
    def det(color, conf):
        return Detection("circle", color, (0, 0, 5, 5), conf)

    record = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": "p"}
    assert evaluate({"circle": [det("red", 0.9), det("blue", 0.8)]}, record)[0]
    ok, reason = evaluate({"circle": [det("blue", 0.9), det("red", 0.8)]}, record)
    assert not ok and reason == "expected red circle>=1, found 0 red; and 1 blue"


def test_thresholds_and_ordering_mirror_upstream():
    dets = [Detection("star", "red", (0, 0, 1, 1), c) for c in (0.2, 0.95, 0.5, 0.3)]
    assert [d.confidence for d in select_detections(dets, "colors")["star"]] == [0.95, 0.5]
    assert [d.confidence for d in select_detections(dets, "counting")["star"]] == [0.95]


def test_position_without_a_matched_target():
    record = {
        "tag": "position",
        "include": [
            {"class": "circle", "count": 1},
            {"class": "square", "count": 1, "position": ["above", 0]},
        ],
        "prompt": "p",
    }
    ok, reason = evaluate({"square": [Detection("square", "red", (0, 0, 4, 4), 1.0)]}, record)
    assert not ok and reason == "expected circle>=1, found 0\nno target for square to be above"


def test_summary_is_unweighted_mean_of_tag_means():
    rows = [{"tag": "a", "correct": c} for c in (True, True, True, False)] + [{"tag": "b", "correct": False}]
    summary = summarize(rows)
    assert summary == {"overall": pytest.approx((0.75 + 0.0) / 2), "tags": {"a": 0.75, "b": 0.0}, "images": 5}


def test_result_rows_have_genevals_fields():
    record = load_prompts()[0]
    row = score_image("x.png", detect(render_prompt(record, np.random.default_rng(0)).image), record)
    assert list(row) == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]
    assert json.loads(row["metadata"]) == record
    details = json.loads(row["details"])
    cls = record["include"][0]["class"]
    assert list(details) == [cls] and len(details[cls][0]) == 5  # box + score


@pytest.mark.skipif(not GENEVAL_METADATA.exists(), reason="GenEval metadata not available")
def test_real_geneval_metadata_parses_and_is_reported_unsupported():
    records = read_prompts(GENEVAL_METADATA)
    assert len(records) == 553 and {r["tag"] for r in records} == set(TAGS)
    for record in records:
        row = score_image("x.png", [], record, supported_classes=SHAPES)
        assert row["unsupported"] is True and row["correct"] is False
        assert row["reason"].startswith("unsupported classes: ")
    assert summarize([score_image("x", [], r, SHAPES) for r in records])["images"] == 0


_coord = st.floats(0, 60, allow_nan=False)

_box = st.tuples(_coord, _coord, st.floats(1, 20), st.floats(1, 20))


@given(_box, _box)
def test_relation_test_is_antisymmetric(a, b):
    box_a = (a[0], a[1], a[0] + a[2], a[1] + a[3])
    box_b = (b[0], b[1], b[0] + b[2], b[1] + b[3])
    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    assert relative_position(box_b, box_a) == {inverse[r] for r in relative_position(box_a, box_b)}
