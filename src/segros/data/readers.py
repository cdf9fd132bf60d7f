"""Map-style readers for image-caption training data.

Every reader has a length and random access by index, so that shuffling,
sharding across processes and resuming are plain index arithmetic (see
``segros.data.sampling``). A reader never raises for one broken example:
``reader[i]`` returns a ``BadRecord`` saying why, and the caller counts it
against a ``BadRecordBudget``. Configuration errors (a path that does not
exist, a missing column) still raise at construction time.

Readers keep only paths and small index arrays, and open files per read,
so they are safe to use from forked DataLoader workers.
"""

from __future__ import annotations

import bisect
import io
import json
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from segros.data.columns import resolve_columns

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class ImageTextRecord:
    """One decoded example: an RGB image, its caption, and where it came from."""

    image: Image.Image
    caption: str
    key: str


@dataclass(frozen=True)
class BadRecord:
    """An example that could not be used; ``key`` locates it, ``reason`` says why."""

    key: str
    reason: str


# ---------------------------------------------------------------------------
# Shared decoding helpers
# ---------------------------------------------------------------------------


# Background that transparent pixels are composited onto (what a viewer on a white page shows).
TRANSPARENT_BACKGROUND = (255, 255, 255)


def image_to_rgb(im: Image.Image) -> Image.Image | str:
    """An 8-bit RGB image with the same picture as ``im`` (any PIL mode), or why there is none.

    ``Image.convert("RGB")`` alone is wrong for several modes and says nothing:

    - 16-bit grey (``I;16*``, and ``I`` read from a PNG, which holds at most 16 bits) is clipped
      at 255, so a 16-bit PNG comes out almost all white. Here it is scaled: v * 255 / 65535.
      (16-bit RGB(A) PNGs are already reduced to 8 bits per channel by PIL when decoding.)
    - 32-bit integer (``I`` from other formats) and floating-point (``F``) images have no fixed
      value range (0..1? 0..255? 0..65535?), so any conversion would be a guess: they are bad.
    - Transparency (``LA``, ``PA``, ``RGBA``, premultiplied modes, ``P``/``L``/``RGB`` with a
      transparent colour) is dropped by ``convert``, leaving whatever colour the transparent
      pixels happen to hold (often black). Here the image is composited onto white.
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if (mode.startswith("I;16") and not mode.endswith("S")) or (mode == "I" and im.format == "PNG"):
        values = np.asarray(im if mode == "I" else im.convert("I"), dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            return f"16-bit image (mode {mode}) holds values outside 0..65535"
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;"):
        kind = "floating-point" if mode == "F" else "32-bit integer"
        return (
            f"{kind} image (mode {mode}) has no fixed value range, so it cannot be converted to "
            "8-bit colour without guessing; save it as 8- or 16-bit"
        )
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(data: bytes) -> Image.Image | str:
    """Decode image bytes to a fully loaded RGB image, or return the reason it failed.

    PIL raises many exception types for bad input (OSError, SyntaxError,
    struct.error, DecompressionBombError, ...), so any exception counts as a
    corrupt image. Truncated files are caught by ``load()`` unless some other
    code has set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``. Modes other than RGB
    go through :func:`image_to_rgb` (16-bit scaled, transparency composited,
    float and 32-bit integer images refused).
    """
    if not data:
        return "image is empty (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = image_to_rgb(im)
            if isinstance(rgb, str):
                return rgb
            return rgb.copy() if rgb is im else rgb
    except Exception as e:  # noqa: BLE001 - see docstring
        return f"cannot decode image: {type(e).__name__}: {e}"


def read_image_file(path: Path) -> Image.Image | str:
    """Read and decode an image file, or return why it failed (missing, unreadable, corrupt)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"image file not found: {path}"
    except OSError as e:
        return f"cannot read image file {path}: {e}"
    return decode_image(data)


