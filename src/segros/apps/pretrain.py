"""``segros pretrain``: train the TinyUMM the demo starts from, and record how it was made.

Runs ``configs/demo/pretrain.yaml`` (plain SFT from scratch on ShapesWorld with web-like captions,
the paper's regime; ``--recipe coarse``: ``pretrain-coarse.yaml``, the earlier model's clean coarse
templates) and, with
``--export DIR``, copies the final weights, config and image tokenizer there with a
``PROVENANCE.md`` (command, steps, wall time, versions, SHA-256 of the weights). That is how the
checkpoint shipped in ``segros/assets/tiny-pretrained`` was made: training on a CPU is
deterministic for a given machine, seed and library versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
from pathlib import Path

EXPORTED = ("model.safetensors", "config.json", "image_tokenizer.safetensors")
#: recipe name -> file in configs/demo/
PRETRAIN_RECIPES = {"web": "pretrain.yaml", "coarse": "pretrain-coarse.yaml"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/pretrain", help="run folder (default: runs/pretrain)")
    parser.add_argument(
        "--recipe",
        choices=sorted(PRETRAIN_RECIPES),
        default="web",
        help="web: loose web-like captions (the shipped model); coarse: clean coarse templates "
        "(the earlier model, docs/miniature.md)",
    )
    parser.add_argument("--max-steps", type=int, help="same as run.max_steps=N")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoints/latest (also done when one exists)",
    )
    parser.add_argument("--export", help="copy the final model and PROVENANCE.md to this folder")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")


def train_seconds(out: Path, state: dict) -> float:
    """Training wall time of a finished run: the checkpoint's running total (across resumes), else
    the last ``train_summary.json`` (runs written before the total was kept)."""
    if "train_seconds" in state:
        return float(state["train_seconds"])
    summary = out / "train_summary.json"
    return float(json.loads(summary.read_text()).get("seconds", 0.0)) if summary.is_file() else 0.0


def final_loss(out: Path) -> str:
    summary = out / "train_summary.json"
    loss = json.loads(summary.read_text()).get("final_loss") if summary.is_file() else None
    return "n/a" if loss is None else f"{loss:.4f}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    import torch

    from segros.data.shapes_prompts import SAMPLE_PROMPTS
    from segros.shipped import RECIPES
    from segros.train import checkpoint as ckpt
    from segros.train.config import load_config
    from segros.train.logger import sample_pictures
    from segros.train.loop import train_to_end

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + ([f"run.max_steps={args.max_steps}"] if args.max_steps else [])
    recipe = PRETRAIN_RECIPES[args.recipe]
    cfg = load_config(RECIPES / recipe, overrides)
    start = time.perf_counter()
    if args.resume and ckpt.latest_checkpoint(args.out) is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint under {ckpt.checkpoints_dir(args.out)}")
    trained_now = not ckpt.finished(args.out, cfg.run.max_steps)
    if not trained_now:  # e.g. an export after the run: nothing to train
        print(f"{args.out} is already trained to step {cfg.run.max_steps}")
    pictures = sample_pictures(SAMPLE_PROMPTS)  # ShapesWorld samples every run.picture_every steps
    final = train_to_end(cfg, args.out, pictures)  # continues from a checkpoint when there is one
    state = ckpt.load_trainer_state(final)
    step, seconds = int(state["step"]), train_seconds(Path(args.out), state)
    took = time.perf_counter() - start
    print(f"pretrained to step {step} ({seconds:.0f}s of training; this call {took:.0f}s)")
    if args.export:
        export = Path(args.export)
        export.mkdir(parents=True, exist_ok=True)
        for name in EXPORTED:
            shutil.copy2(final / name, export / name)
        command = "segros pretrain " + " ".join(sys.argv[2:])
        lines = [
            "# Provenance of this pretrained TinyUMM",
            "",
            f"- command: `{command}`",
            f"- recipe: `configs/demo/{recipe}` with overrides {overrides or 'none'}",
            f"- steps: {step} (batch {cfg.data.batch_size} + {cfg.data.i2t_batch_size} image-to-text), "
            f"seed {cfg.run.seed}",
            f"- wall time: {seconds:.0f} s of training, {platform.machine()}, "
            + (f"{torch.get_num_threads()} threads" if trained_now else "threads: as the run was trained"),
            f"- versions: python {platform.python_version()}, torch {torch.__version__}",
            f"- final training loss: {final_loss(Path(args.out))}",
            f"- sha256(model.safetensors): {sha256(export / 'model.safetensors')}",
            "",
            "Re-running the command on the same kind of machine and versions reproduces the weights",
            "bit for bit (training is deterministic on the CPU; see tests/test_train.py). The run",
            "checkpoints every `run.save_every` steps: the same command continues an interrupted run.",
        ]
        (export / "PROVENANCE.md").write_text("\n".join(lines) + "\n")
        print(f"exported to {export}")
    return 0
