"""Pointing precision: exact baselines, and stub backbones whose grounding is known by construction."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

from segros.backbones.base import GroundingInputs, T2IBatch
from segros.data.shapes import BACKGROUND, Scene, ShapesWorld
from segros.eval.pointing import patch_coverage, pointing_precision

SIZE, GRID, DIM = 32, (8, 8), 64


class StubBackbone:
    """Just the grounding seam of a backbone, with image-token embeddings chosen by ``mode``.

    Word vectors live in the first DIM/2 dimensions. ``"objects"``: a token whose patch shows a
    non-background pixel gets the sum of its caption's word vectors, every other token a vector in
    the last DIM/2 dimensions (cosine 0 with every word), so object tokens are the best grounded.
    ``"background"``: the other way round. ``"random"``: every token a random vector.
    """

    def __init__(self, mode: str, seed: int = 0, grid: tuple[int, int] = GRID) -> None:
        self.mode = mode
        self.image_size, self.token_grid, self.hint_grid = SIZE, grid, None
        self.num_tokens = grid[0] * grid[1]
        self.generator = torch.Generator().manual_seed(seed)
        self.words: dict[str, torch.Tensor] = {}

    def _word(self, word: str) -> torch.Tensor:
        if word not in self.words:
            vec = torch.zeros(DIM)
            vec[: DIM // 2] = torch.randn(DIM // 2, generator=self.generator)
            self.words[word] = vec
        return self.words[word]

    def prepare_t2i(self, records):
        """Word ids (one vector per word, drawn on first sight) and the images as they are."""
        images = torch.stack([torch.from_numpy(np.asarray(r.image)) for r in records])
        words = [re.findall(r"[a-z]+", r.caption.lower()) for r in records]
        ids = torch.zeros(len(words), max(len(w) for w in words), dtype=torch.long)
        valid = torch.zeros(ids.shape, dtype=torch.bool)
        for b, ws in enumerate(words):
            for j, w in enumerate(ws):
                self._word(w)
                ids[b, j], valid[b, j] = list(self.words).index(w), True
        return T2IBatch([r.caption for r in records], ids, valid, valid, images=images)

    def grounding_inputs(self, batch):
        B, N = len(batch), self.num_tokens
        vectors = torch.stack(list(self.words.values()))
        valid = batch.caption_mask
        text = vectors[batch.text_ids] * valid.unsqueeze(-1)
        objects = patch_coverage(torch.from_numpy(np.stack([
            (im.numpy() != BACKGROUND).any(-1) for im in batch.images
        ])), self.token_grid)  # fmt: skip
        other = torch.zeros(B, N, DIM)
        other[..., DIM // 2 :] = torch.randn(B, N, DIM // 2, generator=self.generator)
        if self.mode == "random":
            image = torch.randn(B, N, DIM, generator=self.generator)
        else:
            caption = (text * valid.unsqueeze(-1)).sum(1, keepdim=True).expand(B, N, DIM)
            pointed = objects if self.mode == "objects" else ~objects
            image = torch.where(pointed.unsqueeze(-1), caption, other)
        return GroundingInputs(text_emb=text, text_valid=valid, image_emb=image)


@pytest.fixture(scope="module")
def scenes():
    world = ShapesWorld(image_size=SIZE, seed=3)
    return [world.scene(i) for i in range(96)]


def test_patch_coverage_matches_a_pixel_loop():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 12, 8)) < 0.03
    got = patch_coverage(torch.from_numpy(masks), (3, 2)).numpy()
    for b in range(3):
        for i in range(3):
            for j in range(2):
                assert got[b, i * 2 + j] == masks[b, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].any()
    with pytest.raises(ValueError, match="tile"):
        patch_coverage(torch.from_numpy(masks), (5, 2))


def test_random_and_oracle_equal_brute_force_on_a_tiny_example():
    """4x4 token grid, K = floor(0.3 * 16) = 4: average and best over all 1820 hint sets."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[0:3, 0:3] = True  # one patch
    mask[20:30, 9:11] = True  # rows 20-29 -> patches rows 2-3, cols 9-10 -> patch col 1
    image = np.full((SIZE, SIZE, 3), BACKGROUND, dtype=np.uint8)
    image[mask] = (200, 30, 30)
    scene = Scene(image=image, caption="a red square", objects=[_object(mask)])

    result = pointing_precision(StubBackbone("objects", grid=(4, 4)), [scene], hint_ratio=0.3)

    on = set()
    for i in range(4):
        for j in range(4):
            if mask[8 * i : 8 * i + 8, 8 * j : 8 * j + 8].any():
                on.add(4 * i + j)
    assert len(on) == 3
    precisions = [len(on.intersection(c)) / 4 for c in itertools.combinations(range(16), 4)]
    assert result["hints_per_scene"] == 4
    assert result["random"] == pytest.approx(np.mean(precisions), abs=1e-12)
    assert result["oracle"] == pytest.approx(max(precisions), abs=1e-12)
    assert result["model"] == pytest.approx(max(precisions))  # the stub points at the object


