"""``segros demo``: SFT vs RecA vs SeGroS on ShapesWorld, end to end, on a CPU.

Stages (each timed):

1. training data: a finite ShapesWorld training set written once to the cache and reused;
2. the pretrained TinyUMM every method starts from: the checkpoint shipped in the package
   (``segros/assets/tiny-pretrained``, provenance next to it), else trained by ``segros pretrain``
   (``segros/recipes/demo-pretrain.yaml``);
3. fine-tuning that checkpoint with ``sft``, ``reca`` and ``segros`` (same steps, data order and
   seeds; paper defaults eta 0.3, rho 0.4, alpha 0.5, lambda 1);
4. generating every evaluation prompt (GenEval layout, 4 samples each) and scoring it with the
   ShapesWorld judge;
5. ``report.md`` and ``report.html``: the GenEval-style table (mean +/- std over seeds), held-out
   vs seen compositions, pointing precision of the grounding map, sample grids, grounding
   pictures, and the wall time per stage.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

METHODS = ("sft", "reca", "segros")
# --ablations: paper ablations as one-knob changes of segros (Tables 3, 5 and 8)
ABLATIONS: dict[str, list[str]] = {
    "segros_eta0": ["method.preset=segros", "method.hint_ratio=0.0"],
    "segros_eta1": ["method.preset=segros", "method.hint_ratio=1.0"],
    "segros_hint_bottom": ["method.preset=segros", "method.hint_pick=bottom"],
    "segros_noise0": ["method.preset=segros", "method.noise_scale=0.0"],
}
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
PACKAGE = Path(__file__).resolve().parent
SHIPPED_PRETRAINED = PACKAGE / "assets" / "tiny-pretrained"
RECIPES = PACKAGE / "recipes"  # demo-pretrain.yaml, demo-finetune.yaml (shipped with the package)


class Stopwatch:
    """Wall time per named stage, printed as it goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"[demo] {name} ...", flush=True)
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        print(f"[demo] {name}: {time.perf_counter() - start:.1f}s", flush=True)
        return result


def settings(quick: bool) -> dict[str, Any]:
    """What ``--quick`` shrinks: a smoke test, its numbers are not meant to be meaningful."""
    if quick:
        return {
            "train_scenes": 512,
            "finetune_steps": 4,
            "samples": 1,
            "prompts_per_tag": 2,
            "pointing_scenes": 32,
            "pretrain_steps": 20,
        }
    return {
        "train_scenes": 20_000,
        "finetune_steps": None,
        "samples": 4,
        "prompts_per_tag": None,
        "pointing_scenes": 256,
        "pretrain_steps": None,
    }


def training_set(cache: Path, scenes: int, image_size: int, seed: int = 2000) -> Path:
    """The cached finite training set (images + data.jsonl); written only if missing."""
    from PIL import Image

    from segros.data.shapes import ShapesWorld

    folder = cache / f"shapes-train-{image_size}px-{scenes}-seed{seed}"
    if (folder / "data.jsonl").is_file():
        print(f"[demo] reusing training data {folder}")
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    world = ShapesWorld(image_size=image_size, seed=seed)
    with open(tmp / "data.jsonl", "w") as f:
        for i in range(scenes):
            scene = world.scene(i)
            Image.fromarray(scene.image).save(tmp / "images" / f"{i:06d}.png")
            f.write(json.dumps({"image": f"images/{i:06d}.png", **scene.to_json()}) + "\n")
    tmp.rename(folder)
    return folder


def pretrained_checkpoint(out: Path, steps: int | None) -> Path:
    """The shipped checkpoint, or one trained now with configs/demo/pretrain.yaml."""
    if (SHIPPED_PRETRAINED / "model.safetensors").is_file():
        print(f"[demo] using the shipped pretrained TinyUMM {SHIPPED_PRETRAINED}")
        return SHIPPED_PRETRAINED
    from segros.train.config import load_config
    from segros.train.loop import train

    run_dir = out / "pretrain"
    overrides = ["run.progress=auto"] + (
        [f"run.max_steps={steps}", f"run.save_every={steps}"] if steps else []
    )
    cfg = load_config(RECIPES / "demo-pretrain.yaml", overrides)
    from segros.train import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and ckpt.load_trainer_state(latest)["step"] >= cfg.run.max_steps:
        return latest
    train(cfg, run_dir, resume=latest is not None)
    return ckpt.latest_checkpoint(run_dir)


def finetune(
    out: Path, name: str, method: list[str], seed: int, pretrained: Path, data: Path, steps: int | None
) -> Path:
    """One fine-tuning run (``method``: config overrides); a finished run folder is reused."""
    from segros.train import checkpoint as ckpt
    from segros.train.config import load_config
    from segros.train.loop import train

    run_dir = out / "runs" / f"{name}-seed{seed}"
    overrides = [
        *method,
        f"run.seed={seed}",
        f"model.init_from={pretrained}",
        "data.source=files",
        f"data.path={data / 'data.jsonl'}",
        "run.progress=auto",
    ]
    if steps:
        overrides += [f"run.max_steps={steps}", f"run.save_every={steps}", "run.picture_every=0"]
    cfg = load_config(RECIPES / "demo-finetune.yaml", overrides)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None or ckpt.load_trainer_state(latest)["step"] < cfg.run.max_steps:
        train(cfg, run_dir, resume=latest is not None)
    return ckpt.latest_checkpoint(run_dir)


