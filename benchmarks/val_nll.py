"""Text-conditioned image-token NLL on held-out ShapesWorld scenes, per checkpoint.

A finer instrument than GenEval-style accuracy when a model is too weak to draw judgeable
shapes: how well does the model predict masked image codes from the caption alone (no hints,
the same random masks for every checkpoint)? Lower is better. Also reports the same NLL on
the tokens that lie on objects (where the caption's content is) and the image-to-text NLL.

    python benchmarks/val_nll.py CHECKPOINT [CHECKPOINT ...] [--scenes 512] [--mask-ratio 0.8]

Scenes come from a seed no training run uses (9999), so none was trained on.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from PIL import Image

from segros.backbones.registry import load_backbone
from segros.data.llava import I2TRecord
from segros.data.readers import ImageTextRecord
from segros.data.sources import world_for
from segros.eval.checkpoint import resolve
from segros.eval.pointing import patch_coverage
from segros.plan import make_plan, preset


@torch.no_grad()
def evaluate(path: str, scenes: list, mask_ratio: float, batch_size: int = 64) -> dict[str, float]:
    backbone = load_backbone(path).eval()
    totals = {"nll": 0.0, "nll_on_objects": 0.0, "i2t_nll": 0.0}
    weights = {"nll": 0.0, "nll_on_objects": 0.0, "i2t_nll": 0.0}
    generator = torch.Generator().manual_seed(0)  # the same masks for every checkpoint
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        records = [ImageTextRecord(Image.fromarray(s.image), s.caption, str(i)) for i, s in enumerate(chunk)]
        batch = backbone.prepare_t2i(records)
        B, N = len(batch), backbone.num_tokens
        plan = make_plan(preset("sft"), torch.full((B,), mask_ratio, dtype=torch.float64), N, None, generator)
        on_objects = patch_coverage(
            torch.stack([torch.from_numpy(sum(o.mask for o in s.objects).astype(bool)) for s in chunk]),
            backbone.token_grid,
        ).reshape(B, N)
        for name, weight in (("nll", plan.loss_weight), ("nll_on_objects", plan.loss_weight * on_objects)):
            plan_w = dataclasses.replace(plan, loss_weight=weight)
            totals[name] += float(backbone.reconstruction_loss(batch, plan_w)) * float(weight.sum())
            weights[name] += float(weight.sum())
        i2t = backbone.prepare_i2t(
            [I2TRecord(r.image, [("describe this picture", r.caption)], r.key) for r in records]
        )
        answers = float(i2t.answer_mask[:, 1:].sum())
        totals["i2t_nll"] += float(backbone.i2t_loss(i2t)) * answers
        weights["i2t_nll"] += answers
    return {k: totals[k] / max(weights[k], 1e-9) for k in totals}


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
