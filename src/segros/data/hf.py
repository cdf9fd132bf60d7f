"""Hugging Face ``datasets`` as a map-style image-caption source (Arrow, memory-mapped).

``datasets`` keeps a table as Arrow files that it memory-maps, so reading row ``i`` touches that
row's bytes only: shuffled reads cost what sequential ones do. It is how MidjourneyV6-style
Parquet datasets, ShareGPT-4o-Image and most hub datasets are downloaded and cached. This module
opens, from ``data.files.path``:

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- a folder of ``*.arrow`` files (the ``datasets`` cache of a loaded dataset);
- a dataset repository on disk: the hub cache (``datasets--owner--name``, its newest snapshot)
  or a ``huggingface-cli download --local-dir`` folder (a ``README.md`` and data files);
- Parquet files, converted once by ``datasets`` into its Arrow cache (``data.files.hf_cache_dir``);
- a hub id ``owner/name`` (downloaded into the cache; with ``HF_HUB_OFFLINE=1`` only if cached).

The image column may be a ``datasets.Image`` feature (read undecoded, as ``{"bytes", "path"}``,
so segros' own decoder handles 16-bit and transparent images the same way for every format),
raw bytes, or a path (relative to the dataset's folder). Column names are resolved by
:func:`resolve_columns`: the configured name if the table has it, else the first of the names the
paper's datasets use (docs/data.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segros.data.columns import resolve_columns
from segros.data.readers import (
    BadRecord,
    ImageTextRecord,
    _make_record,
    decode_image,
    image_to_rgb,
    read_image_file,
)

log = logging.getLogger(__name__)

def image_value_record(value: Any, caption: Any, key: str, base: Path | None) -> ImageTextRecord | BadRecord:
    """A record from one row's image value (bytes, ``{"bytes", "path"}``, a path, or a PIL image)."""
    if isinstance(value, dict):  # a datasets.Image feature read undecoded
        data, rel = value.get("bytes"), value.get("path")
        value = rel if data is None and rel else data
    if isinstance(value, str):
        if base is None and not os.path.isabs(value):
            return BadRecord(key, f"image path {value!r} is relative and the data has no folder")
        return _make_record(read_image_file((base or Path("/")) / value), caption, key)
    if value is None:
        return BadRecord(key, "image is missing (null)")
    if isinstance(value, Image.Image):
        return _make_record(image_to_rgb(value), caption, key)
    if not isinstance(value, bytes):
        return BadRecord(key, f"image column holds {type(value).__name__}, not bytes")
    return _make_record(decode_image(value), caption, key)


def undecoded(ds: Any, column: str) -> Any:
    """``ds`` with ``column`` read as ``{"bytes", "path"}`` if it is a ``datasets.Image`` feature."""
    from datasets import Image as ImageFeature

    feature = (ds.features or {}).get(column)
    if isinstance(feature, ImageFeature) and feature.decode:
        return ds.cast_column(column, ImageFeature(decode=False))
    return ds


class ArrowImageText:
    """Rows of a ``datasets.Dataset`` (memory-mapped Arrow) as image-caption records.

    ``keys`` maps a row to its name: ``(file names, first row of each)`` for Parquet files (keys
    ``train-0.parquet:row12``), else rows are named ``<name>:<row>``. Only the two columns are
    kept, and the dataset pickles by file path, so it is cheap to ship to DataLoader workers.
    """

    def __init__(
        self,
        dataset: Any,
        image_column: str = "image",
        caption_column: str = "caption",
        name: str = "dataset",
        base: Path | None = None,
        files: tuple[list[str], list[int]] | None = None,
    ) -> None:
        image_column, caption_column = resolve_columns(
            list(dataset.column_names), image_column, caption_column, name
        )
        if len(dataset) == 0:
            raise ValueError(f"{name} has no rows")
        self.image_column, self.caption_column = image_column, caption_column
        dataset = undecoded(dataset.select_columns([image_column, caption_column]), image_column)
        self.dataset = dataset.with_format(None)
        self.name, self.base = name, base
        self.files = files

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, i: int) -> str:
        if self.files is None:
            return f"{self.name}:{i}"
        names, starts = self.files
        f = int(np.searchsorted(starts, i, side="right")) - 1
        return f"{names[f]}:row{i - starts[f]}"

    def __getitem__(self, i: int) -> ImageTextRecord | BadRecord:
        if not 0 <= i < len(self):
            raise IndexError(i)
        row = self.dataset[int(i)]
        return image_value_record(row[self.image_column], row[self.caption_column], self.key(i), self.base)


# ---------------------------------------------------------------------------
# Recognising and loading datasets on disk and on the hub
# ---------------------------------------------------------------------------


def is_saved_dataset(folder: Path) -> bool:
    """A ``save_to_disk`` folder: a Dataset (``state.json``) or a DatasetDict (``dataset_dict.json``)."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def hub_snapshot(folder: Path) -> Path | None:
    """The snapshot a hub-cache folder (``datasets--owner--name``) points at, or None."""
    if not folder.name.startswith("datasets--") or not (folder / "snapshots").is_dir():
        return None
    ref = folder / "refs" / "main"
    if ref.is_file() and (folder / "snapshots" / ref.read_text().strip()).is_dir():
        return folder / "snapshots" / ref.read_text().strip()
    snapshots = sorted((folder / "snapshots").iterdir(), key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def is_repo_folder(folder: Path) -> bool:
    """A dataset repository on disk (a snapshot or a ``--local-dir`` download): a README.md dataset
    card next to data files, or a ``data/`` folder of them."""
    card = folder / "README.md"
    if card.is_file() and card.read_text(encoding="utf-8", errors="replace").startswith("---"):
        return True  # a dataset card with YAML front matter
    data = folder / "data"
    kinds = (".parquet", ".arrow", ".json", ".jsonl", ".tar")
    return data.is_dir() and any(f.suffix in kinds for f in data.rglob("*"))


def looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` (or ``hf://datasets/owner/name``) that is not a local path."""
    if spec.startswith("hf://datasets/"):
        return True
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not Path(spec).exists() and "." not in parts[1][-8:]


