"""Pretraining ``web`` captions next to fine-tuning ``mixed`` ones, measured from the caption text.

For docs/miniature.md: per style, how many captions name every object, how many stated colours,
counts and relations are false for the scene (read back from the words against the scene's
objects), the wording, the vocabulary and its coverage of the fine-tuning words, the length
distribution, and ten sample captions. Scenes are drawn in the shipped TinyUMM's world (48 px,
grid layout, 3 x 3 cells). Last, for the caption distributions the pretraining pilots used, the
share of captions that bind two colours to two shapes ("a red circle ... a blue square", both
true), the captions the probe's color_attr items test.

    python benchmarks/caption_styles.py [--scenes 2000] [--seed 11]
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from segros.data.shapes import (
    COLORS,
    NUMBERS,
    PLURALS,
    SHAPES,
    ShapesWorld,
    WebNoise,
    relative_position,
    words,
)

WORLD = {"image_size": 48, "layout": "grid", "cells": 3}
SINGULAR = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
COUNTS = {w: n for n, w in NUMBERS.items()}
RELATION = re.compile(r"\b(left of|right of|above|below)\b")


def stated_colours(ws: list[str]) -> list[tuple[str, str]]:
    """The (colour, singular shape) pairs a caption's words state: "red star", "red stars" (every
    caption style puts a size before the colour, so the colour always sits next to its shape)."""
    pairs = zip(ws, ws[1:], strict=False)
    return [(prev, SINGULAR[word]) for prev, word in pairs if prev in COLORS and word in SINGULAR]


def facts(caption: str, objects: list) -> dict[str, list[bool]]:
    """Which stated colours, counts and relations of ``caption`` are false for the scene."""
    ws = words(caption)
    out: dict[str, list[bool]] = {"color": [], "count": [], "relation": []}
    for color, shape in stated_colours(ws):
        out["color"].append(not any(o.color == color and o.shape == shape for o in objects))
    for k, word in enumerate(ws[:-1]):
        if word in COUNTS and COUNTS[word] > 1:  # "three (red) circles"
            noun = next((w for w in ws[k + 1 : k + 3] if w in PLURALS.values()), None)
            if noun is not None:
                out["count"].append(sum(o.shape == SINGULAR[noun] for o in objects) != COUNTS[word])
    for m in RELATION.finditer(caption):
        before = [SINGULAR[w] for w in words(caption[: m.start()]) if w in SINGULAR][-1:]
        after = [SINGULAR[w] for w in words(caption[m.end() :]) if w in SINGULAR][:1]
        if before and after:
            holds = any(
                m.group(1) in relative_position(a.box, b.box)
                for a in objects
                for b in objects
                if a is not b and a.shape == before[0] and b.shape == after[0]
            )
            out["relation"].append(not holds)
    return out


def binds_two_colours(caption: str, objects: list) -> bool:
    """Whether ``caption`` names two different shapes each with its own, true, different colour
    ("a red circle and a blue square")."""
    stated = stated_colours(words(caption))
    true = {(c, s) for c, s in stated if any(o.color == c and o.shape == s for o in objects)}
    return any(c1 != c2 and s1 != s2 for c1, s1 in true for c2, s2 in true)


# the caption distributions of the pretraining pilots (docs/miniature.md, "The paper's regime")
PILOTS = {
    "F: geneval templates": {"caption_style": "geneval"},
    "D: mixed (the fine-tuning's)": {"caption_style": "mixed"},
    "A: web, default rates": {"caption_style": "web"},
    "C: web, clean rates": {
        "caption_style": "web",
        "web_noise": WebNoise(omit=0.1, color=0.9, relation=0.9, wrong=0.02),
    },
    "I: web + half mixed (shipped)": {"caption_style": "web", "web_noise": WebNoise(aligned=0.5)},
}


def describe(style: str, scenes: int, seed: int, reference: set[str]) -> tuple[dict, set[int]]:
    world = ShapesWorld(seed=seed, caption_style=style, **WORLD)
    drawn = [world.scene(i) for i in range(scenes)]
    lengths = np.array([len(words(s.caption)) for s in drawn])
    stated: dict[str, list[bool]] = {"color": [], "count": [], "relation": []}
    for s in drawn:
        for key, values in facts(s.caption, s.objects).items():
            stated[key] += values
    vocab = {w for s in drawn for w in words(s.caption)}
    names_all = np.mean(
        [
            all(o.shape in words(s.caption) or PLURALS[o.shape] in words(s.caption) for o in s.objects)
            for s in drawn
        ]
    )
    row = {
        "captions naming every object's shape": f"{names_all:.3f}",
        "'a photo of' wording": f"{np.mean(['a photo of' in s.caption for s in drawn]):.3f}",
        "stated colours false for the scene": _share(stated["color"]),
        "stated counts false for the scene": _share(stated["count"]),
        "stated relations false for the scene": _share(stated["relation"]),
        "distinct words": str(len(vocab)),
        "fine-tuning words covered": f"{len(reference & vocab)} / {len(reference)}",
        "words per caption: mean, median, p90, max": ", ".join(
            (f"{lengths.mean():.1f}", *(f"{v:.0f}" for v in np.percentile(lengths, [50, 90, 100])))
        ),
        "captions over 24 words": f"{np.mean(lengths > 24):.3f}",
        "length histogram 1-4 / 5-8 / 9-16 / 17-24 / 25-32 / 33-40 / 41+": " / ".join(
            f"{np.mean((lengths >= lo) & (lengths <= hi)):.2f}"
            for lo, hi in ((1, 4), (5, 8), (9, 16), (17, 24), (25, 32), (33, 40), (41, 99))
        ),
    }
    return row | {"samples": [s.caption for s in drawn[:10]]}, set(lengths.tolist())


def _share(flags: list[bool]) -> str:
    return f"{np.mean(flags):.3f} of {len(flags)}" if flags else "none stated"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()
    reference = set(ShapesWorld(caption_style="mixed").vocabulary())
    rows, lengths = {}, {}
    for style in ("web", "mixed"):
        rows[style], lengths[style] = describe(style, args.scenes, args.seed, reference)
    print(f"{args.scenes} scenes per style, seed {args.seed}\n")
    print("| measure | web (pretraining) | mixed (fine-tuning) |\n|---|---|---|")
    for key in rows["web"]:
        if key != "samples":
            print(f"| {key} | {rows['web'][key]} | {rows['mixed'][key]} |")
    missing = sorted(lengths["mixed"] - lengths["web"])
    print(f"\nfine-tuning caption lengths missing from the web captions: {missing or 'none'}")
    for style in ("web", "mixed"):
        print(f"\n{style}:")
        for caption in rows[style]["samples"]:
            print(f"- {caption}")
    print("\n| pretraining pilot's captions | bind two colours to two shapes |\n|---|---|")
    for name, options in PILOTS.items():
        world = ShapesWorld(seed=args.seed, **WORLD, **options)
        drawn = (world.scene(i) for i in range(args.scenes))
        print(f"| {name} | {np.mean([binds_two_colours(s.caption, s.objects) for s in drawn]):.3f} |")


if __name__ == "__main__":
    main()
