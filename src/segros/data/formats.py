"""Open an image-caption source from ``data.files.path``, choosing the reader from what the path holds.

The readers themselves live in :mod:`segros.data.readers` (folders, JSON(L) manifests, Parquet
row groups, WebDataset tars) and :mod:`segros.data.hf` (Hugging Face ``datasets``); this module
only tells them apart (docs/data.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segros.data import hf
from segros.data.readers import FolderImageText, JsonlImageText, JsonListImageText, TarImageText
from segros.data.shards import expand, is_multi, is_url, suffix_of


def listed_files(folder: Path) -> list[Path]:
    """The shards of a folder: its ``*.tar``, ``*.tar.gz``/``*.tgz``, ``*.parquet`` or ``*.arrow``
    files. Tars come first: img2dataset writes a metadata ``.parquet`` next to each ``.tar``."""
    for pattern in ("*.tar", "*.tar.gz", "*.tgz", "*.parquet", "*.arrow"):
        paths = sorted(folder.glob(pattern))
        if paths:
            return paths
    return []


def open_image_text(
    spec: str | Path | Sequence[str | Path],
    image_key: str = "image",
    caption_key: str = "caption",
    split: str = "train",
    cache_dir: str | None = None,
) -> Any:
    """Open an image-caption source, choosing the reader from the path (docs/data.md).

    - ``*.jsonl`` file: JSONL manifest; ``*.json`` file: a JSON list of records
      (``image_key``/``caption_key`` are their fields);
    - ``*.parquet`` file(s), or a folder of them: read through ``datasets`` (memory-mapped Arrow,
      converted once into ``cache_dir``), so shuffled reads cost what sequential ones do;
    - ``*.tar`` shard(s) or a folder of them: WebDataset shards, indexed once;
    - a ``datasets`` folder (``save_to_disk``, ``*.arrow`` files, a dataset repository or the
      hub cache's ``datasets--owner--name``), or a hub id ``owner/name``: :mod:`segros.data.hf`;
    - any other folder: images with sidecar ``.txt`` captions.

    ``spec`` may be a list of paths, or patterns joined by ``::``, with shell globs and brace
    ranges (``shards/shard-{000..099}.tar``). Compressed tars and URLs can only be streamed
    (``data.files.streaming``): they are refused here with that advice.
    """
    text = str(spec) if isinstance(spec, str | Path) else "::".join(map(str, spec))
    names = expand(spec)
    if any(is_url(n) for n in names):
        raise ValueError(f"{text}: URLs can only be read as a stream: set data.files.streaming=true")
    if is_multi(spec):
        paths = [Path(n) for n in names]
        if missing := [p for p in paths if not p.is_file()]:
            raise FileNotFoundError(
                f"data source not found: {len(missing)} of the {len(paths)} files {text} names are "
                f"missing: {', '.join(p.name for p in missing[:3])}{', ...' if len(missing) > 3 else ''}"
            )
    else:
        path = hf.local_source(names[0])
        if path is None:  # a hub id, loaded from the hub
            return hf.open_hf(names[0], image_key, caption_key, split, cache_dir)
        if path.is_dir():
            if hf.is_saved_dataset(path):
                return hf.open_hf(str(path), image_key, caption_key, split, cache_dir)
            paths = listed_files(path)
            if not paths:
                if hf.is_repo_folder(path):
                    return hf.open_hf(str(path), image_key, caption_key, split, cache_dir)
                return FolderImageText(path)
        else:
            paths = [path]
    suffixes = {suffix_of(str(p)) for p in paths}
    if suffixes == {".parquet"}:
        return hf.open_parquet([str(p) for p in paths], image_key, caption_key, cache_dir)
    if suffixes == {".arrow"}:
        dataset = hf.load_arrow_files(paths, split)
        folder = paths[0].parent
        return hf.ArrowImageText(dataset, image_key, caption_key, name=folder.name, base=folder)
    if suffixes == {".tar"}:
        return TarImageText(paths)
    if suffixes <= {".tar.gz", ".tgz", ".tar"}:
        raise ValueError(
            f"{text}: compressed tar shards cannot be read by index (gzip streams cannot be seeked): "
            "set data.files.streaming=true to read them as a stream, or decompress them once (gunzip)"
        )
    if suffixes == {".jsonl"} and len(paths) == 1:
        return JsonlImageText(paths[0], image_key=image_key, caption_key=caption_key)
    if suffixes == {".json"} and len(paths) == 1:
        return JsonListImageText(paths[0], image_key=image_key, caption_key=caption_key)
    raise ValueError(
        f"cannot tell the data format of {text}: expected a folder, one .jsonl or .json, "
        f".parquet / .arrow file(s), .tar shard(s) or a Hugging Face dataset, got suffixes {sorted(suffixes)}"
    )
