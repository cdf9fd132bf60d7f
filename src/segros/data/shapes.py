"""ShapesWorld: procedurally drawn scenes of coloured shapes with exact ground truth.

A miniature of GenEval's compositional world for CPU-only training and evaluation: 1 to
``max_objects`` non-overlapping shapes (6 classes x GenEval's 10 colours x 2 sizes) on a grey
background that is none of the object colours, a caption describing the scene, and per object its
class, colour, size, box and pixel mask. Pixels are crisp (no antialiasing) so a rule-based judge
can read them back exactly.

Determinism: scene ``i`` of ``ShapesWorld(seed=s)`` depends only on ``(s, i)`` through
``numpy.random.default_rng([s, i])``, so the world can be streamed or randomly accessed.

Held-out compositions (see also ``shapes_prompts`` and the README): the colour-shape pairings in
:data:`HELD_OUT_PAIRS` and the relational facts in :data:`HELD_OUT_RELATIONS` occur in evaluation
prompts but, with ``exclude_held_out=True`` (the default), never in generated training scenes or
captions. A relational fact (A, rel, B) counts as occurring whenever an A and a B stand in that
relation (or its inverse) under GenEval's relation test *without* its 0.1 shrink, which is looser
than the test the judge applies, so not even near-misses reach training.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segros.data.geneval_prompts import COLORS, RELATIONS, relative_position

# --- the world's vocabulary ----------------------------------------------------------------------

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "purple": (130, 40, 190),
    "pink": (255, 130, 200),
    "brown": (125, 70, 25),
    "black": (10, 10, 10),
    "white": (250, 250, 250),
}
assert tuple(PALETTE) == COLORS
BACKGROUND: tuple[int, int, int] = (128, 128, 128)  # mid grey: far from every palette colour

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS: dict[str, str] = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
SIZES: dict[str, float] = {"small": 0.25, "large": 0.34}  # side of the shape's box / image side
NUMBERS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {  # (colour, shape): every colour once, every shape at least once
        ("red", "star"),
        ("orange", "triangle"),
        ("yellow", "cross"),
        ("green", "circle"),
        ("blue", "triangle"),
        ("purple", "square"),
        ("pink", "diamond"),
        ("brown", "star"),
        ("black", "circle"),
        ("white", "cross"),
    }
)
HELD_OUT_RELATIONS: tuple[tuple[str, str, str], ...] = (
    # (A, relation, B); "B <inverse> A" is the same fact and is held out too
    ("circle", "left of", "square"),
    ("triangle", "above", "star"),
    ("cross", "right of", "diamond"),
    ("star", "below", "circle"),
)
_HELD_OUT_FACTS = frozenset(HELD_OUT_RELATIONS) | {(b, INVERSE[r], a) for a, r, b in HELD_OUT_RELATIONS}
_HELD_OUT_SHAPE_PAIRS = frozenset((a, b) for a, _, b in _HELD_OUT_FACTS)

# Seeds of the validation scenes (``segros validate``, segros.eval.validate): no training run,
# evaluation prompt or benchmark draws from them, and training configs refuse them
# (data.shapes.seed, and its image-to-text stream, seed + 7919).
VALIDATION_SEEDS: tuple[int, ...] = (1_000_000, 1_000_001)

TEMPLATE_WORDS = (
    "a an photo of and the is at in on top bottom middle center left right above below small large"
)


def is_held_out_pair(color: str, shape: str) -> bool:
    """True if the colour-shape pairing is reserved for evaluation."""
    return (color, shape) in HELD_OUT_PAIRS


def is_held_out_relation(shape_a: str, relation: str, shape_b: str) -> bool:
    """True if "A relation B" (or its inverse) is a relational composition reserved for evaluation."""
    return (shape_a, relation, shape_b) in _HELD_OUT_FACTS


def words(text: str) -> list[str]:
    """The words of a caption or prompt, as the vocabulary counts them (lowercase letters only)."""
    return re.findall(r"[a-z]+", text.lower())


def article(word: str) -> str:
    """English indefinite article for ``word`` ("an orange", "a red")."""
    return "an" if word[0] in "aeiou" else "a"


def size_px(size: str, image_size: int) -> int:
    """Side in pixels of the box a shape of the named size is drawn in."""
    return max(6, round(SIZES[size] * image_size))


# --- rendering -----------------------------------------------------------------------------------


def _star_polygon() -> np.ndarray:
    """Five-pointed star (inner radius 0.5), stretched to fill [-1, 1] on both axes."""
    angles = np.deg2rad(-90 + 36 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    lo, hi = pts.min(0), pts.max(0)
    return (pts - lo) / (hi - lo) * 2 - 1


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the grid ``(u, v)``."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


@functools.lru_cache(maxsize=512)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean mask of ``shape`` drawn in a ``side`` x ``side`` box, cropped to its tight box.

    Pixel centres are sampled on [-1, 1]^2; the result is read-only and cached.
    """
    c = (np.arange(side) + 0.5) / side * 2 - 1
    v, u = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        m = u**2 + v**2 <= 1.0
    elif shape == "square":
        m = np.ones_like(u, dtype=bool)
    elif shape == "triangle":  # apex up
        m = np.abs(u) <= (v + 1) / 2 + 1 / side
    elif shape == "diamond":
        m = np.abs(u) + np.abs(v) <= 1.0
    elif shape == "cross":  # plus sign, arms 0.36 of the side wide
        m = (np.abs(u) <= 0.36) | (np.abs(v) <= 0.36)
    elif shape == "star":
        m = _inside_polygon(u, v, _star_polygon())
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    m = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
    m.flags.writeable = False
    return m


