"""The validation probe's position items with both objects' colours named, beside the plain items.

Asks whether a model that fails the position probe ("a photo of a circle left of a square" against
"... right of ...") reads relations only in coloured wording (web captions name colours in most
relation phrases). The items, masks and scoring are `segros validate`'s (segros.eval.validate);
only the two captions of each item gain the objects' colours. docs/miniature.md ("Is the noise rate
the lever?") quotes it.

    python benchmarks/probe_coloured_relations.py CHECKPOINT [--per-tag 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from segros.backbones.registry import load_backbone
from segros.data.shapes import INVERSE, article, robust_relations
from segros.eval.checkpoint import resolve
from segros.eval.probe_captions import probe_items
from segros.eval.validate import PROBE_SEED, probe_nll, summarize_probe, world_for


def coloured(item: object) -> object:
    """The item with "a <colour> <shape>" for both objects in the true and the flipped caption."""
    a, b = item.scene.objects
    rel = next(iter(robust_relations(a, b)))
    noun = lambda o: f"{article(o.color)} {o.color} {o.shape}"  # noqa: E731
    return dataclasses.replace(
        item,
        true=f"a photo of {noun(a)} {rel} {noun(b)}",
        perturbed=f"a photo of {noun(a)} {INVERSE[rel]} {noun(b)}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--per-tag", type=int, default=300)
    args = parser.parse_args()
    backbone = load_backbone(resolve(args.checkpoint))
    items = probe_items(world_for(backbone, seed=PROBE_SEED), args.per_tag, ("position",))
    out = {}
    for name, batch in (("plain", items), ("coloured", [coloured(i) for i in items])):
        nll = probe_nll(backbone, batch, torch.Generator().manual_seed(0))
        out[name] = summarize_probe(batch, nll)["position"]
        r = out[name]
        print(f"{name:9s} {r['share']:.3f} [{r['low']:.3f}, {r['high']:.3f}]  e.g. {batch[0].true!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
