"""Per-record read time, shuffled vs sequential, for each map-style reader of image-caption data.

A shuffled read from Parquet read row group by row group (``ParquetImageText``) decompresses a
whole row group for one record (100 rows per group by the Hugging Face default); the Parquet and
``datasets`` paths segros opens now (``ArrowImageText``: memory-mapped Arrow, the Parquet copied
once by ``datasets``) read one row. A read is what training does per record: fetch the bytes,
decode the JPEG, check the caption. The data: ``--records`` random-noise 256 px JPEGs (noise
compresses badly, so a row group is about as large as real photos make it), written as Parquet
with 100-row groups, a ``save_to_disk`` folder and an uncompressed WebDataset tar. Each reader
reads the same ``--reads`` indices in sequential order and in a seeded shuffled order (first
from a cold reader, so no cache helps the shuffled order), alternating, ``--repeats`` times; the
table gives the median per-record time and shuffled / sequential (target: at most 2).

    python benchmarks/data_reads.py [--records 2000] [--reads 400] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from segros.data.hf import open_hf, open_parquet
from segros.data.readers import ParquetImageText, TarImageText


def jpeg(seed: int, size: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_data(folder: Path, records: int, size: int) -> dict[str, Path]:
    from datasets import Dataset, Features, Image, Value
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    images = [jpeg(i, size) for i in range(records)]
    captions = [f"a picture of noise number {i}" for i in range(records)]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {"image": pa.array([{"bytes": b, "path": None} for b in images], type=struct), "caption": captions}
    )
    pq.write_table(table, folder / "train.parquet", row_group_size=100)  # the HF default
    features = Features({"image": Image(), "caption": Value("string")})
    rows = {"image": [{"bytes": b, "path": None} for b in images], "caption": captions}
    Dataset.from_dict(rows, features=features).save_to_disk(str(folder / "saved"))
    with tarfile.open(folder / "train.tar", "w") as tar:
        for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
            for ext, data in (("jpg", image), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"parquet": folder / "train.parquet", "saved": folder / "saved", "tar": folder / "train.tar"}


def readers(paths: dict[str, Path], cache: Path) -> dict[str, object]:
    """Fresh readers (no warm row-group cache carried from one timing to the next)."""
    return {
        "Parquet, by row group (ParquetImageText)": ParquetImageText(paths["parquet"]),
        "Parquet, through datasets (ArrowImageText)": open_parquet(
            [str(paths["parquet"])], "image", "caption", str(cache)
        ),
        "datasets save_to_disk folder (ArrowImageText)": open_hf(str(paths["saved"]), "image", "caption"),
        "WebDataset tar (TarImageText)": TarImageText(paths["tar"]),
    }


def per_record(reader, indices: list[int]) -> float:
    start = time.perf_counter()
    for i in indices:
        record = reader[i]
        assert not hasattr(record, "reason"), record
    return (time.perf_counter() - start) / len(indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="segros-bench-reads-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = write_data(folder, args.records, args.size)
    mb = paths["parquet"].stat().st_size / 2**20
    what = f"{args.records} JPEGs at {args.size} px; Parquet {mb:.1f} MB, 100-row groups; {folder}"
    print(what, file=sys.stderr)
    start = args.records // 4
    sequential = list(range(start, start + args.reads))
    shuffled = random.Random(0).sample(range(args.records), args.reads)
    times: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        for order_name, order in (("sequential", sequential), ("shuffled", shuffled)):
            for name, reader in readers(paths, folder / "hf-cache").items():
                times.setdefault(name, {}).setdefault(order_name, []).append(per_record(reader, order))
    print("| reader | sequential ms/record | shuffled ms/record | shuffled / sequential |")
    print("|---|---|---|---|")
    for name, t in times.items():
        seq, shuf = statistics.median(t["sequential"]), statistics.median(t["shuffled"])
        print(f"| {name} | {1e3 * seq:.2f} | {1e3 * shuf:.2f} | {shuf / seq:.2f} |")


if __name__ == "__main__":
    main()