def clean_caption(value: Any) -> str:
    """Return the caption stripped of surrounding whitespace; raise ValueError if unusable."""
    if value is None:
        raise ValueError("caption is missing (null)")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"caption is not UTF-8: {e}") from None
    if not isinstance(value, str):
        raise ValueError(f"caption is not a string but {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError("caption is empty" if not value else "caption is whitespace only")
    return text


def _make_record(image: Image.Image | str, caption: Any, key: str) -> ImageTextRecord | BadRecord:
    if isinstance(image, str):
        return BadRecord(key, image)
    try:
        text = clean_caption(caption)
    except ValueError as e:
        return BadRecord(key, str(e))
    return ImageTextRecord(image=image, caption=text, key=key)


# ---------------------------------------------------------------------------
# (a) Folder with sidecar captions, and JSONL manifests
# ---------------------------------------------------------------------------


class FolderImageText:
    """Images under ``root`` (recursively), each captioned by a ``.txt`` file of the same stem.

    ``photo.jpg`` + ``photo.txt`` is the layout most scraped sets and
    captioning tools produce. An image without a ``.txt`` is a bad record
    (counted, not silently dropped), so a half-captioned folder is noticed.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.paths = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> ImageTextRecord | BadRecord:
        path = self.paths[i]
        key = str(path.relative_to(self.root))
        try:
            caption = path.with_suffix(".txt").read_text(encoding="utf-8")
        except FileNotFoundError:
            return BadRecord(key, f"no caption file {path.with_suffix('.txt').name}")
        except (OSError, UnicodeDecodeError) as e:
            return BadRecord(key, f"cannot read caption file: {e}")
        return _make_record(read_image_file(path), caption, key)


class JsonlImageText:
    """A JSONL manifest, one ``{"image": path, "caption": text}`` object per line.

    Relative image paths are resolved against the manifest's folder, so a
    dataset directory can be moved as a whole. Blank lines are ignored; a
    line that is not valid JSON, or not UTF-8, is a bad record (its key is
    ``<manifest>:<line>``), never an error for the whole manifest.
    """

    def __init__(self, path: str | Path, image_key: str = "image", caption_key: str = "caption") -> None:
        self.path = Path(path)
        self.image_key = image_key
        self.caption_key = caption_key
        # str for UTF-8 lines; the raw bytes of a line that is not UTF-8 (a bad record when read)
        self.lines: list[tuple[int, str | bytes]] = []
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    line: str | bytes = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    line = raw
                self.lines.append((lineno, line))
        if not self.lines:
            raise ValueError(f"no records in {self.path}")

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> ImageTextRecord | BadRecord:
        lineno, line = self.lines[i]
        key = f"{self.path.name}:{lineno}"
        if isinstance(line, bytes):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = line[e.start : e.start + 1].hex()
                return BadRecord(key, f"line is not UTF-8 (byte 0x{bad} at column {e.start + 1}: {e.reason})")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return BadRecord(key, f"invalid JSON: {e}")
        if not isinstance(obj, dict):
            return BadRecord(key, "line is not a JSON object")
        image_path = obj.get(self.image_key)
        if not isinstance(image_path, str) or not image_path:
            return BadRecord(key, f"no image path in field {self.image_key!r}")
        key = f"{key} ({image_path})"
        return _make_record(read_image_file(self.path.parent / image_path), obj.get(self.caption_key), key)


# ---------------------------------------------------------------------------
# (b) Parquet with image bytes
# ---------------------------------------------------------------------------


class _LRU:
    """A tiny least-recently-used cache (functools.lru_cache on methods leaks ``self``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, make: Any) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


class ParquetImageText:
    """Rows of Parquet files holding image bytes and a caption (MidjourneyV6 / HF datasets style).

    The image column holds either raw bytes or the Hugging Face ``Image``
    struct ``{"bytes": ..., "path": ...}``; when ``bytes`` is null, ``path``
    is read from disk (relative to the Parquet file's folder). Only Parquet
    metadata is read up front; a row group is read on demand (image and
    caption columns only) and the last few are cached. Sequential access
    costs one read per row group; shuffled access over a set much larger
    than the cache costs about one row-group read per example (4.9x a
    sequential read in benchmarks/data_reads.py). So :func:`open_image_text`
    reads Parquet through ``datasets`` instead (memory-mapped Arrow,
    :mod:`segros.data.hf`); this reader is for reading in place, without
    that one-off Arrow copy.
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        image_column: str = "image",
        caption_column: str = "caption",
        cache_row_groups: int = 4,
    ) -> None:
        self.paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no Parquet files given")
        self.image_column = image_column
        self.caption_column = caption_column
        self.groups: list[tuple[int, int]] = []  # (file index, row group index)
        sizes: list[int] = []
        for f, path in enumerate(self.paths):
            with pq.ParquetFile(path) as meta:
                names = meta.schema_arrow.names
                for col in (image_column, caption_column):
                    if col not in names:
                        raise ValueError(f"{path} has no column {col!r} (columns: {names})")
                for g in range(meta.metadata.num_row_groups):
                    n = meta.metadata.row_group(g).num_rows
                    if n:
                        self.groups.append((f, g))
                        sizes.append(n)
        if not sizes:
            raise ValueError(f"no rows in {[str(p) for p in self.paths]}")
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cache = _LRU(cache_row_groups)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        # Do not ship cached row groups (possibly hundreds of MB) to worker processes.
        state = self.__dict__.copy()
        state["_cache"] = _LRU(self._cache.size)
        return state

    def _row_group(self, g: int) -> pa.Table:
        f, rg = self.groups[g]
        with pq.ParquetFile(self.paths[f]) as pf:
            return pf.read_row_group(rg, columns=[self.image_column, self.caption_column])

    def __getitem__(self, i: int) -> ImageTextRecord | BadRecord:
        if not 0 <= i < len(self):
            raise IndexError(i)
        g = int(np.searchsorted(self.starts, i, side="right")) - 1
        row = i - int(self.starts[g])
        table = self._cache.get(g, lambda: self._row_group(g))
        f = self.groups[g][0]
        key = f"{self.paths[f].name}:row{i - int(self.starts[self._first_group(f)])}"
        value = table.column(self.image_column)[row].as_py()
        caption = table.column(self.caption_column)[row].as_py()
        if isinstance(value, dict):  # Hugging Face Image feature
            data, rel = value.get("bytes"), value.get("path")
            if data is None and rel:
                return _make_record(read_image_file(self.paths[f].parent / rel), caption, key)
            value = data
        if value is None:
            return BadRecord(key, "image is missing (null)")
        if not isinstance(value, bytes):
            return BadRecord(key, f"image column holds {type(value).__name__}, not bytes")
        return _make_record(decode_image(value), caption, key)

    def _first_group(self, f: int) -> int:
        return bisect.bisect_left(self.groups, (f, -1))


# ---------------------------------------------------------------------------
# (c) WebDataset tar shards
# ---------------------------------------------------------------------------

_CAPTION_EXTS = ("txt", "json")


@dataclass(frozen=True)
class _Member:
    offset: int  # byte offset of the member's data in the tar file
    size: int


class TarImageText:
    """WebDataset-layout tar shards, read by index.

    Members are grouped into samples by key = member path up to the first dot
    of its basename (``shard/0001.jpg`` + ``shard/0001.txt``), as webdataset
    does. The image is the first of jpg/jpeg/png/webp; the caption is
    ``.txt``, else the ``caption`` field of ``.json``.

    Why not the ``webdataset`` package: version 1.0.2 only offers streaming
    iterators over tar members (``tariterators``); it has no random access
    (the indexed ``wids`` module is not shipped in it), and streaming would
    make resume and sharding depend on iterator state. So each shard is
    scanned once with ``tarfile`` to record each member's data offset and
    size, and a read is a seek plus a read of those bytes -- equivalent to
    ``TarFile.extractfile`` for the regular files webdataset writes, without
    keeping open ``TarFile`` objects (which do not survive forking).
    Compressed tars (``.tar.gz``) cannot be seeked and are rejected, and so
    is a shard cut off mid-way (an interrupted download): its lost samples
    could not be counted as bad records, so it is an error naming the shard.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        self.paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no tar shards given")
        self.samples: list[tuple[int, str, dict[str, _Member]]] = []
        for f, path in enumerate(self.paths):
            self.samples.extend((f, key, members) for key, members in self._scan(path))
        if not self.samples:
            raise ValueError(f"no samples in tar shards {[str(p) for p in self.paths]}")

    @staticmethod
    def _scan(path: Path) -> list[tuple[str, dict[str, _Member]]]:
        grouped: dict[str, dict[str, _Member]] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    directory, _, base = info.name.rpartition("/")
                    if base.startswith("__") or "." not in base:  # webdataset metadata / no extension
                        continue
                    stem, _, ext = base.partition(".")
                    key = f"{directory}/{stem}" if directory else stem
                    grouped.setdefault(key, {})[ext.lower()] = _Member(info.offset_data, info.size)
                end = tar.offset
        except tarfile.ReadError as e:
            raise ValueError(f"{path} is truncated, corrupt or not an uncompressed tar: {e}") from None
        # tarfile stops quietly at a cut-off member, which would silently drop samples; a complete
        # archive ends with two zero blocks, so their absence means an interrupted download/write.
        with path.open("rb") as fh:
            fh.seek(end)
            marker = fh.read(2 * tarfile.BLOCKSIZE)
        if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
            raise ValueError(f"{path} is truncated (no end-of-archive marker); re-create or remove it")
        return list(grouped.items())

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, f: int, member: _Member) -> bytes:
        with self.paths[f].open("rb") as fh:
            fh.seek(member.offset)
            return fh.read(member.size)

    def __getitem__(self, i: int) -> ImageTextRecord | BadRecord:
        f, key, members = self.samples[i]
        key = f"{self.paths[f].name}:{key}"
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
        if image_ext is None:
            return BadRecord(key, f"no image member (has {sorted(members)})")
        if "txt" in members:
            caption: Any = self._read(f, members["txt"])
        elif "json" in members:
            try:
                meta = json.loads(self._read(f, members["json"]))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return BadRecord(key, f"invalid caption JSON: {e}")
            caption = meta.get("caption") if isinstance(meta, dict) else None
        else:
            return BadRecord(key, f"no caption member .txt/.json (has {sorted(members)})")
        image = decode_image(self._read(f, members[image_ext]))
        return _make_record(image, caption, key)


