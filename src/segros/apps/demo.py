"""``segros demo``: SFT vs RecA vs SeGroS on ShapesWorld, end to end, on a CPU.

Stages (each timed):

1. the pretrained TinyUMM every method starts from: the checkpoint shipped in the package
   (``segros/assets/tiny-pretrained``, provenance next to it), else trained by ``segros pretrain``
   (``configs/demo/pretrain.yaml``: coarse captions);
2. fine-tuning data: a finite ShapesWorld training set drawn as the pretrained model sees scenes,
   with dense compositional captions, written once to the cache and reused;
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
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from segros.eval.checkpoint import evaluate_checkpoint, saved_evaluation
from segros.runlock import lock_folder
from segros.shipped import PRETRAINED_TINY, RECIPES

# RecA conditions on the understanding path's view of the clean image (TinyUMM's counterpart of
# RecA's understanding-encoder features), not on the codes it reconstructs (docs/miniature.md)
METHODS: dict[str, list[str]] = {
    "sft": ["method.preset=sft"],
    "reca": ["method.preset=reca", "model.hint_source=understanding"],
    "segros": ["method.preset=segros"],
}
# --ablations: paper ablations as one-knob changes of segros (Tables 3, 5 and 8), and the
# visual-hint knobs beyond the paper's defaults (hint positions, stopwords, hint dropout)
ABLATIONS: dict[str, list[str]] = {
    "segros_eta0": ["method.preset=segros", "method.hint_ratio=0.0"],
    "segros_eta1": ["method.preset=segros", "method.hint_ratio=1.0"],
    "segros_hint_bottom": ["method.preset=segros", "method.hint_pick=bottom"],
    "segros_noise0": ["method.preset=segros", "method.noise_scale=0.0"],
    "segros_hint_slot": ["method.preset=segros", "method.hint_position=slot"],
    "segros_stopwords": ["method.preset=segros", "method.text_stopwords=english"],
    "segros_hint_prob05": ["method.preset=segros", "method.hint_prob=0.5"],
}


class Stopwatch:
    """Wall time per named stage, printed as it goes and kept in ``stage_times.json``.

    A stage whose result already exists (``done()`` is true before it runs) is reused: it keeps
    the wall time it took when it was first computed, and is marked ``reused``.
    """

    def __init__(self, record: Path | None = None) -> None:
        self.record = record
        self.first: dict[str, float] = {}
        if record is not None and record.is_file():
            self.first = json.loads(record.read_text())
        self.seconds: dict[str, float] = {}
        self.reused: set[str] = set()

    def run(self, name: str, fn: Callable[[], Any], done: Callable[[], bool] = lambda: False) -> Any:
        print(f"[demo] {name} ...", flush=True)
        reused = done()
        start = time.perf_counter()
        result = fn()
        took = time.perf_counter() - start
        if reused and name in self.first:
            self.seconds[name] = self.first[name]
            self.reused.add(name)
            print(f"[demo] {name}: reused (first computed in {self.first[name]:.1f}s)", flush=True)
        else:
            self.seconds[name] = took
            self.first[name] = took
            print(f"[demo] {name}: {took:.1f}s", flush=True)
            if self.record is not None:  # merge: demo runs over other seeds may share the folder
                merged = json.loads(self.record.read_text()) if self.record.is_file() else {}
                merged[name] = took
                tmp = self.record.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(merged, indent=1))
                tmp.replace(self.record)
        return result


def shapes_pictures() -> Any:
    """Sample pictures of the fixed ShapesWorld prompts, for the trainer's picture callback."""
    from segros.data.shapes_prompts import SAMPLE_PROMPTS
    from segros.train.logger import sample_pictures

    return sample_pictures(SAMPLE_PROMPTS)


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


# Fine-tuning data: the scenes the pretrained model was trained to draw (its image size, objects
# snapped to its token grid) with dense, compositional captions (GenEval templates and dense
# descriptions, "mixed"), as the paper fine-tunes on well-aligned captions after coarse-caption
# pretraining (docs/miniature.md).
FINETUNE_CAPTIONS = "mixed"


