"""Training throughput and the loop's wait for data with ``data.workers`` 0, 1 and 2, in one run:
the shipped TinyUMM, tiny Show-o and tiny Harmon, on 256 px JPEGs read from a WebDataset tar, a
Parquet file (100 rows per row group, the Hugging Face default) and a ``datasets`` folder
(``save_to_disk``), all generated here from ShapesWorld scenes with a little noise.

A step is ``Trainer.train_step()`` (read, collate, encode, plan, forward, backward, AdamW), T2I only
(``method.i2t_weight=0``). Per arm: 3 warm-up steps (the workers start in the first), then
``--steps`` timed ones; ``data_wait_share`` is the trainer's own count (time ``train_step`` waited
for the next collated batch over the timed wall time). The three worker settings of a model and
format run one after another, so drift on a shared machine hits them alike. A data format the
readers of this checkout cannot open (the ``datasets`` folder before its reader exists) is
reported as skipped.

    python benchmarks/data_throughput.py [--steps 20] [--batch 16] [--images 640] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny Show-o / Harmon set-ups of the tests

from harmon_helpers import tiny_options as harmon_options  # noqa: E402
from harmon_helpers import tiny_tokenizer  # noqa: E402
from showo_helpers import TINY_ARCH, save_word_tokenizer  # noqa: E402

from segros.data.shapes import ShapesWorld  # noqa: E402
from segros.data.sources import t2i_source  # noqa: E402
from segros.shipped import PRETRAINED_TINY  # noqa: E402
from segros.train.config import validate  # noqa: E402
from segros.train.loop import Trainer  # noqa: E402


def jpeg_records(n: int, size: int = 256) -> list[tuple[bytes, str]]:
    """n ShapesWorld scenes at ``size`` px with mild noise, as JPEG bytes (quality 90) and captions."""
    world, rng = ShapesWorld(image_size=size, seed=0), np.random.default_rng(0)
    out = []
    for i in range(n):
        scene = world.scene(i)
        noisy = np.clip(scene.image.astype(np.int16) + rng.integers(-12, 13, scene.image.shape), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append((buf.getvalue(), scene.caption))
    return out


def write_formats(folder: Path, records: list[tuple[bytes, str]]) -> dict[str, Path]:
    """The same records as a tar shard, a Parquet file and a ``datasets`` folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"tar": folder / "shard-000.tar", "parquet": folder / "train.parquet", "datasets": folder / "hf"}
    with tarfile.open(paths["tar"], "w") as tar:
        for i, (image, caption) in enumerate(records):
            for ext, data in (("jpg", image), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    images = [{"bytes": b, "path": None} for b, _ in records]
    table = pa.table({"image": images, "caption": [c for _, c in records]})
    pq.write_table(table, paths["parquet"], row_group_size=100)
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": images, "caption": [c for _, c in records]}, features=features
    )
    ds.save_to_disk(str(paths["datasets"]))
    return paths


def model_section(name: str, out: Path) -> dict:
    if name == "tiny":
        return {"name": "tiny", "init_from": str(PRETRAINED_TINY)}
    if name == "showo":
        return {
            "name": "showo", "init_from": None, "tokenizer": str(save_word_tokenizer(out / "showo-words")),
            "arch": {**TINY_ARCH, "clip": None}, "image_size": 32, "max_text_len": 16,
        }  # fmt: skip
    return harmon_options(tiny_tokenizer(out / "harmon-words")).model_dump()


def measure(model: dict, path: Path, workers: int, batch: int, steps: int, out: Path) -> dict[str, float]:
    raw = {
        "model": model,
        "method": {"preset": "segros", "i2t_weight": 0.0},
        "data": {"source": "files", "files": {"path": str(path)}, "batch_size": batch, "i2t": "none",
                 "workers": workers},  # fmt: skip
        "run": {"seed": 0, "picture_every": 0, "progress": False},
        "logging": {"tensorboard": False},
    }
    trainer = Trainer(validate(raw), out)
    for _ in range(3):
        trainer.train_step()
    wait0, t0 = trainer.report.data_wait, time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    seconds = time.perf_counter() - t0
    trainer.close_data()
    waited = trainer.report.data_wait - wait0
    return {"steps_per_second": steps / seconds, "data_wait_share": waited / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="segros-data-throughput-"))
    paths = write_formats(out / "data", jpeg_records(args.images))
    rows, skipped = [], {}
    for name, path in paths.items():
        try:  # as the trainer opens data.files.path (a reader added later is picked up here)
            t2i_source(validate({"data": {"source": "files", "files": {"path": str(path)}}}).data, None)
        except (ValueError, FileNotFoundError) as e:
            skipped[name] = f"not readable by this checkout's readers ({e})"
    for model_name in ("tiny", "showo", "harmon"):
        model = model_section(model_name, out)
        for fmt, path in paths.items():
            if fmt in skipped:
                continue
            for workers in (0, 1, 2):
                run = out / f"run-{model_name}-{fmt}-{workers}"
                got = measure(model, path, workers, args.batch, args.steps, run)
                rows.append({"model": model_name, "format": fmt, "workers": workers, **got})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\ntorch threads {torch.get_num_threads()}, batch {args.batch}, {args.steps} timed steps per arm")
    print("| model | format | workers | steps/s | data_wait_share |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['format']} | {r['workers']} | {r['steps_per_second']:.2f} | "
              f"{r['data_wait_share']:.3f} |")  # fmt: skip
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")


if __name__ == "__main__":
    main()