def _object(mask):
    from segros.data.shapes import ShapeObject

    ys, xs = np.nonzero(mask)
    return ShapeObject("square", "red", "small", (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), mask)


def test_grounding_that_points_at_objects_scores_the_oracle(scenes):
    result = pointing_precision(StubBackbone("objects"), scenes, batch_size=32)
    assert result["scenes"] == len(scenes)
    assert result["model"] == pytest.approx(result["oracle"], abs=1e-9)
    assert result["model"] > result["random"] + 0.3
    assert sum(v["scenes"] for v in result["by_objects"].values()) == len(scenes)
    for part in result["by_objects"].values():
        assert part["model"] == pytest.approx(part["oracle"], abs=1e-9)


def test_grounding_that_points_at_objects_is_near_one_where_objects_fill_the_hints(scenes):
    k = int(0.3 * GRID[0] * GRID[1])
    masks = torch.from_numpy(np.stack([np.logical_or.reduce([o.mask for o in s.objects]) for s in scenes]))
    big = [s for s, n in zip(scenes, patch_coverage(masks, GRID).sum(1).tolist(), strict=True) if n >= k]
    assert len(big) >= 10
    result = pointing_precision(StubBackbone("objects"), big)
    assert result["oracle"] == 1.0
    assert result["model"] == pytest.approx(1.0)


def test_grounding_that_points_at_background_scores_below_random(scenes):
    result = pointing_precision(StubBackbone("background"), scenes)
    assert result["model"] < result["random"] - 0.15


def test_random_embeddings_score_near_the_random_baseline(scenes):
    result = pointing_precision(StubBackbone("random", seed=1), scenes, batch_size=40)
    assert result["model"] == pytest.approx(result["random"], abs=0.06)
    assert result["random"] < result["oracle"]


def test_baselines_do_not_depend_on_batching(scenes):
    a = pointing_precision(StubBackbone("objects"), scenes[:30], batch_size=7)
    b = pointing_precision(StubBackbone("objects"), scenes[:30], batch_size=64)
    for key in ("model", "random", "oracle"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)


def test_real_tiny_backbone_runs(small_tokenizer, scenes):
    from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions

    torch.manual_seed(0)
    backbone = TinyBackbone.from_options(TinyOptions(image_size=SIZE, image_tokenizer=str(small_tokenizer)))
    result = pointing_precision(backbone, scenes[:24], batch_size=8)
    assert result["hints_per_scene"] == int(0.3 * backbone.num_tokens)
    assert 0.0 <= result["model"] <= 1.0
    assert 0.0 < result["random"] < result["oracle"] <= 1.0


def test_bad_inputs_are_rejected(scenes):
    with pytest.raises(ValueError, match="no hint"):
        pointing_precision(StubBackbone("objects"), scenes[:2], hint_ratio=0.01)
    with pytest.raises(ValueError, match="px"):
        pointing_precision(StubBackbone("objects"), [ShapesWorld(image_size=64).scene(0)])
    with pytest.raises(ValueError, match="at least one"):
        pointing_precision(StubBackbone("objects"), [])


def test_roles_split_the_tokens_and_follow_the_grounding(scenes):
    """Seen and masked tokens partition the image: their on-object shares average to the share of
    all tokens. A map that points at objects puts the hints on objects and keeps background seen;
    one that points at background does the opposite."""
    on_objects = pointing_precision(StubBackbone("objects"), scenes, mask_ratio=0.5)
    roles = on_objects["roles"]
    N = GRID[0] * GRID[1]
    seen_tokens = N - int(np.floor(0.5 * N))
    share_seen = seen_tokens / N
    mixed = share_seen * roles["seen"] + (1 - share_seen) * roles["masked"]
    assert mixed == pytest.approx(roles["all"], abs=1e-9)
    assert roles["all"] == pytest.approx(on_objects["random"], abs=1e-9)
    assert roles["hint"] == pytest.approx(on_objects["model"], abs=1e-9)
    assert roles["seen"] < roles["all"] < roles["masked"]
    background = pointing_precision(StubBackbone("background"), scenes, mask_ratio=0.5)["roles"]
    assert background["seen"] > background["all"] > background["hint"]
