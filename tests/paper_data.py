"""Small copies of the paper's datasets in the layout and with the column names they ship with.

Each builder writes random pictures in the published layout (docs/data.md says where each
layout comes from) and returns what ``segros train`` is given for that dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from _data_files import jpeg_bytes, png_bytes

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def picture(seed: int, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def hub_cache_repo(root: Path, repo_id: str) -> Path:
    """An empty ``datasets--owner--name`` folder as ``huggingface_hub.snapshot_download`` lays it
    out (``refs/main`` naming the snapshot); returns the snapshot folder to fill."""
    folder = root / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


def blip3o_60k(root: Path, shards: int = 3, per_shard: int = 12) -> Path:
    """BLIP3o-60k: WebDataset tar shards at the repository's top, each sample a ``.jpg`` and a
    ``.txt`` prompt, written by webdataset's TarWriter; in the hub cache layout. Returns the
    ``datasets--BLIP3o--BLIP3o-60k`` folder (what ``data.files.path`` names)."""
    import webdataset as wds

    snapshot = hub_cache_repo(root, "BLIP3o/BLIP3o-60k")
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\npretty_name: BLIP3o-60k\n---\n")
    for s in range(shards):
        with wds.TarWriter(str(snapshot / f"{s:05d}.tar")) as sink:
            for k in range(per_shard):
                n = s * per_shard + k
                sample = {"__key__": f"{n:08d}", "jpg": jpeg_bytes(picture(n)), "txt": f"a photo number {n}"}
                sink.write(sample)
    return snapshot.parent.parent


def midjourney_v6(root: Path, rows: int = 40) -> Path:
    """MidjourneyV6 as a dataset repository downloaded with ``--local-dir``: a card and
    ``data/train-00000-of-00001.parquet`` with an ``image`` column (a ``datasets.Image``
    feature) and the ``prompt`` column. Returns the folder."""
    from datasets import Dataset, Features, Image, Value

    folder = root / "midjourney-v6"
    (folder / "data").mkdir(parents=True)
    features = Features({"image": Image(), "prompt": Value("string"), "id": Value("string")})
    table = Dataset.from_dict(
        {
            "image": [{"bytes": png_bytes(picture(100 + i)), "path": None} for i in range(rows)],
            "prompt": [f"a cinematic painting of scene {i} --v 6" for i in range(rows)],
            "id": [f"mj-{i}" for i in range(rows)],
        },
        features=features,
    )
    table.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/train-*\n---\n# midjourney-v6\n"
    )
    return folder


def midjourney_v6_release(root: Path, rows: int = 24) -> Path:
    """``CortexLM/midjourney-v6`` as released (its card's ``dataset_info``): one Parquet file of
    ``prompt``, ``image_url`` and ``timestamp``, links and no image bytes. Returns the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "CortexLM-midjourney-v6"
    (folder / "data").mkdir(parents=True)
    table = pa.table(
        {
            "prompt": [f"a cinematic painting of scene {i} --v 6" for i in range(rows)],
            "image_url": [f"https://cdn.example.invalid/mj/{i}.png" for i in range(rows)],
            "timestamp": pa.array(
                [1_715_000_000_000_000_000 + i for i in range(rows)], pa.timestamp("ns", "UTC")
            ),
        }
    )
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text(
        "---\nlicense: mit\ndataset_info:\n  features:\n  - name: prompt\n    dtype: string\n"
        "  - name: image_url\n    dtype: string\n  - name: timestamp\n    dtype: timestamp[ns, tz=UTC]\n"
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n"
    )
    return folder


def img2dataset_output(root: Path, release: Path, per_shard: int = 10) -> Path:
    """What ``img2dataset --url_col image_url --caption_col prompt --output_format webdataset``
    writes from a release: ``00000.tar`` shards of ``<key>.jpg``, ``<key>.txt`` (the prompt) and
    ``<key>.json`` (url, caption, key, status), each with a metadata ``00000.parquet`` and
    ``00000_stats.json`` beside it (the images here are random, standing in for the downloads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    rows = pq.read_table(next((release / "data").glob("*.parquet"))).to_pylist()
    folder = root / "midjourney-v6-images"
    folder.mkdir()
    for s in range(0, len(rows), per_shard):
        shard = s // per_shard
        meta = []
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for n, row in enumerate(rows[s : s + per_shard]):
                key = f"{shard:05d}{n:04d}"
                info = {"url": row["image_url"], "caption": row["prompt"], "key": key, "status": "success"}
                sink.write(
                    {
                        "__key__": key,
                        "jpg": jpeg_bytes(picture(400 + s + n)),
                        "txt": row["prompt"],
                        "json": info,
                    }
                )
                meta.append(info)
        pq.write_table(pa.Table.from_pylist(meta), folder / f"{shard:05d}.parquet")
        (folder / f"{shard:05d}_stats.json").write_text(
            json.dumps({"count": len(meta), "successes": len(meta)})
        )
    return folder


def sharegpt_4o_image(root: Path, rows: int = 30) -> Path:
    """ShareGPT-4o-Image's text-to-image part after its image archive is extracted:
    ``text_to_image.json``, a list of ``{"input_prompt", "output_image"}`` with the image path
    relative to the file. Returns the JSON file."""
    folder = root / "ShareGPT-4o-Image"
    (folder / "text_to_image").mkdir(parents=True)
    records = []
    for i in range(rows):
        name = f"text_to_image/{i:06d}.png"
        (folder / name).write_bytes(png_bytes(picture(200 + i)))
        records.append({"input_prompt": f"a poster with the word {i}", "output_image": name})
    (folder / "text_to_image.json").write_text(json.dumps(records))
    return folder / "text_to_image.json"


def llava_mix665k(root: Path, rows: int = 50, text_only: int = 3) -> tuple[Path, Path]:
    """LLaVA-1.5's ``llava_v1_5_mix665k.json`` (and LLaVA-Instruct-150K's layout): a JSON list of
    ``{"id", "image", "conversations"}`` with image paths under one root (``coco/train2017/...``,
    ``gqa/images/...``), and text-only ShareGPT rows with no ``image`` key. Returns (JSON, root)."""
    images = root / "llava-images"
    rows_out = []
    prefixes = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K")
    spacing = rows // max(1, text_only)
    for i in range(rows):
        if text_only and i % spacing == spacing - 1 and sum("image" not in r for r in rows_out) < text_only:
            rows_out.append(
                {
                    "id": f"sharegpt-{i}",
                    "model": "",
                    "conversations": [
                        {"from": "human", "value": "Write a haiku."},
                        {"from": "gpt", "value": "ok"},
                    ],
                }
            )
            continue
        rel = f"{prefixes[i % len(prefixes)]}/{i:012d}.jpg"
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(jpeg_bytes(picture(300 + i)))
        rows_out.append(
            {
                "id": f"{i:012d}",
                "image": rel,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is in the picture?"},
                    {"from": "gpt", "value": f"Noise pattern {i}."},
                ],
            }
        )
    path = root / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(rows_out))
    return path, images
