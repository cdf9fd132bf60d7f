"""``segros shapes``: write ShapesWorld data to disk.

* ``render-eval``: ground-truth images for every evaluation prompt in GenEval's folder layout (a
  perfect generator, to check the judge); ``--corrupt`` writes deliberately wrong images instead.
* ``make-dataset``: a finite training set, ``images/<i:06d>.png`` plus ``data.jsonl`` records
  ``{image, caption, objects}``, honouring the held-out list unless told otherwise.
"""

from __future__ import annotations

import argparse

CORRUPTIONS = ("none", "permute-colors", "blank")
CAPTION_STYLES = ("mixed", "geneval", "dense", "coarse")  # segros.data.shapes.CAPTION_STYLES


def _layout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout", choices=("free", "grid"), default="free", help="grid: objects snapped to the token grid"
    )
    parser.add_argument("--cells", type=int, default=4, help="grid cells per side for --layout grid")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="shapes_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("render-eval", help="render ground-truth images for the evaluation prompts")
    p.add_argument("--out", required=True, help="output folder (GenEval layout)")
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--prompts", default=None, help="GenEval metadata JSONL (default: ours)")
    _layout_arguments(p)
    p.add_argument(
        "--corrupt",
        choices=CORRUPTIONS,
        default="none",
        help="permute-colors: every object in a wrong colour (a fixed derangement); blank: background only",
    )
    d = sub.add_parser("make-dataset", help="write a training set of images + data.jsonl")
    d.add_argument("--out", required=True)
    d.add_argument("--n", type=int, required=True, help="number of samples")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--caption-style", choices=CAPTION_STYLES, default="mixed")
    _layout_arguments(d)
    d.add_argument("--include-held-out", action="store_true", help="do not hold out evaluation compositions")


def run(args: argparse.Namespace) -> int:
    if args.shapes_command == "render-eval":
        return _render_eval(args)
    return _make_dataset(args)


def _render_eval(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from segros.data.geneval_prompts import write_prompt_metadata
    from segros.data.shapes import BACKGROUND, COLORS, UnsupportedPromptError, render, render_prompt
    from segros.data.shapes_prompts import load_prompts

    derangement = dict(zip(COLORS, COLORS[3:] + COLORS[:3], strict=True))
    records = load_prompts(args.prompts)
    unsupported = 0
    for index, metadata in enumerate(records):
        folder = write_prompt_metadata(args.out, index, metadata)
        for n in range(args.samples_per_prompt):
            rng = np.random.default_rng([args.seed, index, n])
            try:
                scene = render_prompt(metadata, rng, args.image_size, args.layout, args.cells)
                image = scene.image
            except UnsupportedPromptError:
                unsupported += n == 0
                image = np.full((args.image_size, args.image_size, 3), BACKGROUND, dtype=np.uint8)
            else:
                if args.corrupt == "permute-colors":
                    for obj in scene.objects:
                        obj.color = derangement[obj.color]
                    image = render(scene.objects, args.image_size)
                elif args.corrupt == "blank":
                    image = np.full_like(image, BACKGROUND)
            Image.fromarray(image).save(folder / "samples" / f"{n}.png")
    print(
        f"wrote {len(records)} prompts x {args.samples_per_prompt} samples to {args.out}"
        f" ({unsupported} prompts unsupported, drawn blank)"
    )
    return 0


def _make_dataset(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from PIL import Image

    from segros.data.shapes import ShapesWorld

    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(
        image_size=args.image_size,
        seed=args.seed,
        exclude_held_out=not args.include_held_out,
        caption_style=args.caption_style,
        layout=args.layout,
        cells=args.cells,
    )
    with open(out / "data.jsonl", "w", encoding="utf-8") as fp:
        for i in range(args.n):
            scene = world.scene(i)
            name = f"images/{i:06d}.png"
            Image.fromarray(scene.image).save(out / name)
            fp.write(json.dumps({"image": name, **scene.to_json()}) + "\n")
    print(f"wrote {args.n} samples to {out}")
    return 0