@dataclass
class ShapeObject:
    """One drawn object. ``box`` is ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive (tight)."""

    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """JSON form without the mask (recompute it with :meth:`from_json`)."""
        return {"shape": self.shape, "color": self.color, "size": self.size, "box": list(self.box)}

    @classmethod
    def from_json(cls, record: dict[str, Any], image_size: int) -> ShapeObject:
        """Rebuild an object, mask included, from :meth:`to_json` output."""
        origin = (record["box"][0], record["box"][1])
        return _make_object(record["shape"], record["color"], record["size"], origin, image_size)


@dataclass
class Scene:
    """An image ``(H, W, 3) uint8``, its caption and the objects it shows."""

    image: np.ndarray
    caption: str
    objects: list[ShapeObject]

    def to_json(self) -> dict[str, Any]:
        """Caption and objects as JSON (the image is stored separately)."""
        return {"caption": self.caption, "objects": [o.to_json() for o in self.objects]}


def _make_object(shape: str, color: str, size: str, origin: tuple[int, int], image_size: int) -> ShapeObject:
    patch = shape_mask(shape, size_px(size, image_size))
    x0, y0 = int(origin[0]), int(origin[1])
    h, w = patch.shape
    mask = np.zeros((image_size, image_size), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = patch
    return ShapeObject(shape, color, size, (x0, y0, x0 + w, y0 + h), mask)


def render(objects: list[ShapeObject], image_size: int) -> np.ndarray:
    """Paint the objects' masks in their palette colours on the background."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        image[y0:y1, x0:x1][obj.mask[y0:y1, x0:x1]] = PALETTE[obj.color]
    return image


# --- placement -----------------------------------------------------------------------------------

Spec = tuple[str, str, str]  # (shape, colour, size)


LAYOUTS = ("free", "grid")


def _fits(box: tuple[int, int, int, int], placed: list[ShapeObject], gap: int) -> bool:
    """True if ``box`` keeps at least ``gap`` px from every placed object on one axis."""
    x0, y0, x1, y1 = box
    return all(
        (x0 >= o.box[2] + gap or x1 + gap <= o.box[0]) or (y0 >= o.box[3] + gap or y1 + gap <= o.box[1])
        for o in placed
    )


def check_grid(image_size: int, cells: int) -> None:
    """ValueError unless a small object fits one cell and a large one a 2 x 2 block."""
    cell = image_size // cells if cells > 0 else 0
    if (
        cells < 2
        or image_size % cells
        or cell < size_px("small", image_size)
        or 2 * cell < size_px("large", image_size)
    ):
        raise ValueError(
            f"grid layout needs image_size ({image_size}) divisible by cells ({cells}) into cells of at "
            f"least {size_px('small', image_size)} px (a small object); 4 cells per side fit"
        )


def _grid_origin(
    rng: np.random.Generator, w: int, h: int, image_size: int, cells: int
) -> tuple[int, int]:
    """Top-left pixel of a glyph snapped to the token grid.

    A glyph that fits one grid cell is drawn in one cell, a larger one in a block of 2 x 2 cells,
    centred in it, so the same object always cuts into the same image tokens (``layout="grid"``).
    """
    cell = image_size // cells
    span = 1 if max(w, h) <= cell else 2
    col, row = (int(v) for v in rng.integers(0, cells - span + 1, size=2))
    return col * cell + (span * cell - w) // 2, row * cell + (span * cell - h) // 2


def _place(
    rng: np.random.Generator,
    specs: list[Spec],
    image_size: int,
    tries: int = 30,
    layout: str = "free",
    cells: int = 4,
) -> list[ShapeObject] | None:
    """Drop objects at random non-overlapping positions (gap >= 2 px, or 1 px below 48 px).

    ``free``: anywhere, 1 px from the image border (the border shows only background).
    ``grid``: snapped to a ``cells`` x ``cells`` grid (:func:`_grid_origin`), gap >= 2 px.
    """
    gap = 2 if image_size >= 48 or layout == "grid" else 1
    placed: list[ShapeObject] = []
    for shape, color, size in specs:
        h, w = shape_mask(shape, size_px(size, image_size)).shape
        for _ in range(tries):
            if layout == "grid":
                x, y = _grid_origin(rng, w, h, image_size, cells)
            else:
                x, y = (int(v) for v in rng.integers(1, [image_size - w, image_size - h]))
            if _fits((x, y, x + w, y + h), placed, gap):
                placed.append(_make_object(shape, color, size, (x, y), image_size))
                break
        else:
            return None
    return placed


def robust_relations(a: ShapeObject, b: ShapeObject) -> set[str]:
    """Relations of A to B that are safe to state: GenEval's test holds even with a 0.2 shrink."""
    strict = relative_position(a.box, b.box, threshold=0.2)
    return strict if len(relative_position(a.box, b.box)) == 1 else set()


def has_held_out_relation(objects: list[ShapeObject]) -> bool:
    """True if any two objects realise a held-out relational fact (looser test: no shrink)."""
    for a in objects:
        for b in objects:
            if a is not b and (a.shape, b.shape) in _HELD_OUT_SHAPE_PAIRS:
                for rel in relative_position(a.box, b.box, threshold=0.0):
                    if is_held_out_relation(a.shape, rel, b.shape):
                        return True
    return False


# --- captions ------------------------------------------------------------------------------------


def _noun(obj: ShapeObject, with_color: bool, with_size: bool = False) -> str:
    parts = ([obj.size] if with_size else []) + ([obj.color] if with_color else []) + [obj.shape]
    return f"{article(parts[0])} {' '.join(parts)}"


def _where(obj: ShapeObject, image_size: int) -> str:
    cx, cy = (obj.box[0] + obj.box[2]) / 2 / image_size, (obj.box[1] + obj.box[3]) / 2 / image_size
    h = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    v = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    if h and v:
        return f"at the {v} {h}"
    if v:
        return f"at the {v}"
    return f"on the {h}" if h else "in the center"


def dense_caption(objects: list[ShapeObject], image_size: int, rng: np.random.Generator) -> str:
    """Descriptive caption: every object with size, colour and place, then up to two relations."""
    parts = [f"{_noun(o, True, True)} {_where(o, image_size)}" for o in objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    keys = [(o.color, o.shape) for o in objects]
    sentences = []
    for i in rng.permutation(len(objects)):
        for j in rng.permutation(len(objects)):
            a, b = objects[i], objects[j]
            rels = robust_relations(a, b) if i != j else set()
            if rels and keys.count(keys[i]) == 1 and keys.count(keys[j]) == 1 and len(sentences) < 2:
                sentences.append(f"the {a.color} {a.shape} is {sorted(rels)[0]} the {b.color} {b.shape}")
    return ". ".join([text, *sentences])


def coarse_caption(
    kind: str,
    objects: list[ShapeObject],
    relation: str | None,
    rng: np.random.Generator,
    color_rate: float = 0.5,
    relation_rate: float = 0.1,
) -> str:
    """Web-alt-text-like caption for pretraining: names some objects, rarely a relation.

    Each object is named with probability 0.6 (at least one always is), with its colour with
    probability ``color_rate``, never its size or place; a counting scene says its count half the
    time; a position scene states its relation with probability ``relation_rate`` (one time in
    ten by default). Mirrors the coarse captions real UMMs are pretrained on. ``color_rate`` 0
    leaves colour, the attribute GenEval's colour tags test, to the fine-tuning captions.
    """
    if kind == "counting" and rng.random() < 0.5:
        same_color = len({o.color for o in objects}) == 1
        return geneval_caption(kind, objects, None, bool(rng.random() < color_rate) and same_color)
    if kind == "position" and relation is not None and rng.random() < relation_rate:
        return geneval_caption(kind, objects, relation, bool(rng.random() < color_rate))
    named = rng.random(len(objects)) < 0.6
    named[rng.integers(len(objects))] = True
    picked = [o for o, keep in zip(objects, named, strict=True) if keep]
    nouns = [_noun(o, bool(rng.random() < color_rate)) for o in picked]
    return "a photo of " + (nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1])


def geneval_caption(kind: str, objects: list[ShapeObject], relation: str | None, with_color: bool) -> str:
    """GenEval-template caption for a scene built for ``kind`` (one of the six tags)."""
    if kind == "single_object":
        return f"a photo of {_noun(objects[0], with_color)}"
    if kind == "two_object":
        return f"a photo of {_noun(objects[0], with_color)} and {_noun(objects[1], with_color)}"
    if kind == "counting":
        color = f"{objects[0].color} " if with_color else ""
        return f"a photo of {NUMBERS[len(objects)]} {color}{PLURALS[objects[0].shape]}"
    if kind == "position":
        return f"a photo of {_noun(objects[0], with_color)} {relation} {_noun(objects[1], with_color)}"
    raise ValueError(kind)


# --- web-like captions ---------------------------------------------------------------------------

# Words the web style uses beyond the world's vocabulary (its paraphrases); TinyUMM's tokenizer has
# them among its question words, so web captions tokenise without <unk>.
WEB_WORDS: tuple[str, ...] = ("picture", "image", "this", "there", "are", "shown")
_PLACES = (
    "at the top left", "at the top", "at the top right", "on the left", "in the center",
    "on the right", "at the bottom left", "at the bottom", "at the bottom right",
)  # fmt: skip


@dataclass(frozen=True)
class WebNoise:
    """Rates of the ``web`` caption style (:func:`web_caption`; docs/miniature.md measures them).

    ``detailed``: share of captions that describe the scene at length, as the dense fine-tuning
    captions do (sizes, places, relation sentences); the rest are short alt-text. ``omit``: chance
    each group of same-shaped objects beyond one forced in goes unmentioned in a short caption, and
    each of a detailed caption's two relation sentences; a detailed caption leaves out each object
    (beyond one), size, colour and place with a third of that chance. ``color``: chance a short
    caption gives a named object (or a group of one colour) its colour. ``relation``: chance a
    short caption naming two or more objects states a relation between two of them (when one holds
    robustly). ``wrong``: chance each stated colour, count, size, place or relation is wrong
    (another colour, a count one off, the other size, another place, the opposite relation; never a
    held-out composition). ``paraphrase``: chance the caption leaves its plain wording ("a photo
    of ..." for short captions, the bare description for detailed ones) for another ("an image
    of", "there are", "... in this picture", ...); also, at the same chance, a stated relation is
    put from the other object ("B below A") and "left of" becomes "on the left of"; at a quarter of
    it a single object is "one" instead of "a", and at a half "in the center" is "in the middle".
    ``aligned``: share of captions that are curated rather than web text: the fine-tuning's aligned
    ``mixed`` captions (a template or a dense description, accurate and complete), as web corpora
    hold some; at 0 (the default) no draw is made, so the other rates give the captions they gave.
    """

    detailed: float = 0.35
    omit: float = 0.25
    color: float = 0.5
    relation: float = 0.3
    wrong: float = 0.1
    paraphrase: float = 0.5
    aligned: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"web noise rate {f.name} must be in [0, 1], got {value!r}")


