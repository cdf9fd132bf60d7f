"""Image-caption readers return real files exactly and turn every kind of broken example into a BadRecord."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _data_files import CORRUPT, jpeg_bytes, pixels, png_bytes, truncated_png

from segros.data.formats import open_image_text
from segros.data.hf import ArrowImageText
from segros.data.readers import (
    BadRecord,
    FolderImageText,
    ImageTextRecord,
    JsonlImageText,
    ParquetImageText,
    TarImageText,
)


def assert_good(record, arr: np.ndarray, caption: str) -> None:
    assert isinstance(record, ImageTextRecord), record
    assert record.image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(record.image), arr)
    assert record.caption == caption


def assert_bad(record, *reason_words: str) -> None:
    assert isinstance(record, BadRecord), record
    for word in reason_words:
        assert word in record.reason, (word, record.reason)


def by_key(dataset) -> dict[str, ImageTextRecord | BadRecord]:
    records = [dataset[i] for i in range(len(dataset))]
    return {r.key: r for r in records}


# --------------------------------------------------------------------------- folder


def test_folder_reads_pixels_and_sidecar_captions(tmp_path: Path) -> None:
    a, b = pixels(1), pixels(2, (8, 3))
    (tmp_path / "a.png").write_bytes(png_bytes(a))
    (tmp_path / "a.txt").write_text("a red cat\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.PNG").write_bytes(png_bytes(b))
    (tmp_path / "sub" / "b.txt").write_text("  two blue squares ")
    (tmp_path / "c.jpg").write_bytes(jpeg_bytes(pixels(3, (16, 16))))
    (tmp_path / "c.txt").write_text("a photo")
    (tmp_path / "notes.md").write_text("not data")

    ds = FolderImageText(tmp_path)
    assert len(ds) == 3
    records = by_key(ds)
    assert_good(records["a.png"], a, "a red cat")
    assert_good(records["sub/b.PNG"], b, "two blue squares")
    assert records["c.jpg"].image.size == (16, 16)  # JPEG is lossy: shape only


def test_folder_bad_examples_become_bad_records(tmp_path: Path) -> None:
    cases = {
        "corrupt.png": (CORRUPT, "bad caption-less", "cannot decode"),
        "truncated.png": (truncated_png(pixels(4)), "fine caption", "truncated"),
        "uncaptioned.png": (png_bytes(pixels(5)), None, "no caption file"),
        "empty.png": (png_bytes(pixels(6)), "", "caption is empty"),
        "blank.png": (png_bytes(pixels(7)), " \n\t ", "whitespace"),
        "zero.png": (b"", "a caption", "0 bytes"),
    }
    for name, (data, caption, _) in cases.items():
        (tmp_path / name).write_bytes(data)
        if caption is not None:
            (tmp_path / name).with_suffix(".txt").write_text(caption)
    (tmp_path / "gone.png").write_bytes(png_bytes(pixels(8)))
    (tmp_path / "gone.txt").write_text("deleted after indexing")
    ds = FolderImageText(tmp_path)
    (tmp_path / "gone.png").unlink()

    records = by_key(ds)
    assert len(records) == len(cases) + 1
    for name, (_, _, reason) in cases.items():
        assert_bad(records[name], reason)
    assert_bad(records["gone.png"], "not found")


def test_folder_without_images_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("caption without image")
    with pytest.raises(ValueError, match="no images"):
        FolderImageText(tmp_path)
    with pytest.raises(FileNotFoundError):
        FolderImageText(tmp_path / "missing")


# --------------------------------------------------------------------------- jsonl


def test_jsonl_resolves_relative_paths_against_its_folder(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "set"
    (data / "img").mkdir(parents=True)
    a, b = pixels(10), pixels(11)
    (data / "img" / "a.png").write_bytes(png_bytes(a))
    (tmp_path / "abs.png").write_bytes(png_bytes(b))
    lines = [
        {"image": "img/a.png", "caption": " first "},
        {"image": str(tmp_path / "abs.png"), "caption": "second"},
    ]
    manifest = data / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    monkeypatch.chdir(tmp_path)  # cwd must not matter

    ds = JsonlImageText(manifest)
    assert len(ds) == 2
    assert_good(ds[0], a, "first")
    assert_good(ds[1], b, "second")
    assert "img/a.png" in ds[0].key


def test_jsonl_custom_field_names(tmp_path: Path) -> None:
    a = pixels(12)
    (tmp_path / "a.png").write_bytes(png_bytes(a))
    (tmp_path / "m.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "hi"}) + "\n")
    assert_good(JsonlImageText(tmp_path / "m.jsonl", image_key="file_name", caption_key="text")[0], a, "hi")


def test_jsonl_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(png_bytes(pixels(13)))
    (tmp_path / "corrupt.png").write_bytes(CORRUPT)
    (tmp_path / "trunc.png").write_bytes(truncated_png(pixels(14)))
    rows = [
        ({"image": "missing.png", "caption": "x"}, "not found"),
        ({"image": "corrupt.png", "caption": "x"}, "cannot decode"),
        ({"image": "trunc.png", "caption": "x"}, "truncated"),
        ({"image": "good.png", "caption": ""}, "caption is empty"),
        ({"image": "good.png", "caption": "   "}, "whitespace"),
        ({"image": "good.png", "caption": None}, "missing"),
        ({"image": "good.png"}, "missing"),
        ({"image": "good.png", "caption": 7}, "not a string"),
        ({"caption": "no image"}, "no image path"),
        ([1, 2], "not a JSON object"),
    ]
    text = "\n".join(json.dumps(r) for r, _ in rows) + "\n{broken json\n"
    (tmp_path / "m.jsonl").write_text(text)
    ds = JsonlImageText(tmp_path / "m.jsonl")
    assert len(ds) == len(rows) + 1
    for i, (_, reason) in enumerate(rows):
        assert_bad(ds[i], reason)
        assert ds[i].key.startswith(f"m.jsonl:{i + 1}")
    assert_bad(ds[len(rows)], "invalid JSON")


# --------------------------------------------------------------------------- parquet


def write_parquet(path: Path, images: list, captions: list, image_type=None, row_group_size=3) -> None:
    image = pa.array(images, type=image_type or pa.binary())
    table = pa.table({"image": image, "caption": pa.array(captions, type=pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_reads_across_files_and_row_groups(tmp_path: Path) -> None:
    arrays = [pixels(20 + i) for i in range(12)]
    captions = [f"caption {i}" for i in range(12)]
    write_parquet(tmp_path / "a.parquet", [png_bytes(x) for x in arrays[:7]], captions[:7])
    write_parquet(tmp_path / "b.parquet", [png_bytes(x) for x in arrays[7:]], captions[7:])
    ds = ParquetImageText([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert len(ds) == 12
    assert len(ds.groups) == 3 + 2  # 7 rows -> 3 row groups, 5 rows -> 2
    for i in reversed(range(12)):  # random-ish order crosses files and groups
        assert_good(ds[i], arrays[i], captions[i])
    assert ds[8].key == "b.parquet:row1"
    with pytest.raises(IndexError):
        ds[12]


def test_parquet_reads_one_row_group_at_a_time(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", [png_bytes(pixels(i)) for i in range(10)], ["c"] * 10)
    ds = ParquetImageText(tmp_path / "a.parquet", cache_row_groups=2)
    reads: list[int] = []
    original = ds._row_group
    ds._row_group = lambda g: reads.append(g) or original(g)  # type: ignore[method-assign]
    for i in range(10):
        assert isinstance(ds[i], ImageTextRecord)
    assert reads == [0, 1, 2, 3]  # sequential access: one read per row group
    assert len(ds._cache.items) == 2  # bounded cache
    ds[0]
    assert reads[-1] == 0  # evicted group is read again


def test_parquet_hugging_face_image_struct(tmp_path: Path) -> None:
    a, b = pixels(30), pixels(31)
    (tmp_path / "side.png").write_bytes(png_bytes(b))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [
        {"bytes": png_bytes(a), "path": "a.png"},
        {"bytes": None, "path": "side.png"},
        {"bytes": None, "path": "nowhere.png"},
        {"bytes": None, "path": None},
    ]
    write_parquet(tmp_path / "hf.parquet", images, ["one", "two", "three", "four"], image_type=struct)
    ds = ParquetImageText(tmp_path / "hf.parquet")
    assert_good(ds[0], a, "one")
    assert_good(ds[1], b, "two")
    assert_bad(ds[2], "not found")
    assert_bad(ds[3], "image is missing")


def test_parquet_bad_rows(tmp_path: Path) -> None:
    good = png_bytes(pixels(40))
    rows = [
        (CORRUPT, "x", "cannot decode"),
        (truncated_png(pixels(41)), "x", "truncated"),
        (None, "x", "image is missing"),
        (good, None, "caption is missing"),
        (good, "", "caption is empty"),
        (good, " \t", "whitespace"),
    ]
    write_parquet(tmp_path / "bad.parquet", [r[0] for r in rows], [r[1] for r in rows])
    ds = ParquetImageText(tmp_path / "bad.parquet")
    for i, (_, _, reason) in enumerate(rows):
        assert_bad(ds[i], reason)


def test_parquet_missing_column_is_a_configuration_error(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", [png_bytes(pixels(0))], ["c"])
    with pytest.raises(ValueError, match="no column 'text'"):
        ParquetImageText(tmp_path / "a.parquet", caption_column="text")


# --------------------------------------------------------------------------- tar


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_reads_webdataset_samples(tmp_path: Path) -> None:
    a, b, c = pixels(50), pixels(51), pixels(52)
    write_tar(
        tmp_path / "shard-000.tar",
        [
            ("s/000.png", png_bytes(a)),
            ("s/000.txt", b"first caption\n"),
            ("s/001.json", json.dumps({"caption": "from json", "width": 5}).encode()),
            ("s/001.PNG", png_bytes(b)),
            ("__meta__", b"ignored"),
        ],
    )
    # key is up to the FIRST dot, as in webdataset: "seg.png" is another field of sample 002, not its image
    write_tar(
        tmp_path / "shard-001.tar",
        [("002.seg.png", png_bytes(a)), ("002.png", png_bytes(c)), ("002.txt", b"multi-field")],
    )
    ds = TarImageText([tmp_path / "shard-000.tar", tmp_path / "shard-001.tar"])
    assert len(ds) == 3
    assert_good(ds[0], a, "first caption")
    assert_good(ds[1], b, "from json")
    assert_good(ds[2], c, "multi-field")
    assert ds[0].key == "shard-000.tar:s/000"


def test_tar_written_by_webdataset_tarwriter(tmp_path: Path) -> None:
    # webdataset is not a segros dependency (the reader does not use it); this compatibility check
    # runs wherever it is installed, e.g. the dev venv.
    wds = pytest.importorskip("webdataset")

    arrays = [pixels(60 + i) for i in range(4)]
    with wds.TarWriter(str(tmp_path / "wds.tar")) as sink:
        for i, arr in enumerate(arrays):
            sink.write({"__key__": f"sample{i:04d}", "png": png_bytes(arr), "txt": f"caption {i}"})
    ds = TarImageText(tmp_path / "wds.tar")
    assert len(ds) == 4
    for i in (3, 0, 2, 1):
        assert_good(ds[i], arrays[i], f"caption {i}")


def test_tar_bad_samples(tmp_path: Path) -> None:
    good = png_bytes(pixels(70))
    write_tar(
        tmp_path / "bad.tar",
        [
            ("corrupt.jpg", CORRUPT),
            ("corrupt.txt", b"x"),
            ("trunc.png", truncated_png(pixels(71))),
            ("trunc.txt", b"x"),
            ("empty.png", good),
            ("empty.txt", b""),
            ("blank.png", good),
            ("blank.txt", b"  \n"),
            ("nullcap.png", good),
            ("nullcap.json", b'{"caption": null}'),
            ("badjson.png", good),
            ("badjson.json", b"{nope"),
            ("nocap.png", good),
            ("noimage.txt", b"only text"),
        ],
    )
    records = by_key(TarImageText(tmp_path / "bad.tar"))
    expected = {
        "corrupt": "cannot decode",
        "trunc": "truncated",
        "empty": "caption is empty",
        "blank": "whitespace",
        "nullcap": "caption is missing",
        "badjson": "invalid caption JSON",
        "nocap": "no caption member",
        "noimage": "no image member",
    }
    assert len(records) == len(expected)
    for name, reason in expected.items():
        assert_bad(records[f"bad.tar:{name}"], reason)


def test_tar_rejects_compressed_or_non_tar(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "x.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("a.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        TarImageText(tmp_path / "x.tar.gz")


# --------------------------------------------------------------------------- factory


def test_open_image_text_picks_reader_by_path(tmp_path: Path) -> None:
    arr = pixels(80)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(arr))
    (folder / "a.txt").write_text("folder")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "folder/a.png", "caption": "jsonl"}) + "\n")
    pqdir = tmp_path / "pq"
    pqdir.mkdir()
    write_parquet(pqdir / "0.parquet", [png_bytes(arr)], ["parquet"])
    write_parquet(pqdir / "1.parquet", [png_bytes(arr)], ["parquet"])
    tars = tmp_path / "tars"
    tars.mkdir()
    for i in range(3):
        write_tar(tars / f"train-{i}.tar", [("k.png", png_bytes(arr)), ("k.txt", b"tar")])

    assert isinstance(open_image_text(folder), FolderImageText)
    assert isinstance(open_image_text(tmp_path / "m.jsonl"), JsonlImageText)
    # Parquet is read through datasets' memory-mapped Arrow copy (cheap shuffled reads)
    assert isinstance(open_image_text(pqdir, cache_dir=str(tmp_path / "hf")), ArrowImageText)
    assert len(open_image_text(pqdir, cache_dir=str(tmp_path / "hf"))) == 2
    assert isinstance(open_image_text(pqdir / "0.parquet", cache_dir=str(tmp_path / "hf")), ArrowImageText)
    by_glob = open_image_text(str(tars / "train-*.tar"))
    assert isinstance(by_glob, TarImageText) and len(by_glob) == 3
    assert isinstance(open_image_text(tars), TarImageText)
    for ds in (open_image_text(folder), open_image_text(tmp_path / "m.jsonl"), by_glob):
        np.testing.assert_array_equal(np.asarray(ds[0].image), arr)

    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="cannot tell"):
        open_image_text(tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError):
        open_image_text(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        open_image_text(str(tmp_path / "nope-*.tar"))


def test_tar_cut_off_shard_fails_loudly_instead_of_dropping_samples(tmp_path: Path) -> None:
    files = (("png", png_bytes(pixels(9))), ("txt", b"c"))
    members = [(f"{i}.{ext}", data) for i in range(3) for ext, data in files]
    write_tar(tmp_path / "full.tar", members)
    data = (tmp_path / "full.tar").read_bytes()
    assert len(TarImageText(tmp_path / "full.tar")) == 3
    with tarfile.open(tmp_path / "full.tar") as tar:
        infos = tar.getmembers()
    last = infos[-1]
    cuts = {
        "inside the last member's data": last.offset_data + last.size // 2,
        "at a member boundary": last.offset,  # the previous member is complete, the last one is gone
        "inside the end marker": last.offset_data + 512 * ((last.size + 511) // 512) + 100,
    }
    for where, cut in cuts.items():
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated"):
            TarImageText(tmp_path / "cut.tar")
            pytest.fail(f"not detected: cut {where}")


def test_readers_pickle_for_dataloader_workers(tmp_path: Path) -> None:
    import pickle

    arr = pixels(90)
    (tmp_path / "a.png").write_bytes(png_bytes(arr))
    (tmp_path / "a.txt").write_text("pickled")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "caption": "pickled"}) + "\n")
    write_parquet(tmp_path / "p.parquet", [png_bytes(arr)], ["pickled"])
    write_tar(tmp_path / "t.tar", [("k.png", png_bytes(arr)), ("k.txt", b"pickled")])
    for ds in (
        FolderImageText(tmp_path),
        JsonlImageText(tmp_path / "m.jsonl"),
        ParquetImageText(tmp_path / "p.parquet"),
        TarImageText(tmp_path / "t.tar"),
    ):
        ds[0]  # fill any cache before pickling
        copy = pickle.loads(pickle.dumps(ds))
        if isinstance(ds, ParquetImageText):
            assert ds._cache.items and not copy._cache.items  # cached row groups are not shipped
        assert_good(copy[0], arr, "pickled")
