"""Is SFT's lift alignment, or only more training? The demo's SFT recipe on the pretraining captions.

A reader of "SFT - pretrained > 0" asks whether the aligned captions did it, or whether any 400
more steps would have (the pretrained model stopped at its schedule's end, not at convergence).
This control fine-tunes the same pretrained TinyUMM with exactly the demo's SFT recipe
(``configs/demo/finetune.yaml``: lr, warm-up, steps, batch, seed), changing one thing: the
captions come from the pretraining recipe's caption settings (``configs/demo/pretrain.yaml``,
``data.shapes``: web-like text with its share of curated captions) instead of the demo's aligned
set, drawn from the same world seed as the demo's fine-tuning scenes. It then evaluates each seed
with the demo's evaluation and pairs it with the demo's own pretrained and SFT summaries:

- ``control - pretrained``: what 400 more steps of pretraining-like text do;
- ``sft - control``: what the aligned captions add beyond them (the alignment step itself).

    python benchmarks/sft_on_pretraining_captions.py --demo runs/regime/full --seeds 0 1 2 --out runs/control
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def control_config(seed: int, pretrained: Path, steps: int | None = None):
    """The demo's SFT config for ``seed``, with the pretraining recipe's captions on fresh scenes."""
    from segros.apps.demo import world_of
    from segros.shipped import RECIPES
    from segros.train.config import load_config

    shapes = load_config(RECIPES / "pretrain.yaml").data.shapes  # resolved, as `segros pretrain` reads it
    world = world_of(pretrained)
    overrides = [
        "method.preset=sft",
        f"run.seed={seed}",
        f"model.init_from={pretrained}",
        "data.source=shapes",
        "data.shapes.seed=2000",  # the demo's fine-tuning scenes come from this world seed
        f"data.shapes.layout={world['layout']}",
        f"data.shapes.caption_style={shapes.caption_style}",
        "run.progress=auto",
        "run.picture_every=0",
    ]
    overrides += [f"data.shapes.web_noise.{k}={v}" for k, v in shapes.web_noise.model_dump().items()]
    if steps:
        overrides += [f"run.max_steps={steps}", f"run.save_every={steps}"]
    return load_config(RECIPES / "finetune.yaml", overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", required=True, help="a demo's work folder (holding eval/ and runs/)")
    parser.add_argument("--pretrained", default="pretrained", help="checkpoint the demo started from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/sft-control")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    from segros.apps.report import paired_differences, paired_table
    from segros.backbones.registry import resolve_checkpoint
    from segros.eval.checkpoint import checkpoint_record, evaluate_checkpoint, resolve, saved_evaluation
    from segros.train.loop import train_to_end

    out, demo = Path(args.out), Path(args.demo)
    pretrained = Path(resolve_checkpoint(resolve(args.pretrained)))
    scores: dict[str, list[dict]] = {"pretrained": [], "sft": [], "control": []}
    for seed in args.seeds:
        for name in ("pretrained", "sft"):
            summary = demo / "eval" / f"{name}-seed{seed}" / "summary.json"
            scores[name].append(json.loads(summary.read_text()))
        final = train_to_end(control_config(seed, pretrained), out / "runs" / f"control-seed{seed}")
        folder = out / "eval" / f"control-seed{seed}"
        n = scores["sft"][-1]["prompts"]
        scores["control"].append(
            saved_evaluation(final, folder, n, 4, seed) or evaluate_checkpoint(final, folder, None, 4, seed)
        )

    pairs = (("control", "pretrained"), ("sft", "control"), ("sft", "pretrained"))
    diffs = paired_differences(scores, pairs)
    result = {
        "seeds": args.seeds,
        "pretrained": checkpoint_record(pretrained, out),
        "overall": {name: [s["overall"] for s in runs] for name, runs in scores.items()},
        **diffs,
    }
    header, rows = paired_table(diffs)
    for row in [header, *rows]:
        print(" | ".join(row))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({pair: result[pair]["overall"] for pair in ("control - pretrained", "sft - control")}))


if __name__ == "__main__":
    main()