def _a(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def _other_color(rng: np.random.Generator, color: str, shape: str, exclude_held_out: bool) -> str:
    choices = [c for c in COLORS if c != color and not (exclude_held_out and is_held_out_pair(c, shape))]
    return str(choices[rng.integers(len(choices))])


def _off_by_one(rng: np.random.Generator, n: int) -> int:
    choices = [m for m in (n - 1, n + 1) if 2 <= m <= 4]
    return int(choices[rng.integers(len(choices))])


def _relation_phrase(
    rng: np.random.Generator, a: str, rel: str, b: str, noise: WebNoise
) -> str:
    """``a rel b``, or in other words: the same fact from ``b`` ("b below a"), "on the left of"."""
    if rng.random() < noise.paraphrase:
        if rng.random() < 0.5:
            a, rel, b = b, INVERSE[rel], a
        if rel in ("left of", "right of") and rng.random() < 0.5:
            rel = f"on the {rel}"
    return f"{a} {rel} {b}"


def _web_relation(
    rng: np.random.Generator,
    named: list[ShapeObject],
    noise: WebNoise,
    exclude_held_out: bool,
    exclude: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
) -> tuple[ShapeObject, str, ShapeObject] | None:
    """A robust relation between two named objects that their colour and shape tell apart from the
    others named (as in dense captions), wrong with ``noise.wrong``; None if there is none or its
    wrong version would name a held-out fact."""
    keys = [(o.color, o.shape) for o in named]
    unique = [o for o, k in zip(named, keys, strict=True) if keys.count(k) == 1]
    pairs = [
        (a, b) for a in unique for b in unique
        if a is not b and (id(a), id(b)) not in exclude and len(robust_relations(a, b)) == 1
    ]  # fmt: skip
    if not pairs:
        return None
    a, b = pairs[rng.integers(len(pairs))]
    rel = next(iter(robust_relations(a, b)))
    if rng.random() < noise.wrong:
        rel = INVERSE[rel]
        if exclude_held_out and is_held_out_relation(a.shape, rel, b.shape):
            return None
    return a, rel, b


def _frame(
    rng: np.random.Generator, text: str, plural: bool, noise: WebNoise, plain: str = "a photo of {}"
) -> str:
    """``plain`` around ``text`` or, with ``noise.paraphrase``, another alt-text wording of it."""
    if rng.random() >= noise.paraphrase:
        return plain.format(text)
    be = "are" if plural else "is"
    frames = (
        "a picture of {}", "an image of {}", "{}", "{} in this picture", "{} in this image",
        "there " + be + " {}", "{} " + be + " shown", "image of {}", "picture of {}",
    )  # fmt: skip
    return frames[rng.integers(len(frames))].format(text)


def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _short_web(
    rng: np.random.Generator, objects: list[ShapeObject], noise: WebNoise, exclude_held_out: bool
) -> str:
    groups: dict[str, list[ShapeObject]] = {}
    for o in objects:
        groups.setdefault(o.shape, []).append(o)
    shapes = list(groups)
    keep = rng.random(len(shapes)) >= noise.omit
    keep[rng.integers(len(shapes))] = True  # at least one group is named
    kept = [s for s, k in zip(shapes, keep, strict=True) if k]
    colors: dict[int, str | None] = {}
    for s in kept:
        members = groups[s]
        same = len({o.color for o in members}) == 1
        color = None
        if same and rng.random() < noise.color:
            color = members[0].color
            if rng.random() < noise.wrong:
                color = _other_color(rng, color, s, exclude_held_out)
        for o in members:
            colors[id(o)] = color
    relation = None
    if sum(len(groups[s]) == 1 for s in kept) >= 2 and rng.random() < noise.relation:
        singles = [groups[s][0] for s in kept if len(groups[s]) == 1]
        relation = _web_relation(rng, singles, noise, exclude_held_out)

    def noun(o: ShapeObject) -> str:
        words_ = [w for w in (colors[id(o)], o.shape) if w]
        if rng.random() < noise.paraphrase / 4:
            return "one " + " ".join(words_)
        return _a(" ".join(words_))

    phrases = []
    for s in kept:
        members = groups[s]
        if relation is not None and any(members[0] is o for o in relation[::2]):
            continue
        if len(members) == 1:
            phrases.append(noun(members[0]))
            continue
        color = colors[id(members[0])]
        n = len(members)
        if rng.random() < noise.omit:  # count left out: "red circles"
            count = ""
        else:
            count = NUMBERS[_off_by_one(rng, n) if rng.random() < noise.wrong else n] + " "
        phrases.append(count + (f"{color} " if color else "") + PLURALS[s])
    if relation is not None:
        a, rel, b = relation
        phrases.insert(0, _relation_phrase(rng, noun(a), rel, noun(b), noise))
    plural = len(phrases) > 1 or any(len(groups[s]) > 1 for s in kept)
    return _frame(rng, _listing(phrases), plural, noise)


def _detailed_web(
    rng: np.random.Generator,
    objects: list[ShapeObject],
    image_size: int,
    noise: WebNoise,
    exclude_held_out: bool,
) -> str:
    # objects, sizes, colours and places go at a third of the rate: long descriptions stay long
    drop = noise.omit / 3
    keep = rng.random(len(objects)) >= drop
    keep[rng.integers(len(objects))] = True
    named = [o for o, k in zip(objects, keep, strict=True) if k]
    stated: dict[int, str] = {}
    parts = []
    for o in named:
        size = o.size if rng.random() >= drop else None
        if size and rng.random() < noise.wrong:
            size = "large" if size == "small" else "small"
        color = o.color if rng.random() >= drop else None
        if color and rng.random() < noise.wrong:
            color = _other_color(rng, color, o.shape, exclude_held_out)
        stated[id(o)] = color or o.color
        place = _where(o, image_size) if rng.random() >= drop else None
        if place and rng.random() < noise.wrong:
            place = str(rng.choice([p for p in _PLACES if p != place]))
        if place == "in the center" and rng.random() < noise.paraphrase / 2:
            place = "in the middle"
        parts.append(" ".join(w for w in (_a(" ".join(w for w in (size, color, o.shape) if w)), place) if w))
    text = _frame(rng, _listing(parts), len(named) > 1, noise, plain="{}")
    sentences: list[str] = []
    pairs: set[tuple[int, int]] = set()
    for _ in range(2):
        relation = _web_relation(rng, named, noise, exclude_held_out, exclude=pairs)
        if relation is not None:
            a, rel, b = relation
            pairs |= {(id(a), id(b)), (id(b), id(a))}
            if rng.random() >= noise.omit:
                sentences.append(f"the {stated[id(a)]} {a.shape} is {rel} the {stated[id(b)]} {b.shape}")
    return ". ".join([text, *sentences])


def web_caption(
    objects: list[ShapeObject],
    image_size: int,
    rng: np.random.Generator,
    noise: WebNoise | None = None,
    exclude_held_out: bool = True,
) -> str:
    """Web-alt-text-like caption for pretraining: loose, varied and sometimes wrong (:class:`WebNoise`).

    Short (``1 - noise.detailed``): the object groups by shape, some left out, a group of several
    counted (or not), colours sometimes, now and then one relation, in varied wordings. Detailed:
    a dense-like description with some objects, sizes, colours, places and relation sentences left
    out or wrong. Wrong statements never name a held-out composition when ``exclude_held_out``.
    """
    noise = noise or WebNoise()
    if rng.random() < noise.detailed:
        return _detailed_web(rng, objects, image_size, noise, exclude_held_out)
    return _short_web(rng, objects, noise, exclude_held_out)


# --- the world -----------------------------------------------------------------------------------

KINDS = ("single_object", "two_object", "counting", "position", "scene")
CAPTION_STYLES = ("geneval", "dense", "mixed", "coarse", "web")


def kind_probabilities(weights: tuple[float, ...]) -> np.ndarray:
    """Relative weights of the scene kinds (in :data:`KINDS` order) as probabilities, checked."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(KINDS),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"kind_weights must be {len(KINDS)} non-negative numbers, not all zero, one per scene kind "
            f"({', '.join(KINDS)}); got {tuple(weights)}"
        )
    return w / w.sum()


class ShapesWorld:
    """Endless, seeded stream of :class:`Scene` s; ``scene(i)`` is random access.

    ``caption_style`` is ``"geneval"`` (template captions where the scene kind has one), ``"dense"``
    (descriptive captions), ``"mixed"`` (either, half the time each) or ``"coarse"`` (some objects
    named, each with its colour with probability ``coarse_color_rate``, a position scene's relation
    with probability ``coarse_relation_rate``: :func:`coarse_caption`, for pretraining) or ``"web"``
    (loose alt-text, sometimes wrong, at the rates of ``web_noise``: :func:`web_caption`, for
    pretraining; its words are the ``mixed`` style's plus :data:`WEB_WORDS`).

    ``kind_weights`` weighs the scene kinds of :data:`KINDS` (None: equally, as the shipped model
    was trained); e.g. ``(1, 1, 1, 5, 1)`` makes five scenes in nine position scenes.

    ``layout`` is ``"free"`` (objects anywhere) or ``"grid"``: objects snapped to a ``cells`` x
    ``cells`` grid matching an image tokenizer's patches, a small object in one cell and a large one
    centred in a 2 x 2 block, so every object is always cut into the same tokens (see
    ``docs/miniature.md`` for why this is what lets a small model learn to draw shapes).
    """

    def __init__(
        self,
        image_size: int = 64,
        seed: int = 0,
        exclude_held_out: bool = True,
        max_objects: int = 4,
        caption_style: str = "mixed",
        layout: str = "free",
        cells: int = 4,
        coarse_color_rate: float = 0.5,
        coarse_relation_rate: float = 0.1,
        kind_weights: tuple[float, ...] | None = None,
        web_noise: WebNoise | None = None,
    ) -> None:
        if caption_style not in CAPTION_STYLES:
            styles = ", ".join(CAPTION_STYLES)
            raise ValueError(f"caption_style must be one of {styles}, not {caption_style!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        if layout == "grid":
            check_grid(image_size, cells)
        if not 1 <= max_objects <= 4:
            raise ValueError("max_objects must be between 1 and 4")
        if not 0.0 <= coarse_color_rate <= 1.0:
            raise ValueError(f"coarse_color_rate must be in [0, 1], got {coarse_color_rate}")
        if not 0.0 <= coarse_relation_rate <= 1.0:
            raise ValueError(f"coarse_relation_rate must be in [0, 1], got {coarse_relation_rate}")
        self.kind_probs = None if kind_weights is None else kind_probabilities(kind_weights)
        self.image_size = image_size
        self.seed = seed
        self.exclude_held_out = exclude_held_out
        self.max_objects = max_objects
        self.caption_style = caption_style
        self.coarse_color_rate = coarse_color_rate
        self.coarse_relation_rate = coarse_relation_rate
        self.web_noise = web_noise or WebNoise()
        self.layout = layout
        self.cells = cells

    def __iter__(self) -> Iterator[Scene]:
        index = 0
        while True:
            yield self.scene(index)
            index += 1

    def scene(self, index: int) -> Scene:
        """Scene number ``index``, a pure function of ``(seed, index)``."""
        rng = np.random.default_rng([self.seed, index])
        while True:
            if self.kind_probs is None:  # uniform: the draws every earlier stream was made with
                kind = KINDS[rng.integers(len(KINDS))]
            else:
                kind = KINDS[rng.choice(len(KINDS), p=self.kind_probs)]
            built = self._build(kind, rng)
            if built is not None:
                objects, relation = built
                break
        style = self.caption_style
        if style == "web" and self.web_noise.aligned > 0 and rng.random() < self.web_noise.aligned:
            style = "mixed"  # a curated caption among the web text
        if style == "mixed":
            style = "geneval" if rng.random() < 0.5 else "dense"
        if style == "web":
            caption = web_caption(objects, self.image_size, rng, self.web_noise, self.exclude_held_out)
        elif style == "coarse":
            caption = coarse_caption(
                kind, objects, relation, rng, self.coarse_color_rate, self.coarse_relation_rate
            )
        elif style == "geneval" and kind != "scene":
            same_color = len({o.color for o in objects}) == 1
            with_color = bool(rng.random() < 0.5) and (kind != "counting" or same_color)
            caption = geneval_caption(kind, objects, relation, with_color)
        else:
            caption = dense_caption(objects, self.image_size, rng)
        return Scene(render(objects, self.image_size), caption, objects)

    def _color(self, rng: np.random.Generator, shape: str) -> str:
        while True:
            color = COLORS[rng.integers(len(COLORS))]
            if not (self.exclude_held_out and is_held_out_pair(color, shape)):
                return color

    def _build(self, kind: str, rng: np.random.Generator) -> tuple[list[ShapeObject], str | None] | None:
        """Objects for one scene of the given kind, or None to make the caller draw again."""
        n = {"single_object": 1, "two_object": 2, "position": 2}.get(kind)
        if kind == "counting":
            n = int(rng.integers(2, 5))
        elif kind == "scene":
            n = int(rng.integers(1, 5))
        if n > self.max_objects:
            return None
        if kind == "counting":
            shapes = [SHAPES[rng.integers(len(SHAPES))]] * n
        else:
            distinct = kind in ("two_object", "position")
            picks = rng.choice(len(SHAPES), size=n, replace=not distinct)
            shapes = [SHAPES[k] for k in picks]
        same = kind == "counting" and rng.random() < 0.5
        first = self._color(rng, shapes[0])
        colors = [first if same else self._color(rng, s) for s in shapes]
        sizes = ["small"] * n if n >= 3 else [str(s) for s in rng.choice(list(SIZES), size=n)]
        specs = list(zip(shapes, colors, sizes, strict=True))
        objects = _place(rng, specs, self.image_size, layout=self.layout, cells=self.cells)
        if objects is None or (self.exclude_held_out and has_held_out_relation(objects)):
            return None
        relation = None
        if kind == "position":
            rels = robust_relations(objects[0], objects[1])
            if not rels:
                return None
            relation = rels.pop()
        return objects, relation

    def vocabulary(self) -> list[str]:
        """Every word any caption of this style or evaluation prompt can contain, sorted."""
        extra = WEB_WORDS if self.caption_style == "web" else ()
        return sorted({*vocabulary(), *extra})


def vocabulary() -> list[str]:
    """Every word of ShapesWorld captions and evaluation prompts (see :func:`words`), sorted."""
    vocab = set(TEMPLATE_WORDS.split()) | set(COLORS) | set(SHAPES) | set(PLURALS.values())
    vocab |= set(NUMBERS.values()) | set(SIZES) | {w for r in RELATIONS for w in r.split()}
    return sorted(vocab)


# --- drawing a GenEval prompt --------------------------------------------------------------------


class UnsupportedPromptError(ValueError):
    """A GenEval record names a class ShapesWorld cannot draw."""


def render_prompt(
    metadata: dict[str, Any],
    rng: np.random.Generator,
    image_size: int = 64,
    layout: str = "free",
    cells: int = 4,
) -> Scene:
    """Draw a scene that satisfies a GenEval metadata record exactly (a perfect generator).

    Each include item gets exactly ``count`` objects of its class (in its colour if given, else a
    random one); position items are re-drawn until the relation holds with margin against every
    object of the referenced item. Raises :class:`UnsupportedPromptError` for classes outside SHAPES.
    """
    items = metadata.get("include", [])
    unknown = sorted({it["class"] for it in items} - set(SHAPES))
    if unknown:
        raise UnsupportedPromptError(f"ShapesWorld cannot draw: {', '.join(unknown)}")
    total = sum(it["count"] for it in items)
    if layout == "grid":
        check_grid(image_size, cells)
    for _ in range(500):
        specs, owner = [], []
        for k, it in enumerate(items):
            for _ in range(it["count"]):
                color = it.get("color") or str(rng.choice(COLORS))
                size = "small" if total >= 3 else str(rng.choice(list(SIZES)))
                specs.append((it["class"], color, size))
                owner.append(k)
        objects = _place(rng, specs, image_size, layout=layout, cells=cells)
        if objects is None:
            continue
        ok = True
        for k, it in enumerate(items):
            if "position" in it:
                rel, target = it["position"]
                mine = [o for o, w in zip(objects, owner, strict=True) if w == k]
                theirs = [o for o, w in zip(objects, owner, strict=True) if w == target]
                ok &= all(rel in robust_relations(a, b) for a in mine for b in theirs)
        if ok:
            return Scene(render(objects, image_size), metadata["prompt"], objects)
    raise RuntimeError(f"could not lay out {metadata['prompt']!r} at {image_size} px")
