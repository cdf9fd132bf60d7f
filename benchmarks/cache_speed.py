"""Training step time from the pre-encoded image cache vs from images, Harmon-tiny and Show-o-tiny,
in one run, as a ratio (cache / images; below 1 is faster).

A step is what the trainer does per optimizer step: read the records, ``prepare_t2i`` (Show-o's
MAGVIT-v2 encoder runs here from images), the grounding and plan, forward (Harmon's VAE runs here
from images), backward, AdamW. The image-to-text term is off (``method.i2t_weight=0``) so both
arms read the same kind of data; runs alternate images / cache so drift hits both alike. The tiny
models come from the test helpers (a word-level tokenizer, random weights).

    python benchmarks/cache_speed.py [--repeats 20] [--batch 8] [--out /tmp/segros-bench-cache]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny Show-o / Harmon set-ups of the tests

from harmon_helpers import tiny_options as harmon_options  # noqa: E402
from harmon_helpers import tiny_tokenizer  # noqa: E402
from showo_helpers import TINY_ARCH, save_word_tokenizer  # noqa: E402

from segros.backbones.registry import build_backbone  # noqa: E402
from segros.data.cache import write_cache  # noqa: E402
from segros.data.sources import t2i_source  # noqa: E402
from segros.losses import total_loss  # noqa: E402
from segros.train.config import validate  # noqa: E402
from segros.train.loop import Trainer  # noqa: E402


def raw_config(name: str, out: Path, batch: int, scenes: int) -> dict:
    if name == "showo":
        model = {
            "name": "showo", "init_from": None, "tokenizer": str(save_word_tokenizer(out / "showo-words")),
            "arch": {**TINY_ARCH, "clip": None}, "image_size": 32, "max_text_len": 16,
        }  # fmt: skip
    else:
        model = harmon_options(tiny_tokenizer(out / "harmon-words")).model_dump()
    return {
        "model": model,
        "method": {"preset": "segros", "i2t_weight": 0.0},
        "data": {"source": "shapes", "batch_size": batch, "i2t": "none", "shapes": {"scenes": scenes}},
        "run": {"seed": 0, "picture_every": 0, "progress": False},
        "logging": {"tensorboard": False},
    }


def step_times(trainer: Trainer, repeats: int) -> list[float]:
    it, out = iter(trainer.t2i), []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        batch, plan, _ = trainer._micro_batch(it, None)
        terms = trainer.model(batch, plan=plan)
        trainer.accelerator.backward(total_loss(terms["recon"], 0.0, 0.0))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if i >= 2:  # warm-up
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default="/tmp/segros-bench-cache")
    args = p.parse_args()
    out = Path(args.out)
    scenes = args.batch * (args.repeats + 2)  # one pass, no record read twice
    report = {"threads": torch.get_num_threads(), "batch": args.batch, "repeats": args.repeats}
    for name in ("harmon", "showo"):
        raw = raw_config(name, out, args.batch, scenes)
        cfg = validate(raw)
        torch.manual_seed(0)
        backbone = build_backbone(cfg.model_options())
        source = t2i_source(cfg.data, backbone)
        cache = out / f"{name}-cache"
        write_cache(backbone, source, cfg.data, name, cache)
        cached_cfg = validate({**raw, "data": {**raw["data"], "cache": str(cache)}})
        times: dict[str, list[float]] = {"images": [], "cache": []}
        for arm in ("images", "cache", "images", "cache"):
            trainer = Trainer(cfg if arm == "images" else cached_cfg, out / f"{name}-{arm}")
            times[arm] += step_times(trainer, max(1, args.repeats // 2))
        images, cached = statistics.median(times["images"]), statistics.median(times["cache"])
        report[name] = {
            "images_ms": round(images * 1e3, 2),
            "cache_ms": round(cached * 1e3, 2),
            "ratio_cache_over_images": round(cached / images, 3),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
