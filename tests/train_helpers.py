"""Shared pieces of the training tests: a small fitted image tokenizer and tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segros.backbones.tiny.image_tokenizer import PatchTokenizer
from segros.data.shapes import ShapesWorld
from segros.train.config import load_config


def fit_small_tokenizer(path: Path, image_size: int = 32, num_codes: int = 64) -> Path:
    world = ShapesWorld(image_size=image_size, seed=0)
    images = torch.from_numpy(np.stack([world.scene(i).image for i in range(64)]))
    PatchTokenizer.fit(images, num_codes, image_size // 8, torch.Generator().manual_seed(0), 4).save(path)
    return path


def tiny_config(tokenizer: Path, *overrides: str):
    """The tiny model on 32 px ShapesWorld, small batches, no periodic pictures or logs."""
    base = [
        f"model.image_tokenizer={tokenizer}",
        "model.image_size=32",
        "data.batch_size=4",
        "run.max_steps=6",
        "run.save_every=3",
        "run.log_every=2",
        "run.picture_every=0",
        "run.progress=off",
        "logging.tensorboard=false",
        "optim.warmup_steps=2",
    ]
    return load_config(None, [*base, *overrides])


def tiny_model_section(name: str, request, small_tokenizer: Path) -> dict:
    """The ``model:`` section of a tiny random ``tiny`` / ``showo`` / ``harmon`` / ``openuni`` /
    ``bagel`` backbone (32 px, no download); Show-o and Harmon take their tokenizer fixtures from
    ``request``."""
    from harmon_helpers import tiny_options as harmon_options
    from showo_helpers import TINY_ARCH

    if name == "tiny":
        return {"name": "tiny", "image_tokenizer": str(small_tokenizer), "image_size": 32}
    if name == "showo":
        tok = request.getfixturevalue("showo_tokenizer")
        return {
            "name": "showo", "init_from": None, "tokenizer": str(tok), "arch": {**TINY_ARCH, "clip": None},
            "image_size": 32, "max_text_len": 16, "generation_steps": 2,
        }  # fmt: skip
    if name == "harmon":
        return harmon_options(request.getfixturevalue("harmon_tokenizer")).model_dump()
    if name == "openuni":  # tiny InternVL3 + SANA + DC-AE, built-in word-level tokenizer
        return {"name": "openuni", "size": "tiny", "image_size": 32, "generation_steps": 2}
    if name == "bagel":  # tiny Qwen2 MoT + SigLIP + FLUX-layout VAE, built-in word-level tokenizer
        return {"name": "bagel", "size": "tiny", "image_size": 32, "vit_image_size": 32,
                "generation_steps": 2}  # fmt: skip
    raise KeyError(f"no tiny model: section for backbone {name!r}: add one here (tests run every backbone)")


def plan_for(bb, batch, name: str = "segros", seed: int = 0, **knobs):
    """A method's supervision plan for ``batch`` from one seeded generator (mask ratio included)."""
    from segros.plan import preset
    from segros.supervision import ground_and_plan, sample_ratio

    gen = torch.Generator().manual_seed(seed)
    return ground_and_plan(bb, batch, preset(name, **knobs), sample_ratio(bb, len(batch), gen), gen)


def recon(bb, batch, plan, seed: int = 7) -> torch.Tensor:
    """The reconstruction loss without gradient, the global RNG seeded (flow and diffusion noise)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return bb.reconstruction_loss(batch.replace(), plan)


def check_inspect_and_generate(main, run: Path, tmp_path: Path, capsys, grid: str) -> None:
    """``segros inspect`` on a ShapesWorld scene reports the run's ``grid`` (e.g. "8x8") and writes
    its picture; ``segros generate`` writes two 32 px samples of one GenEval prompt."""
    import json

    from PIL import Image

    scene = ShapesWorld(image_size=32, seed=0).scene(0)
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    main(["inspect", "--image", str(tmp_path / "scene.png"), "--caption", scene.caption,
          "--checkpoint", str(run), "--out", str(tmp_path / "inspect.png")])  # fmt: skip
    assert f"{grid} grid" in capsys.readouterr().out and (tmp_path / "inspect.png").is_file()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                                   "prompt": "a photo of a circle"}) + "\n")  # fmt: skip
    main(["generate", "--checkpoint", str(run), "--benchmark", "geneval", "--prompts", str(prompts),
          "--out", str(tmp_path / "gen"), "--samples", "2"])  # fmt: skip
    images = sorted((tmp_path / "gen" / "00000" / "samples").glob("*.png"))
    assert len(images) == 2 and Image.open(images[0]).size == (32, 32)