def world_of(checkpoint: Path) -> dict[str, Any]:
    """ShapesWorld settings matching a TinyUMM checkpoint (or a run folder: its latest checkpoint):
    image size, layout, grid cells."""
    from segros.backbones.registry import resolve_checkpoint

    options = json.loads((Path(resolve_checkpoint(checkpoint)) / "config.json").read_text())["options"]
    return {
        "image_size": options["image_size"],
        "layout": options.get("shapes_layout", "free"),
        "cells": options["tokens_per_side"],
    }


def training_set_folder(cache: Path, scenes: int, world: dict[str, Any], seed: int = 2000) -> Path:
    kind = f"{world['image_size']}px-{world['layout']}{world['cells']}-{FINETUNE_CAPTIONS}"
    return cache / f"shapes-train-{kind}-{scenes}-seed{seed}"


def training_set(cache: Path, scenes: int, world: dict[str, Any], seed: int = 2000) -> Path:
    """The cached finite fine-tuning set (images + data.jsonl); written only if missing."""
    folder = training_set_folder(cache, scenes, world, seed)
    # demos in other folders share the cache: one writes the set while the others wait for it
    with lock_folder(cache, key=folder.name, wait=True):
        return _write_training_set(folder, scenes, world, seed)


def _write_training_set(folder: Path, scenes: int, world: dict[str, Any], seed: int) -> Path:
    from PIL import Image

    from segros.data.shapes import ShapesWorld

    if (folder / "data.jsonl").is_file():
        print(f"[demo] reusing training data {folder}")
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    shapes = ShapesWorld(seed=seed, caption_style=FINETUNE_CAPTIONS, **world)
    with open(tmp / "data.jsonl", "w") as f:
        for i in range(scenes):
            scene = shapes.scene(i)
            Image.fromarray(scene.image).save(tmp / "images" / f"{i:06d}.png")
            f.write(json.dumps({"image": f"images/{i:06d}.png", **scene.to_json()}) + "\n")
    tmp.rename(folder)
    return folder


def pretrained_checkpoint(out: Path, steps: int | None, given: Path | None = None) -> Path:
    """``given`` (``--pretrained``: a TinyUMM checkpoint or run folder, its latest checkpoint), else
    the shipped checkpoint, else one trained now with configs/demo/pretrain.yaml."""
    if given is not None:
        from segros.backbones.registry import resolve_checkpoint, saved_config

        path = Path(resolve_checkpoint(given))
        config = saved_config(path)
        if config is None or config.get("backbone") != "tiny":
            found = "no segros checkpoint" if config is None else f"a {config.get('backbone')} checkpoint"
            raise ValueError(f"--pretrained {given}: the demo fine-tunes a TinyUMM; this is {found}")
        print(f"[demo] using the pretrained TinyUMM {path}")
        return path
    if (PRETRAINED_TINY / "model.safetensors").is_file():
        print(f"[demo] using the shipped pretrained TinyUMM {PRETRAINED_TINY}")
        return PRETRAINED_TINY
    from segros.train.config import load_config
    from segros.train.loop import train_to_end

    run_dir = out / "pretrain"
    overrides = ["run.progress=auto"] + (
        [f"run.max_steps={steps}", f"run.save_every={steps}"] if steps else []
    )
    return train_to_end(load_config(RECIPES / "pretrain.yaml", overrides), run_dir, shapes_pictures())


def same_config(run_dir: Path, cfg: Any) -> bool:
    """True if the run in ``run_dir`` was (last) started with exactly ``cfg``: a method whose
    settings changed since (a new preset value, another recipe) must not reuse the old run."""
    from segros.train.config import ConfigError, dump_config, load_config

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    try:  # read with today's schema: a field added since, at its default, is no change
        return dump_config(load_config(saved)) == dump_config(cfg)
    except ConfigError:
        return False


