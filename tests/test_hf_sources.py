"""Hugging Face ``datasets`` as map-style image-caption sources, all offline on local folders."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _data_files import CORRUPT, pixels, png_bytes
from datasets import Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from segros.data.columns import resolve_columns
from segros.data.formats import open_image_text
from segros.data.hf import ArrowImageText
from segros.data.readers import BadRecord, ImageTextRecord


def assert_good(record, arr, caption) -> None:
    assert isinstance(record, ImageTextRecord), record
    np.testing.assert_array_equal(np.asarray(record.image), arr)
    assert record.caption == caption


def image_dataset(n: int, caption_column: str = "text") -> Dataset:
    features = Features({"image": Image(), caption_column: Value("string")})
    rows = {
        "image": [PILImage.fromarray(pixels(i)) for i in range(n)],
        caption_column: [f"c{i}" for i in range(n)],
    }
    return Dataset.from_dict(rows, features=features)


def test_save_to_disk_folder_and_its_splits(tmp_path: Path) -> None:
    DatasetDict({"train": image_dataset(5), "test": image_dataset(2)}).save_to_disk(tmp_path / "dd")
    train = open_image_text(tmp_path / "dd")
    assert isinstance(train, ArrowImageText) and len(train) == 5
    assert train.caption_column == "text"  # no "caption" column: the known alternative
    assert_good(train[3], pixels(3), "c3")
    assert train[3].key == "dd:3"
    assert len(open_image_text(tmp_path / "dd", split="test")) == 2
    with pytest.raises(ValueError, match="no split 'validation'"):
        open_image_text(tmp_path / "dd", split="validation")
    image_dataset(4).save_to_disk(tmp_path / "one")
    assert_good(open_image_text(tmp_path / "one")[1], pixels(1), "c1")


def test_hub_cache_layout_reads_the_snapshot_refs_main_names(tmp_path: Path) -> None:
    repo = tmp_path / "datasets--someone--pictures"
    for sha, n in (("aaaa", 3), ("bbbb", 6)):
        (repo / "snapshots" / sha / "data").mkdir(parents=True)
        image_dataset(n, "caption").to_parquet(
            str(repo / "snapshots" / sha / "data" / "train-00000-of-00001.parquet")
        )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbbb")
    ds = open_image_text(repo, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 6
    assert_good(ds[5], pixels(5), "c5")


def test_arrow_files_of_the_datasets_cache(tmp_path: Path) -> None:
    ds = image_dataset(4, "prompt").map(
        lambda x: x, cache_file_name=str(tmp_path / "arrow" / "pictures-train.arrow")
    )
    assert ds.cache_files
    reader = open_image_text(tmp_path / "arrow")
    assert (len(reader), reader.caption_column) == (4, "prompt")
    assert_good(reader[2], pixels(2), "c2")


def test_parquet_through_datasets_bytes_structs_and_bad_rows(tmp_path: Path) -> None:
    good = [png_bytes(pixels(i)) for i in range(3)]
    (tmp_path / "side.png").write_bytes(png_bytes(pixels(9)))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": b, "path": None} for b in good] + [
        {"bytes": None, "path": "side.png"},
        {"bytes": CORRUPT, "path": None},
        {"bytes": None, "path": None},
    ]
    captions = ["c0", "c1", "c2", "side", "x", "y"]
    table = pa.table({"image": pa.array(images, type=struct), "caption": captions, "other": list(range(6))})
    pq.write_table(table.slice(0, 4), tmp_path / "a.parquet", row_group_size=2)
    pq.write_table(table.slice(4), tmp_path / "b.parquet", row_group_size=2)
    ds = open_image_text(f"{tmp_path}/a.parquet::{tmp_path}/b.parquet", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 6
    for i in reversed(range(3)):
        assert_good(ds[i], pixels(i), f"c{i}")
    assert_good(ds[3], pixels(9), "side")  # path relative to the Parquet file's folder
    assert isinstance(ds[4], BadRecord) and "cannot decode" in ds[4].reason
    assert isinstance(ds[5], BadRecord) and "missing" in ds[5].reason
    assert ds[5].key == "b.parquet:row1"
    with pytest.raises(IndexError):
        ds[6]
    raw = pa.table({"img": [good[0]], "txt": ["raw bytes"]})  # plain binary column, other names
    pq.write_table(raw, tmp_path / "raw.parquet")
    assert_good(
        open_image_text(tmp_path / "raw.parquet", cache_dir=str(tmp_path / "c2"))[0], pixels(0), "raw bytes"
    )


def test_sixteen_bit_and_transparent_images_keep_the_readers_handling(tmp_path: Path) -> None:
    grey16 = PILImage.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    rgba = PILImage.new("RGBA", (4, 4), (0, 0, 0, 0))
    features = Features({"image": Image(), "caption": Value("string")})
    Dataset.from_dict(
        {"image": [grey16, rgba], "caption": ["grey", "clear"]}, features=features
    ).save_to_disk(tmp_path / "modes")
    ds = open_image_text(tmp_path / "modes")
    assert np.asarray(ds[0].image).min() == 255  # 16-bit white scaled, not clipped
    assert np.asarray(ds[1].image).min() == 255  # transparent composited on white


def test_column_resolution_names_the_columns_when_none_fits() -> None:
    assert resolve_columns(["jpg", "txt", "__key__"], "image", "caption", "x") == ("jpg", "txt")
    assert resolve_columns(["image", "prompt", "caption"], "image", "prompt", "x") == ("image", "prompt")
    with pytest.raises(ValueError, match=r"no caption column 'caption'.*data.files.caption_column"):
        resolve_columns(["image", "label"], "image", "caption", "x")


def test_arrow_reader_pickles_for_dataloader_workers(tmp_path: Path) -> None:
    image_dataset(3).save_to_disk(tmp_path / "d")
    ds = open_image_text(tmp_path / "d")
    copy = pickle.loads(pickle.dumps(ds))
    assert_good(copy[2], pixels(2), "c2")


def test_hub_ids_offline_load_from_the_hub_cache_or_fail_in_one_line(tmp_path: Path) -> None:
    """With HF_HUB_OFFLINE=1 nothing touches the network: a hub id whose download is in the hub
    cache is read from it (by index and streamed); an unknown one is one line naming the id."""
    import shutil

    import paper_data

    home = tmp_path / "home"
    snapshot = paper_data.hub_cache_repo(home / "hub", "someone/mj-copy")
    shutil.copytree(paper_data.midjourney_v6(tmp_path / "src"), snapshot, dirs_exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(home)}
    code = f"""
