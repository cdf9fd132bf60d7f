"""Does the grounding map point at the objects the caption names? Pointing precision per checkpoint.

For each checkpoint and temperature tau: the share of the top-30% grounded tokens (no noise)
that lie on an object of the scene (ShapesWorld captions name every object), next to random
selection and the best possible. Used to investigate whether a backbone's pre-transformer
text and image-token embeddings share a space, which the paper's method assumes.

    python benchmarks/pointing.py CHECKPOINT [CHECKPOINT ...] [--scenes 256] [--temperatures 1 0.1]
        [--filters both none] [--stopwords none english]

``pretrained`` names the TinyUMM shipped in the package. Scenes are drawn the way the checkpoint
was trained to see them (grid layout for the shipped model).
"""

from __future__ import annotations

import argparse

from segros.backbones.registry import load_backbone
from segros.data.sources import world_for
from segros.eval.checkpoint import resolve
from segros.eval.pointing import pointing_precision
from segros.grounding import GroundingConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--scenes", type=int, default=256)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.03])
    p.add_argument("--filters", nargs="+", default=["both", "none"])
    p.add_argument("--stopwords", nargs="+", default=["none", "english"], choices=["none", "english"])
    args = p.parse_args()
    for path in args.checkpoints:
        backbone = load_backbone(resolve(path)).eval()
        world = world_for(backbone, seed=4242)
        scenes = [world.scene(i) for i in range(args.scenes)]
        for stopwords in args.stopwords:
            for text_filter in args.filters:
                for tau in args.temperatures:
                    cfg = GroundingConfig(
                        temperature=tau, text_filter=text_filter, noise_scale=0.0, text_stopwords=stopwords
                    )
                    r = pointing_precision(backbone, scenes, grounding=cfg)
                    print(
                        f"{path}  stopwords={stopwords:7s} filter={text_filter:5s} tau={tau:<5g} "
                        f"pointing={r['model']:.3f} random={r['random']:.3f} best={r['oracle']:.3f}"
                    )


if __name__ == "__main__":
    main()
