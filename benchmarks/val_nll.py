"""Text-conditioned image-token NLL on held-out ShapesWorld scenes, per checkpoint.

A finer instrument than GenEval-style accuracy when a model is too weak to draw judgeable
shapes: how well does the model predict masked image codes from the caption alone (no hints,
the same random masks for every checkpoint)? Lower is better. Also reports the same NLL on
the tokens that lie on objects (where the caption's content is) and the image-to-text NLL.

    python benchmarks/val_nll.py CHECKPOINT [CHECKPOINT ...] [--scenes 512] [--mask-ratio 0.8]

Scenes come from a seed no training run uses (9999), so none was trained on. `segros validate`
runs the same masked-token loss (segros.eval.validate) on its own validation seeds, at several
ratios, with the alignment probe.
"""

from __future__ import annotations

import argparse

import torch

from segros.backbones.registry import load_backbone
from segros.data.sources import world_for
from segros.eval.checkpoint import resolve
from segros.eval.validate import i2t_nll, masked_nll


@torch.no_grad()
def evaluate(path: str, scenes: list, mask_ratio: float, batch_size: int = 64) -> dict[str, float]:
    """The library's masked-token loss (segros.eval.validate, which `segros validate` runs too)
    with the masks of a generator seeded 0, the same for every checkpoint, and the i2t NLL."""
    backbone = load_backbone(path).eval()
    generator = torch.Generator().manual_seed(0)  # the same masks for every checkpoint
    result = masked_nll(backbone, scenes, mask_ratio, generator, batch_size)
    return result | {"i2t_nll": i2t_nll(backbone, scenes, batch_size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--scenes", type=int, default=512)
    p.add_argument("--mask-ratio", type=float, default=0.8)
    args = p.parse_args()
    cache: dict[tuple, list] = {}
    for path in args.checkpoints:
        path = str(resolve(path))
        world = world_for(load_backbone(path), seed=9999)  # drawn as the model sees scenes
        key = (world.image_size, world.layout, world.cells)
        if key not in cache:
            cache[key] = [world.scene(i) for i in range(args.scenes)]
        r = evaluate(path, cache[key], args.mask_ratio)
        print(
            f"{path}\tnll={r['nll']:.4f}\tnll_on_objects={r['nll_on_objects']:.4f}\ti2t_nll={r['i2t_nll']:.4f}"
        )


if __name__ == "__main__":
    main()
