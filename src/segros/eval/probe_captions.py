"""True and minimally perturbed GenEval-style captions of a ShapesWorld scene, per tag.

The alignment probe of ``segros validate`` (:mod:`segros.eval.validate`) asks whether a model
finds an image more likely under its true caption than under a caption that differs in exactly
the one fact a GenEval tag tests. For each tag a scene qualifies by its objects alone, and the
perturbation is drawn from a ``numpy`` generator the caller seeds per scene:

=============  ========================  ===================================================
tag            scene                     perturbation (the one word or word pair changed)
=============  ========================  ===================================================
single_object  one object                its shape replaced by another shape
colors         one object                its colour replaced by another colour
two_object     two distinct shapes       one of them replaced by a shape not in the scene
counting       2-4 objects, one shape    the count one up or one down (staying in 2-4)
position       two distinct shapes, one  the relation flipped on its axis (left of <-> right
               robust relation           of, above <-> below)
color_attr     two distinct shapes in    the two colours swapped between the shapes
               two distinct colours
=============  ========================  ===================================================

Captions are the templates of the evaluation prompts (``shapes_prompts``), so the true caption
is what the fine-tuning ``geneval`` style would say and every perturbed caption is a caption of
the same form. Held-out compositions stay held out on both sides: a scene whose caption or
perturbation would name a held-out colour-shape pairing or relational fact yields no item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segros.data.shapes import (
    COLORS,
    INVERSE,
    NUMBERS,
    PLURALS,
    SHAPES,
    Scene,
    ShapeObject,
    article,
    is_held_out_pair,
    is_held_out_relation,
    robust_relations,
)

PROBE_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# Defaults of ``segros validate`` (kept here, in a module without torch, for the command's --help):
# scenes of the masked-token loss, its mask ratios, and probe scenes per tag. Sized so the shipped
# TinyUMM validates in well under a minute on a CPU core.
DEFAULT_SCENES = 512
MASK_RATIOS: tuple[float, ...] = (0.5, 0.8, 1.0)
DEFAULT_PER_TAG = 300
PROBE_SPAWN_KEY = 28  # the probe's child streams of a scene's seed sequence (perturbation_seed)


@dataclass(frozen=True)
class ProbeItem:
    """One probe question: a scene, its true caption and the perturbed one."""

    tag: str
    index: int  # the scene's index in the validation world
    scene: Scene
    true: str
    perturbed: str


def _a(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def _photo(*nouns: str, joiner: str = " and ") -> str:
    return "a photo of " + joiner.join(nouns)


def _other(rng: np.random.Generator, choices: list[str]) -> str | None:
    return str(choices[rng.integers(len(choices))]) if choices else None


def _single(objects: list[ShapeObject], rng: np.random.Generator) -> tuple[str, str] | None:
    if len(objects) != 1:
        return None
    shape = objects[0].shape
    other = _other(rng, [s for s in SHAPES if s != shape])
    return _photo(_a(shape)), _photo(_a(other))


def _colors(objects: list[ShapeObject], rng: np.random.Generator) -> tuple[str, str] | None:
    if len(objects) != 1:
        return None
    o = objects[0]
    other = _other(rng, [c for c in COLORS if c != o.color and not is_held_out_pair(c, o.shape)])
    if is_held_out_pair(o.color, o.shape) or other is None:
        return None
    return _photo(_a(f"{o.color} {o.shape}")), _photo(_a(f"{other} {o.shape}"))


def _two(objects: list[ShapeObject], rng: np.random.Generator) -> tuple[str, str] | None:
    if len(objects) != 2 or objects[0].shape == objects[1].shape:
        return None
    shapes = [o.shape for o in objects]
    swapped = list(shapes)
    which = int(rng.integers(2))
    swapped[which] = _other(rng, [s for s in SHAPES if s not in shapes])
    return _photo(*map(_a, shapes)), _photo(*map(_a, swapped))


def _counting(objects: list[ShapeObject], rng: np.random.Generator) -> tuple[str, str] | None:
    n, shape = len(objects), objects[0].shape
    if not 2 <= n <= 4 or any(o.shape != shape for o in objects):
        return None
    other = int(_other(rng, [str(m) for m in (n - 1, n + 1) if 2 <= m <= 4]))
    return _photo(f"{NUMBERS[n]} {PLURALS[shape]}"), _photo(f"{NUMBERS[other]} {PLURALS[shape]}")


def _position(objects: list[ShapeObject], rng: np.random.Generator) -> tuple[str, str] | None:
    if len(objects) != 2 or objects[0].shape == objects[1].shape:
        return None
    a, b = objects
    rels = robust_relations(a, b)
    if len(rels) != 1:
        return None
    rel = next(iter(rels))
    flipped = INVERSE[rel]
    if is_held_out_relation(a.shape, rel, b.shape) or is_held_out_relation(a.shape, flipped, b.shape):
        return None
    return _photo(_a(a.shape), _a(b.shape), joiner=f" {rel} "), _photo(
        _a(a.shape), _a(b.shape), joiner=f" {flipped} "
    )


def _color_attr(objects: list[ShapeObject], rng: np.random.Generator) -> tuple[str, str] | None:
    if len(objects) != 2 or objects[0].shape == objects[1].shape or objects[0].color == objects[1].color:
        return None
    a, b = objects
    if any(is_held_out_pair(c, o.shape) for c in (a.color, b.color) for o in (a, b)):
        return None
    true = _photo(_a(f"{a.color} {a.shape}"), _a(f"{b.color} {b.shape}"))
    return true, _photo(_a(f"{b.color} {a.shape}"), _a(f"{a.color} {b.shape}"))


_MAKERS = {
    "single_object": _single,
    "two_object": _two,
    "counting": _counting,
    "colors": _colors,
    "position": _position,
    "color_attr": _color_attr,
}


def captions_for(tag: str, scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """``(true, perturbed)`` captions of ``scene`` for ``tag``, or None if the scene cannot serve
    that tag (wrong objects for it, or a held-out composition on either side)."""
    if tag not in _MAKERS:
        raise ValueError(f"unknown probe tag {tag!r}; known: {', '.join(PROBE_TAGS)}")
    return _MAKERS[tag](scene.objects, rng)


def perturbation_seed(seed: int, index: int, tag: str) -> np.random.SeedSequence:
    """The seed of scene ``index``'s perturbation for ``tag``: a child stream (``spawn_key``) of the
    scene's own seed sequence, so independent of the draws that made the scene.

    (``default_rng([seed, index, 0])`` would not be: seed sequences ignore trailing zeros, so it
    repeats the scene's own stream, whose first draw picked the scene kind.)
    """
    return np.random.SeedSequence([seed, index], spawn_key=(PROBE_SPAWN_KEY, PROBE_TAGS.index(tag)))


def probe_items(world: object, per_tag: int, tags: tuple[str, ...] = PROBE_TAGS) -> list[ProbeItem]:
    """The first ``per_tag`` qualifying scenes of ``world`` for each tag, in scene order.

    A scene may serve several tags (a one-object scene serves single_object and colors). The
    perturbation of scene ``i`` for tag ``t`` is drawn from :func:`perturbation_seed`, so the
    items are a pure function of the world and ``per_tag``.
    """
    unknown = [t for t in tags if t not in _MAKERS]
    if unknown or per_tag < 1:
        raise ValueError(
            f"need per_tag >= 1 and tags among {', '.join(PROBE_TAGS)}; got {per_tag}, {unknown}"
        )
    found: dict[str, list[ProbeItem]] = {t: [] for t in tags}
    limit = 200 * per_tag  # every tag qualifies on far more than 1 scene in 200
    for index in range(limit):
        if all(len(v) >= per_tag for v in found.values()):
            break
        scene = world.scene(index)
        for tag in tags:
            if len(found[tag]) < per_tag:
                rng = np.random.default_rng(perturbation_seed(world.seed, index, tag))
                pair = captions_for(tag, scene, rng)
                if pair is not None:
                    found[tag].append(ProbeItem(tag, index, scene, *pair))
    short = {t: len(v) for t, v in found.items() if len(v) < per_tag}
    if short:
        raise ValueError(f"the world gave too few scenes for these probe tags in {limit} draws: {short}")
    return [item for tag in tags for item in found[tag]]