def set_aside_if_changed(run_dir: Path, cfg: Any) -> Path:
    """``run_dir``, emptied for a fresh start when it holds a run of another config: that run is
    renamed ``<name>.stale-N`` beside it (never deleted), else resuming would mix the two."""
    if (run_dir / "config.yaml").is_file() and not same_config(run_dir, cfg):
        n = 1
        while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
            n += 1
        stale = run_dir.rename(run_dir.with_name(f"{run_dir.name}.stale-{n}"))
        print(f"[demo] {run_dir.name}: its config changed; the old run is kept as {stale.name}", flush=True)
    return run_dir


def finetune_config(
    method: list[str], seed: int, pretrained: Path, data: Path, steps: int | None, layout: str
) -> Any:
    from segros.train.config import load_config

    overrides = [
        *method,
        f"run.seed={seed}",
        f"model.init_from={pretrained}",
        "data.source=files",
        f"data.files.path={data / 'data.jsonl'}",
        # the image-to-text term reads ShapesWorld scenes drawn like the model's (world_of)
        f"data.shapes.layout={layout}",
        f"data.shapes.caption_style={FINETUNE_CAPTIONS}",
        "run.progress=auto",
    ]
    if steps:
        overrides += [f"run.max_steps={steps}", f"run.save_every={steps}", "run.picture_every=0"]
    return load_config(RECIPES / "finetune.yaml", overrides)


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


def run_demo(
    out: Path,
    quick: bool = False,
    seeds: int = 1,
    cache: Path | None = None,
    ablations: bool | list[str] = False,
    samples: int | None = None,
    first_seed: int = 0,
    pretrained: Path | None = None,
    methods: list[str] | None = None,
) -> Path:
    """Run every stage and write the reports; returns the path of ``report.md``.

    Seeds ``first_seed .. first_seed + seeds - 1`` are fine-tuning and sampling seeds. Quick and
    full runs keep their runs and evaluations in separate sub-folders (``quick/`` and ``full/``),
    so a ``--quick`` smoke run never collides with a full run in the same output folder.

    Demos over other seeds may share the folder at the same time; each seed is locked
    (:mod:`segros.runlock`), so a second demo of a seed already running refuses, naming the first.

    ``pretrained`` starts every method from another TinyUMM checkpoint than the shipped one (runs
    and evaluations made from a different start are set aside or redone, never reused); ``methods``
    runs only some of :data:`METHODS` (the pointing precision after SeGroS needs ``segros``).
    """
    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown or methods == []:
        raise ValueError(f"methods must be some of {', '.join(METHODS)}; got {methods}")
    s = settings(quick)
    if samples is not None:
        s["samples"] = samples
    out.mkdir(parents=True, exist_ok=True)
    work = out / ("quick" if quick else "full")
    work.mkdir(exist_ok=True)
    seed_list = list(range(first_seed, first_seed + seeds))
    with ExitStack() as held:
        for seed in seed_list:
            held.enter_context(lock_folder(work, key=f"seed{seed}"))
        return _run_stages(out, work, s, seed_list, cache, ablations, quick, pretrained, methods)