def cached_hub_repo(spec: str) -> Path | None:
    """The hub cache's ``datasets--owner--name`` folder of hub id ``spec`` when the hub is off
    (``HF_HUB_OFFLINE=1``) and the dataset was downloaded before; else None (load from the hub)."""
    if not _offline():
        return None
    from huggingface_hub import constants

    name = spec.removeprefix("hf://datasets/")
    folder = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    return folder if hub_snapshot(folder) is not None else None


def local_source(name: str) -> Path | None:
    """Where a single ``data.files.path`` entry lives on this machine: the path itself (a hub cache
    folder given directly becomes its newest snapshot), the hub cache's snapshot of a hub id when
    the hub is off, or None for a hub id to load from the hub. A path that is neither raises
    ``FileNotFoundError``."""
    path = Path(name)
    if not path.exists() and looks_like_hub_id(name):
        cached = cached_hub_repo(name)  # offline: the download in the hub cache
        if cached is None:
            return None
        path = cached
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {path}")
    return (hub_snapshot(path) or path) if path.is_dir() else path


def pick_split(loaded: Any, split: str, where: str) -> Any:
    """One split of a DatasetDict (or the dataset itself)."""
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(loaded, DatasetDict | IterableDatasetDict):
        if split not in loaded:
            raise ValueError(f"{where} has no split {split!r} (splits: {list(loaded)}): set data.files.split")
        return loaded[split]
    return loaded


def _quiet() -> None:
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def load_saved(folder: Path, split: str) -> Any:
    from datasets import load_from_disk

    _quiet()
    return pick_split(load_from_disk(str(folder)), split, str(folder))


def load_arrow_files(files: list[Path], split: str) -> Any:
    """Arrow files of the ``datasets`` cache; those of ``split`` when the names say (``x-train-*.arrow``)."""
    from datasets import Dataset, concatenate_datasets

    ours = [f for f in files if f"-{split}." in f.name or f"-{split}-" in f.name] or files
    return concatenate_datasets([Dataset.from_file(str(f)) for f in sorted(ours)])


def load_repo(spec: str, split: str, cache_dir: str | None, streaming: bool = False) -> Any:
    """A dataset repository (local folder or hub id) through ``datasets.load_dataset``."""
    from datasets import load_dataset

    _quiet()
    hub = not Path(spec).exists()
    name = spec.removeprefix("hf://datasets/")
    try:
        loaded = load_dataset(name, split=split, cache_dir=cache_dir, streaming=streaming)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; one line for the user
        if not hub:
            raise ValueError(f"{spec}: datasets cannot load this folder: {_first_line(e)}") from None
        offline = " (HF_HUB_OFFLINE=1: only datasets already in the cache load)" if _offline() else ""
        raise FileNotFoundError(
            f"data.files.path {spec}: no such file or folder, and no Hugging Face dataset {name!r} could be "
            f"loaded{offline}: {_first_line(e)}"
        ) from None
    return pick_split(loaded, split, spec)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def open_parquet(
    paths: list[str], image_column: str, caption_column: str, cache_dir: str | None
) -> ArrowImageText:
    """Parquet files through ``datasets``: converted once to memory-mapped Arrow (only the two
    columns), so shuffled reads cost what sequential ones do. Keys name the file and its row."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    _quiet()
    names, starts, total = [], [], 0
    columns = None
    for p in paths:
        meta = pq.ParquetFile(p)
        columns = meta.schema_arrow.names
        names.append(Path(p).name)
        starts.append(total)
        total += meta.metadata.num_rows
    if not total:
        raise ValueError(f"no rows in {paths}")
    image_column, caption_column = resolve_columns(columns, image_column, caption_column, paths[0])
    ds = Dataset.from_parquet(
        [str(p) for p in paths], cache_dir=cache_dir, columns=[image_column, caption_column]
    )
    return ArrowImageText(
        ds, image_column, caption_column, name=names[0], base=Path(paths[0]).parent, files=(names, starts)
    )


def open_hf(
    spec: str, image_column: str, caption_column: str, split: str = "train", cache_dir: str | None = None
) -> ArrowImageText:
    """A ``datasets`` dataset named by ``spec`` (see the module docstring), map-style."""
    path = Path(spec)
    if path.is_dir():
        snapshot = hub_snapshot(path)
        if snapshot is not None:
            return open_hf(str(snapshot), image_column, caption_column, split, cache_dir)
        if is_saved_dataset(path):
            ds = load_saved(path, split)
        elif arrows := sorted(path.glob("*.arrow")):
            ds = load_arrow_files(arrows, split)
        else:
            ds = load_repo(spec, split, cache_dir)
        return ArrowImageText(ds, image_column, caption_column, name=path.name, base=path)
    ds = load_repo(spec, split, cache_dir)
    return ArrowImageText(ds, image_column, caption_column, name=spec.split("/")[-1])
