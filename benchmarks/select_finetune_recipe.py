"""Choose the demo's fine-tuning recipe on validation scenes, never on the 319 evaluation prompts.

Issue 28, item 3: the peak learning rate from {3e-5, 1e-4, 3e-4} and the step count are picked
for SFT, then fixed and applied unchanged to every method. Each cell of the grid fine-tunes the
pretrained TinyUMM with the demo's own recipe (``configs/demo/finetune.yaml``, the demo's cached
training set of mixed aligned captions, seed 0) and scores the result with ``segros validate``'s
library function (fresh scenes from the validation seeds: masked-token loss under aligned captions
and the alignment probe). The pretrained model itself is the first row.

The rule, fixed before any cell ran: the lowest masked-token NLL averaged over the mask ratios
0.5 / 0.8 / 1, among the cells whose probe mean is no lower than the pretrained model's minus
0.02 (fine-tuning must not forget what the caption says); the probe mean breaks ties within 0.005
nats. Cells already computed are read back (``OUT/cells/*.json``), so the script resumes.

    python benchmarks/select_finetune_recipe.py --pretrained runs/pretrain-web --out runs/recipe
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LRS = (3e-5, 1e-4, 3e-4)
STEPS = (200, 400)
PROBE_SLACK = 0.02  # a cell may lose at most this much probe mean against the pretrained model
NLL_TIE = 0.005


def mean_nll(result: dict) -> float:
    return sum(v["nll"] for v in result["nll"].values()) / len(result["nll"])


def cell_name(lr: float, steps: int) -> str:
    return f"sft-lr{lr:g}-steps{steps}"


def run_cell(pretrained: Path, data: Path, layout: str, lr: float, steps: int, out: Path, seed: int) -> dict:
    from segros.apps.demo import finetune_config
    from segros.backbones.registry import load_backbone
    from segros.eval.validate import validate
    from segros.train.loop import train_to_end

    cfg = finetune_config(["method.preset=sft", f"optim.lr={lr}"], seed, pretrained, data, steps, layout)
    start = time.perf_counter()
    final = train_to_end(cfg, out / "runs" / cell_name(lr, steps))
    trained = time.perf_counter() - start
    result = validate(load_backbone(final))
    return {"lr": lr, "steps": steps, "seed": seed, "train_seconds": round(trained, 1), **result}


def choose(pretrained: dict, cells: list[dict]) -> dict:
    """The rule in the module docstring."""
    floor = pretrained["probe_mean"] - PROBE_SLACK
    eligible = [c for c in cells if c["probe_mean"] >= floor] or cells
    best = min(mean_nll(c) for c in eligible)
    tied = [c for c in eligible if mean_nll(c) <= best + NLL_TIE]
    return max(tied, key=lambda c: c["probe_mean"])


def table(rows: list[tuple[str, dict]], chosen: dict | None) -> str:
    tags = list(rows[0][1]["probe"])
    head = "| run | nll 0.5 / 0.8 / 1 | mean nll | i2t nll | " + " | ".join(tags) + " | probe mean |"
    lines = [head, "|" + "---|" * (5 + len(tags))]
    for name, r in rows:
        nll = " / ".join(f"{v['nll']:.3f}" for v in r["nll"].values())
        probe = " | ".join(
            f"{r['probe'][t]['share']:.3f} [{r['probe'][t]['low']:.2f}, {r['probe'][t]['high']:.2f}]"
            for t in tags
        )
        mark = " **chosen**" if chosen is r else ""
        scores = f"{mean_nll(r):.4f} | {r['i2t_nll']:.2f} | {probe} | {r['probe_mean']:.3f}"
        lines.append(f"| {name}{mark} | {nll} | {scores} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pretrained", required=True, help="the pretrained checkpoint (folder or 'pretrained')"
    )
    parser.add_argument("--out", default="runs/recipe-selection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--json", help="also write the selection table as JSON here")
    args = parser.parse_args()

    from segros.apps.demo import settings, training_set, world_of
    from segros.backbones.registry import load_backbone, resolve_checkpoint
    from segros.eval.checkpoint import resolve
    from segros.eval.validate import validate

    out = Path(args.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    pretrained = Path(resolve_checkpoint(resolve(args.pretrained)))  # a run folder: its latest checkpoint
    world = world_of(pretrained)
    data = training_set(out / "cache", settings(False)["train_scenes"], world)

    def cached(name: str, compute) -> dict:
        path = out / "cells" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        result = compute()
        path.write_text(json.dumps(result, indent=1))
        print(
            f"[select] {name}: mean nll {mean_nll(result):.4f}, probe mean {result['probe_mean']:.3f}",
            flush=True,
        )
        return result

    base = cached("pretrained", lambda: validate(load_backbone(pretrained)))
    cells = [
        cached(
            cell_name(lr, steps),
            lambda lr=lr, steps=steps: run_cell(pretrained, data, world["layout"], lr, steps, out, args.seed),
        )
        for lr in args.lrs
        for steps in args.steps
    ]
    chosen = choose(base, cells)
    rows = [("pretrained", base)] + [(cell_name(c["lr"], c["steps"]), c) for c in cells]
    print(table(rows, chosen))
    print(
        f"chosen: lr {chosen['lr']:g}, {chosen['steps']} steps (rule: lowest mean nll with probe mean >= "
        f"{base['probe_mean'] - PROBE_SLACK:.3f}; ties within {NLL_TIE} by probe mean)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rule": __doc__.split("The rule, ")[1].split("\n\n")[0],
                    "pretrained": base,
                    "cells": cells,
                    "chosen": {"lr": chosen["lr"], "steps": chosen["steps"]},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
