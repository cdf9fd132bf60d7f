"""The ShapesWorld evaluation prompt set, in GenEval's metadata format.

319 prompts over GenEval's six tags, built deterministically and shipped as
``shapes_eval_prompts.jsonl`` next to this module:

=============  =====  ====================================================================
tag            count  contents
=============  =====  ====================================================================
single_object      6  every shape ("a photo of a star")
two_object        15  every unordered pair of distinct shapes
counting          18  every shape x 2, 3, 4, with GenEval's ``exclude`` of count + 1
colors            60  every colour x shape ("a photo of a red star")
position         120  every ordered pair of distinct shapes x 4 relations
color_attr       100  100 seeded draws of two distinct shapes in two distinct colours
=============  =====  ====================================================================

Each record has GenEval's fields (``tag``, ``include`` items with ``class``, ``count``, optional
``color`` and ``position: [relation, index]``, optional ``exclude``, ``prompt``) plus
``held_out: bool``, true when the prompt uses a held-out composition that training never shows:

* colour-shape pairings (:data:`segros.data.shapes.HELD_OUT_PAIRS`): red star, orange triangle,
  yellow cross, green circle, blue triangle, purple square, pink diamond, brown star, black circle,
  white cross;
* relational facts (:data:`segros.data.shapes.HELD_OUT_RELATIONS`, each with its inverse): circle
  left of square, triangle above star, cross right of diamond, star below circle.
"""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from segros.data.geneval_prompts import RELATIONS, read_prompts, write_prompts
from segros.data.shapes import (
    COLORS,
    NUMBERS,
    PLURALS,
    SHAPES,
    article,
    is_held_out_pair,
    is_held_out_relation,
)

PROMPTS_FILE = "shapes_eval_prompts.jsonl"
# The fixed prompts ShapesWorld runs draw as sample pictures while training (segros train on
# ShapesWorld, the demo, segros pretrain): one per kind of scene, comparable from step to step.
SAMPLE_PROMPTS = (
    "a photo of a red circle",
    "a photo of a blue square left of a yellow star",
    "a photo of three green triangles",
    "a photo of a purple cross and an orange diamond",
)
COLOR_ATTR_PROMPTS = 100
COLOR_ATTR_SEED = 2024


def _a(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def is_held_out(record: dict[str, Any]) -> bool:
    """True if a metadata record asks for a held-out pairing or relational fact."""
    items = record.get("include", [])
    for item in items:
        if "color" in item and is_held_out_pair(item["color"], item["class"]):
            return True
        if "position" in item:
            rel, target = item["position"]
            if is_held_out_relation(item["class"], rel, items[target]["class"]):
                return True
    return False


def build_prompts() -> list[dict[str, Any]]:
    """All evaluation records, in GenEval's tag order, each with its ``held_out`` flag."""
    records: list[dict[str, Any]] = []
    for s in SHAPES:
        item = {"class": s, "count": 1}
        records.append({"tag": "single_object", "include": [item], "prompt": f"a photo of {_a(s)}"})
    for s1, s2 in itertools.combinations(SHAPES, 2):
        records.append(
            {
                "tag": "two_object",
                "include": [{"class": s1, "count": 1}, {"class": s2, "count": 1}],
                "prompt": f"a photo of {_a(s1)} and {_a(s2)}",
            }
        )
    for s in SHAPES:
        for n in (2, 3, 4):
            records.append(
                {
                    "tag": "counting",
                    "include": [{"class": s, "count": n}],
                    "exclude": [{"class": s, "count": n + 1}],
                    "prompt": f"a photo of {NUMBERS[n]} {PLURALS[s]}",
                }
            )
    for c in COLORS:
        for s in SHAPES:
            records.append(
                {
                    "tag": "colors",
                    "include": [{"class": s, "count": 1, "color": c}],
                    "prompt": f"a photo of {_a(f'{c} {s}')}",
                }
            )
    for a, b in itertools.permutations(SHAPES, 2):
        for rel in RELATIONS:
            records.append(
                {
                    "tag": "position",
                    "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                    "prompt": f"a photo of {_a(a)} {rel} {_a(b)}",
                }
            )
    rng = np.random.default_rng(COLOR_ATTR_SEED)
    seen: set[tuple[str, str, str, str]] = set()
    while len(seen) < COLOR_ATTR_PROMPTS:
        s1, s2 = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
        c1, c2 = (str(c) for c in rng.choice(COLORS, size=2, replace=False))
        if (c1, s1, c2, s2) in seen:
            continue
        seen.add((c1, s1, c2, s2))
        records.append(
            {
                "tag": "color_attr",
                "include": [{"class": s1, "count": 1, "color": c1}, {"class": s2, "count": 1, "color": c2}],
                "prompt": f"a photo of {_a(f'{c1} {s1}')} and {_a(f'{c2} {s2}')}",
            }
        )
    for rec in records:
        rec["held_out"] = is_held_out(rec)
    return records


def default_prompts_path() -> Path:
    """Path of the shipped prompt file inside the installed package."""
    return Path(str(resources.files("segros.data") / PROMPTS_FILE))


def load_prompts(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Read evaluation records (the shipped file by default)."""
    return read_prompts(path if path is not None else default_prompts_path())


def write_default_prompts(path: str | Path | None = None) -> Path:
    """Regenerate the shipped prompt file (run after changing the world's vocabulary)."""
    target = Path(path) if path is not None else default_prompts_path()
    write_prompts(target, build_prompts())
    return target


if __name__ == "__main__":
    print(write_default_prompts())