import types
from segros.data.budget import BadRecordBudget
from segros.data.formats import open_image_text
from segros.data.streaming import streaming_batches
cache = {str(tmp_path / "arrow")!r}
ds = open_image_text("someone/mj-copy", cache_dir=cache)
print(len(ds), ds[3].caption)
files = types.SimpleNamespace(path="someone/mj-copy", split="train", hf_cache_dir=cache, image_column="image",
    caption_column="caption", shuffle_buffer=0)
d = types.SimpleNamespace(files=files, shuffle=False, batch_size=2)
print([r.caption for r in next(iter(streaming_batches(d, 0, 0, 1, BadRecordBudget())))])
try:
    open_image_text("nobody/no-such-set")
except FileNotFoundError as e:
    print(e)
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "40 a cinematic painting of scene 3 --v 6"
    assert lines[1] == "['a cinematic painting of scene 0 --v 6', 'a cinematic painting of scene 1 --v 6']"
    assert len(lines) == 3 and "nobody/no-such-set" in lines[2] and "HF_HUB_OFFLINE=1" in lines[2]


def test_cache_identity_names_a_datasets_split_only_when_not_the_default(tmp_path: Path) -> None:
    """Caches written before data.files.split existed still match a run that leaves it alone."""
    import types

    from segros.data.cache import identity
    from segros.train.config import load_config

    backbone = types.SimpleNamespace(image_size=32, token_grid=(4, 4), image_encoders=dict)
    files = ["data.source=files", f"data.files.path={tmp_path}"]
    default = identity(backbone, load_config(None, files).data, "tiny")["data"]
    test = identity(backbone, load_config(None, [*files, "data.files.split=test"]).data, "tiny")["data"]
    assert "split" not in default and test["split"] == "test"
    assert {k: v for k, v in test.items() if k != "split"} == default