def _run_stages(
    out: Path,
    work: Path,
    s: dict[str, Any],
    seed_list: list[int],
    cache: Path | None,
    ablations: bool | list[str],
    quick: bool,
    given_pretrained: Path | None = None,
    methods: list[str] | None = None,
) -> Path:
    """The stages of :func:`run_demo`, with its seeds locked."""
    from segros.backbones.tiny.image_tokenizer import cache_dir
    from segros.train import checkpoint as ckpt
    from segros.train.loop import train_to_end

    cache = cache or cache_dir()
    clock = Stopwatch(work / "stage_times.json")
    pretrained = clock.run(
        "pretrained model",
        lambda: pretrained_checkpoint(work, s["pretrain_steps"], given_pretrained),
        done=lambda: given_pretrained is not None or (PRETRAINED_TINY / "model.safetensors").is_file(),
    )
    world = world_of(pretrained)
    data = clock.run(
        "training data",
        lambda: training_set(cache, s["train_scenes"], world),
        done=lambda: (training_set_folder(cache, s["train_scenes"], world) / "data.jsonl").is_file(),
    )
    picked = list(ABLATIONS) if ablations is True else list(ablations or ())  # True: every ablation
    chosen = {name: args for name, args in METHODS.items() if methods is None or name in methods}
    variants = chosen | {name: ABLATIONS[name] for name in picked}
    runs: dict[str, list[Path]] = {name: [] for name in variants}
    for name, method in variants.items():
        for seed in seed_list:
            cfg = finetune_config(method, seed, pretrained, data, s["finetune_steps"], world["layout"])
            run_dir = work / "runs" / f"{name}-seed{seed}"
            path = clock.run(
                f"fine-tune {name} seed {seed}",
                lambda r=run_dir, c=cfg: train_to_end(c, set_aside_if_changed(r, c), shapes_pictures()),
                done=lambda r=run_dir, c=cfg: ckpt.finished(r, c.run.max_steps) and same_config(r, c),
            )
            runs[name].append(path)
    records = eval_prompts(s["prompts_per_tag"])

    def evaluation(name: str, checkpoint: Path, seed: int) -> dict[str, Any]:
        folder = work / "eval" / f"{name}-seed{seed}"
        return clock.run(
            f"evaluate {name} seed {seed}",
            lambda: evaluate_checkpoint(checkpoint, folder, records, s["samples"], seed),
            done=lambda: saved_evaluation(checkpoint, folder, len(records), s["samples"], seed) is not None,
        )

    # the pretrained model has no training seed: it is sampled with every sampling seed
    results: dict[str, list[dict[str, Any]]] = {
        "pretrained": [evaluation("pretrained", pretrained, seed) for seed in seed_list]
    }
    for name in variants:
        results[name] = [
            evaluation(name, path, seed) for seed, path in zip(seed_list, runs[name], strict=True)
        ]
    from segros.apps.report import grounding_quality, write_reports

    segros_run = runs["segros"][0] if "segros" in runs else None
    pointing = clock.run(
        "pointing precision", lambda: grounding_quality(pretrained, segros_run, s["pointing_scenes"])
    )
    return write_reports(out, work, results, pointing, runs, pretrained, clock, records, quick, seed_list)


# --- command line -------------------------------------------------------------------------------
def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="smoke run in about a minute (numbers meaningless)"
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning / sampling seeds per method")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (runs seeds S .. S+seeds-1)")
    parser.add_argument(
        "--ablations",
        nargs="*",
        choices=sorted(ABLATIONS),
        metavar="NAME",
        help="also run segros with eta 0 / 1.0, bottom hints, noise 0, slot hints, stopwords, hint_prob 0.5; "
        f"names pick some of them ({', '.join(ABLATIONS)})",
    )
    parser.add_argument("--samples", type=int, help="images per evaluation prompt (default 4; --quick 1)")
    parser.add_argument(
        "--pretrained",
        metavar="CHECKPOINT",
        help="start every method from this TinyUMM checkpoint or run folder (default: the shipped model)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(METHODS),
        metavar="NAME",
        help=f"run only these methods (default: all of {', '.join(METHODS)})",
    )


def run(args: Any) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.seeds < 1 or args.first_seed < 0:
        print("segros demo: error: --seeds must be >= 1 and --first-seed >= 0")
        return 2
    report = run_demo(
        out,
        quick=args.quick,
        seeds=args.seeds,
        ablations=None if args.ablations is None else (args.ablations or list(ABLATIONS)),
        samples=args.samples,
        first_seed=args.first_seed,
        pretrained=None if args.pretrained is None else Path(args.pretrained),
        methods=args.methods,
    )
    print(f"[demo] report: {report} and {report.with_suffix('.html')}")
    return 0