def eval_prompts(per_tag: int | None) -> list[dict[str, Any]]:
    from segros.data.shapes_prompts import load_prompts

    records = load_prompts()
    if per_tag is None:
        return records
    picked, counts = [], {}
    for r in records:
        if counts.get(r["tag"], 0) < per_tag:
            picked.append(r)
            counts[r["tag"]] = counts.get(r["tag"], 0) + 1
    return picked


def evaluate(
    checkpoint: Path, folder: Path, records: list[dict[str, Any]], samples: int, seed: int
) -> dict[str, Any]:
    """Generate and judge; a folder already scored for the same checkpoint is reused."""
    from segros.backbones.registry import load_backbone
    from segros.eval.generate import generate_folder, score_shapes_folder

    summary_file = folder / "summary.json"
    if summary_file.is_file():
        saved = json.loads(summary_file.read_text())
        if saved.get("checkpoint") == str(checkpoint) and saved.get("samples") == samples:
            return saved
    shutil.rmtree(folder, ignore_errors=True)
    backbone = load_backbone(checkpoint)
    generate_folder(backbone, records, folder, samples_per_prompt=samples, seed=seed, progress=True)
    summary = score_shapes_folder(folder)
    summary |= {"checkpoint": str(checkpoint), "samples": samples, "split": held_out_split(folder)}
    summary_file.write_text(json.dumps(summary, indent=2))
    return summary


def held_out_split(folder: Path) -> dict[str, float]:
    """Accuracy over images of seen vs held-out compositions."""
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for name, flag in (("seen", False), ("held_out", True)):
        part = [r["correct"] for r in rows if bool(json.loads(r["metadata"]).get("held_out", False)) is flag]
        if part:
            out[name] = sum(part) / len(part)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_demo(
    out: Path,
    quick: bool = False,
    seeds: int = 1,
    cache: Path | None = None,
    ablations: bool = False,
    samples: int | None = None,
) -> Path:
    """Run every stage and write the reports; returns the path of ``report.md``."""
    from segros.backbones.tiny.adapter import cache_dir

    s = settings(quick)
    if samples is not None:
        s["samples"] = samples
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or cache_dir()
    clock = Stopwatch()
    data = clock.run("training data", lambda: training_set(cache, s["train_scenes"], 32))
    pretrained = clock.run("pretrained model", lambda: pretrained_checkpoint(out, s["pretrain_steps"]))
    variants = {m: [f"method.preset={m}"] for m in METHODS} | (ABLATIONS if ablations else {})
    runs: dict[str, list[Path]] = {name: [] for name in variants}
    for name, method in variants.items():
        for seed in range(seeds):
            path = clock.run(
                f"fine-tune {name} seed {seed}",
                lambda n=name, m=method, sd=seed: finetune(
                    out, n, m, sd, pretrained, data, s["finetune_steps"]
                ),
            )
            runs[name].append(path)
    records = eval_prompts(s["prompts_per_tag"])
    # the pretrained model has no training seed: it is evaluated once, with sampling seed 0
    results: dict[str, list[dict[str, Any]]] = {
        "pretrained": [
            clock.run(
                "evaluate pretrained",
                lambda: evaluate(pretrained, out / "eval" / "pretrained-seed0", records, s["samples"], 0),
            )
        ]
    }
    for name in variants:
        results[name] = [
            clock.run(
                f"evaluate {name} seed {seed}",
                lambda n=name, sd=seed, p=path: evaluate(
                    p, out / "eval" / f"{n}-seed{sd}", records, s["samples"], sd
                ),
            )
            for seed, path in enumerate(runs[name])
        ]
    from segros.report import grounding_quality, write_reports

    pointing = clock.run(
        "pointing precision", lambda: grounding_quality(pretrained, runs["segros"][0], s["pointing_scenes"])
    )
    return write_reports(out, results, pointing, runs, pretrained, clock.seconds, records, quick, seeds)


# --- command line -------------------------------------------------------------------------------
def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="smoke run in about a minute (numbers meaningless)"
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning / sampling seeds per method")
    parser.add_argument(
        "--ablations", action="store_true", help="also run segros with eta 0 / 1.0, bottom hints, noise 0"
    )
    parser.add_argument("--samples", type=int, help="images per evaluation prompt (default 4; --quick 1)")


def run(args: Any) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    report = run_demo(out, quick=args.quick, seeds=args.seeds, ablations=args.ablations, samples=args.samples)
    print(f"[demo] report: {report} and {report.with_suffix('.html')}")
    return 0