# ---------------------------------------------------------------------------
# (d) A JSON list of records (ShareGPT-4o-Image's text_to_image.json)
# ---------------------------------------------------------------------------


class JsonListImageText:
    """A JSON file holding a list of objects, each naming an image file and its caption.

    ShareGPT-4o-Image ships its text-to-image pairs this way (``output_image``: a path relative
    to the file's folder, ``input_prompt``: the prompt). The fields are the configured ones when
    the records have them, else the first known alternative (:func:`segros.data.columns.resolve_columns`).
    A record that is not an object, has no image path or no usable caption is a bad record.
    """

    def __init__(self, path: str | Path, image_key: str = "image", caption_key: str = "caption") -> None:
        self.path = Path(path)
        with self.path.open(encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list) or not data:
            raise ValueError(f"{self.path}: expected a non-empty JSON list of records")
        self.entries: list[Any] = data
        seen: dict[str, None] = {}
        for entry in data[:1000]:
            if isinstance(entry, dict):
                seen.update(dict.fromkeys(entry))
        self.image_key, self.caption_key = resolve_columns(list(seen), image_key, caption_key, self.path.name)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> ImageTextRecord | BadRecord:
        entry = self.entries[i]
        key = f"{self.path.name}[{i}]"
        if not isinstance(entry, dict):
            return BadRecord(key, "record is not a JSON object")
        image_path = entry.get(self.image_key)
        if isinstance(image_path, list) and len(image_path) == 1:
            image_path = image_path[0]
        if not isinstance(image_path, str) or not image_path:
            return BadRecord(key, f"no image path in field {self.image_key!r}")
        key = f"{key} ({image_path})"
        return _make_record(read_image_file(self.path.parent / image_path), entry.get(self.caption_key), key)


ImageTextDataset = FolderImageText | JsonlImageText | JsonListImageText | ParquetImageText | TarImageText
