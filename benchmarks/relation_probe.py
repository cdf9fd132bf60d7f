"""Does a checkpoint use a relation word's axis and direction? (docs/miniature.md)

For "a photo of a A <relation> a B" with each of GenEval's four relations, generates the prompt
``--samples`` times, finds both objects with the ShapesWorld judge's detector and prints the mean
offset of A's box centre from B's, in pixels (image y grows downwards). A model that follows the
relation gives dx < 0 for "left of", dx > 0 for "right of", dy < 0 for "above", dy > 0 for
"below"; one that learned only the axis separates left/right prompts horizontally and above/below
prompts vertically with the same sign for both words of a pair.

    python benchmarks/relation_probe.py pretrained
    python benchmarks/relation_probe.py runs/demo/finetune-sft-seed0 --samples 48
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from segros.backbones.base import Backbone
from segros.backbones.registry import load_backbone
from segros.eval.checkpoint import resolve
from segros.eval.geneval import RELATIONS
from segros.eval.shapes_judge import detect

PAIRS = (("circle", "square"), ("triangle", "star"), ("diamond", "cross"))


def centre(box: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def offsets(
    backbone: Backbone, prompt: str, a: str, b: str, samples: int, seed: int
) -> tuple[np.ndarray, int]:
    """(dx, dy) of A from B averaged over the samples where the judge finds exactly one of each."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = backbone.decode_tokens(backbone.generate_tokens([prompt] * samples, generator))
    found = []
    for image in np.asarray(images):
        detections = detect(image)
        boxes_a = [d.box for d in detections if d.cls == a]
        boxes_b = [d.box for d in detections if d.cls == b]
        if len(boxes_a) == 1 and len(boxes_b) == 1:
            found.append(centre(boxes_a[0]) - centre(boxes_b[0]))
    mean = np.mean(found, axis=0) if found else np.full(2, np.nan)
    return mean, len(found)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run or checkpoint folder, or 'pretrained' (the shipped model)")
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    backbone = load_backbone(resolve(args.checkpoint))
    backbone.eval()
    print(f"{'prompt':46s} {'found':>7s} {'dx':>7s} {'dy':>7s}")
    for a, b in PAIRS:
        for relation in RELATIONS:
            prompt = f"a photo of a {a} {relation} a {b}"
            (dx, dy), found = offsets(backbone, prompt, a, b, args.samples, args.seed)
            print(f"{prompt:46s} {found:3d}/{args.samples:<3d} {dx:+7.1f} {dy:+7.1f}")


if __name__ == "__main__":
    main()
