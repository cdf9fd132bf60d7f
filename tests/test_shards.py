"""``data.files.path`` as WebDataset shards ship: brace ranges, lists, ``::``, compressed tars, URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
import webdataset as wds
from _data_files import png_bytes
from paper_data import picture

from segros.data.formats import open_image_text
from segros.data.readers import TarImageText
from segros.data.shards import expand, is_url, suffix_of
from segros.train.config import ConfigError, load_config


def write_wds(folder: Path, shards: int = 3, per_shard: int = 2, suffix: str = ".tar") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"shard-{s:03d}{suffix}")) as sink:  # gzips a .tar.gz name
            for k in range(per_shard):
                sink.write(
                    {"__key__": f"{s}-{k}", "png": png_bytes(picture(10 * s + k, (8, 8))), "txt": f"s{s}k{k}"}
                )


def test_brace_ranges_lists_and_globs_expand_in_order(tmp_path: Path) -> None:
    write_wds(tmp_path)
    names = [str(tmp_path / f"shard-{s:03d}.tar") for s in range(3)]
    assert expand(f"{tmp_path}/shard-{{000..002}}.tar") == names
    assert expand(f"{tmp_path}/shard-{{002,000}}.tar") == [names[2], names[0]]
    assert expand(f"{tmp_path}/shard-00[01].tar::{tmp_path}/shard-002.tar") == names
    assert expand([names[1], names[0]]) == [names[1], names[0]]
    assert expand("https://host/shard-{0..1}.tar") == ["https://host/shard-0.tar", "https://host/shard-1.tar"]
    with pytest.raises(FileNotFoundError, match="no files match"):
        expand(f"{tmp_path}/none-*.tar")
    assert is_url("s3://bucket/x.tar") and is_url("pipe:curl -s x") and not is_url(names[0])
    assert [suffix_of(n) for n in ("a.TAR.GZ", "b.tgz", "c.tar", "d.parquet")] == [
        ".tar.gz",
        ".tgz",
        ".tar",
        ".parquet",
    ]


def test_shards_by_braces_list_or_yaml_list_are_read_by_index(tmp_path: Path) -> None:
    write_wds(tmp_path)
    by_braces = open_image_text(f"{tmp_path}/shard-{{000..002}}.tar")
    assert isinstance(by_braces, TarImageText) and len(by_braces) == 6
    assert by_braces[5].caption == "s2k1"
    subset = open_image_text([tmp_path / "shard-002.tar", tmp_path / "shard-000.tar"])
    assert [subset[i].caption for i in range(4)] == ["s2k0", "s2k1", "s0k0", "s0k1"]
    cfg = load_config(
        None, ["data.source=files", f"data.files.path=[{tmp_path}/shard-000.tar, {tmp_path}/shard-001.tar]"]
    )
    assert cfg.data.files.path == [f"{tmp_path}/shard-000.tar", f"{tmp_path}/shard-001.tar"]
    assert len(open_image_text(cfg.data.files.path)) == 4
    with pytest.raises(
        FileNotFoundError, match="7 of the 10 files .* shard-003.tar, shard-004.tar, shard-005.tar, ..."
    ):
        open_image_text(f"{tmp_path}/shard-{{000..009}}.tar")


def test_compressed_shards_and_urls_are_streams_not_indexed(tmp_path: Path) -> None:
    write_wds(tmp_path, suffix=".tar.gz")
    with pytest.raises(ValueError, match="data.files.streaming=true"):
        open_image_text(f"{tmp_path}/shard-{{000..002}}.tar.gz")
    with pytest.raises(ValueError, match="data.files.streaming=true"):
        open_image_text(tmp_path)  # a folder of .tar.gz shards
    with pytest.raises(ValueError, match="URLs can only be read as a stream"):
        open_image_text("https://example.invalid/shard-{000..002}.tar")


def test_streaming_needs_files_and_no_cache() -> None:
    with pytest.raises(ConfigError, match="data.files.streaming"):
        load_config(None, ["data.files.streaming=true"])
    with pytest.raises(ConfigError, match="data.files.streaming"):
        streamed = ["data.files.streaming=true", "data.source=files", "data.files.path=x.tar"]
        load_config(None, [*streamed, "data.cache=c"])
