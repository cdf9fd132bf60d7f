"""A pre-encoded image cache: the backbone's frozen image encoder(s) run once over a dataset.

``segros cache`` (:func:`write_cache`) writes ``DIR/shard-<k:05d>.safetensors``, each holding
the :meth:`~segros.backbones.base.Backbone.cache_fields` of ``shard_size`` consecutive records
(codes for TinyUMM / Show-o, plus CLIP pixels for Show-o's CLIP variants; VAE latents for
Harmon) with their captions and keys in the file's metadata, and last ``DIR/index.json``: the
record count, the shards, bad records, and the identity the cache was made with.

The identity is what must match for a training run to read the cache (``data.cache=DIR``,
:func:`open_cache`): the backbone, a SHA-256 of its image encoders' weights, its image size
and token grid, and the data keys that decide the records (source, path, ShapesWorld seed,
scenes, layout, caption style, columns, a datasets split). A cache made with anything else is
refused, naming what differs.

Every shard is written to a temporary file and renamed, and ``index.json`` is written only
once every shard is there, so a run killed mid-way leaves no shard training would read (and
no index: training refuses the folder); run the command again and it keeps the finished
shards, checked, and writes the rest.

Several processes (``accelerate launch`` / ``torchrun``): process ``r`` of ``w`` encodes the shards
``k`` with ``k % w == r`` on its own device, every process having built the same encoders (same
seed), and after a barrier the first process checks every shard and writes the one index. A shard
is the same records whichever process writes it, so the cache is the one-process cache, record for
record, and a run killed mid-way resumes with any number of processes.

Per-epoch pixel augmentations: segros has none (images are resized / padded to the model's
size the same way every epoch), so one encoding per record is exact. A source that changed
pixels per epoch (random crops) could not be cached this way: the identity records the
preprocessing, and such a source must be refused here rather than silently cached once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segros.data.readers import BadRecord
from segros.runlock import lock_folder

INDEX = "index.json"
FORMAT = 1
# The data keys of the identity. The index stores them flat, under the names they had before the
# source's options moved under data.files / data.shapes, so older caches still match.
# the files' options (data.files.<name>), when the records are files
FILES_KEYS = ("path", "image_column", "caption_column")
# ShapesWorld's options (data.shapes.<name>, stored as shapes_<name>), when the records are ShapesWorld's
SHAPES_KEYS = (
    "seed",
    "scenes",
    "layout",
    "caption_style",
    "coarse_color_rate",
    "coarse_relation_rate",
    "kind_weights",
)
# Files keys added later: part of the identity only when set away from their default, so caches
# written before them still match a run that leaves them alone.
LATER_FILES_KEYS = {"split": "train"}


@dataclass
class CachedRecord:
    """A record read from the cache: the caption, its key, and the pre-encoded image fields."""

    caption: str
    key: str
    cached: dict[str, torch.Tensor]

    @property
    def image(self) -> Any:
        raise AttributeError(f"{self.key} comes from an image cache: it has no image, only its encoding")


def _digest(value: Any) -> str:
    h = hashlib.sha256()
    items = sorted(value.state_dict().items()) if isinstance(value, torch.nn.Module) else [("", value)]
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def identity(backbone: Any, data: Any, model_name: str) -> dict[str, Any]:
    """What a cache depends on (see the module docstring)."""
    return {
        "format": FORMAT,
        "backbone": model_name,
        "image_size": int(backbone.image_size),
        "token_grid": list(backbone.token_grid),
        "encoders": {name: _digest(enc) for name, enc in sorted(backbone.image_encoders().items())},
        "data": {"source": data.source} | _files_keys(data) | _shapes_keys(data),
    }


def _files_keys(data: Any) -> dict[str, Any]:
    files = getattr(data, "files", None) if data.source == "files" else None
    if files is None:
        return {}
    keys = {k: _as_json(getattr(files, k)) for k in FILES_KEYS}
    later = {k: getattr(files, k) for k in LATER_FILES_KEYS}
    return keys | {k: v for k, v in later.items() if v != LATER_FILES_KEYS[k]}


def _shapes_keys(data: Any) -> dict[str, Any]:
    shapes = getattr(data, "shapes", None) if data.source == "shapes" else None
    if shapes is None:
        return {}
    keys = {f"shapes_{k}": _as_json(getattr(shapes, k)) for k in SHAPES_KEYS}
    if shapes.caption_style == "web":  # its rates decide the captions
        keys["shapes_web_noise"] = shapes.web_noise.model_dump()
    return keys


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from the index's JSON (a tuple comes back as a list)."""
    return list(value) if isinstance(value, tuple) else value


def _mismatch(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """What differs between this run's identity and a cache's, named as config keys. A cache
    written before data.files / data.shapes carries the other source's keys (at their defaults),
    which its records never depended on: they are left out of the comparison."""
    got = copy.deepcopy(got)
    stored, wanted = got.get("data", {}), want.get("data", {})
    other = [k for k in stored if (k in FILES_KEYS or k.startswith("shapes_")) and k not in wanted]
    for key in other:
        del stored[key]
    names = [d.replace("data.shapes_", "data.shapes.", 1) for d in _differences(want, got)]
    return [_files_name(d) for d in names]


def _files_name(difference: str) -> str:
    """``data.files.path: ...`` as ``data.files.path: ...`` (the index's flat names, the config's keys)."""
    for key in (*FILES_KEYS, *LATER_FILES_KEYS):
        if difference.startswith(f"data.{key}:"):
            return f"data.files.{difference.removeprefix('data.')}"
    return difference


def _differences(want: dict[str, Any], got: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(want) | set(got)):
        a, b = want.get(key), got.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: cache {b!r}, this run {a!r}")
    return out


def _shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:05d}.safetensors"


def _finished_shard(path: Path, start: int, stop: int, ident: dict[str, Any]) -> dict[str, str] | None:
    """The metadata of a whole shard written for these records and this identity, else None."""
    from safetensors import safe_open

    from segros.storage import safetensors_problem

    if not path.is_file() or safetensors_problem(path):
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    same = meta.get("range") == f"{start}:{stop}" and meta.get("identity") == json.dumps(
        ident, sort_keys=True
    )
    return meta if same else None


def write_cache(
    backbone: Any,
    source: Any,
    data: Any,
    model_name: str,
    out: str | Path,
    shard_size: int = 256,
    batch_size: int = 32,
    progress: Any = None,
    rank: int = 0,
    world: int = 1,
    barrier: Any = None,
) -> dict[str, Any]:
    """Encode every record of ``source`` into ``out`` (resuming a killed run); the index.

    With ``world > 1`` this is process ``rank``'s part (see the module docstring); ``barrier`` (a
    call every process makes, e.g. ``PartialState().wait_for_everyone``) is required then.

    One writer at a time: ``out`` is locked while this runs (:mod:`segros.runlock`), so a second
    ``segros cache`` on the same folder refuses, naming the first, instead of both writing. The
    first process holds the folder's lock, each other process a lock of its own rank (so a second
    job's processes are refused by the first job's, and a launcher ends the rest of that job)."""
    if world > 1 and barrier is None:
        raise ValueError("write_cache over several processes needs a barrier")
    with lock_folder(out, key=None if rank == 0 else f"process-{rank}"):
        return _write_cache(
            backbone, source, data, model_name, out, shard_size, batch_size, progress, rank, world, barrier
        )


def _write_cache(
    backbone: Any,
    source: Any,
    data: Any,
    model_name: str,
    out: str | Path,
    shard_size: int,
    batch_size: int,
    progress: Any,
    rank: int,
    world: int,
    barrier: Any,
) -> dict[str, Any]:
    from safetensors.torch import save_file

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    ident = identity(backbone, data, model_name)
    index_file = folder / INDEX
    if index_file.is_file():
        old = json.loads(index_file.read_text())
        if diff := _mismatch(ident, old.get("identity", {})):
            raise ValueError(f"{folder} holds a cache made differently: " + "; ".join(diff))
        return old
    n = len(source)
    ranges = [(k, start, min(n, start + shard_size)) for k, start in enumerate(range(0, n, shard_size))]
    for k, start, stop in ranges:
        path = _shard_path(folder, k)
        if k % world != rank or _finished_shard(path, start, stop, ident) is not None:
            continue  # another process's, or finished before an interruption
        records = [source[i] for i in range(start, stop)]
        numbered = list(zip(range(start, stop), records, strict=True))
        shard_bad = [
            {"index": i, "key": r.key, "reason": r.reason} for i, r in numbered if isinstance(r, BadRecord)
        ]
        good = [(i, r) for i, r in numbered if not isinstance(r, BadRecord)]
        fields: dict[str, list[torch.Tensor]] = {}
        backbone.eval()
        with torch.no_grad():
            for b in range(0, len(good), batch_size):
                images = [r.image for _, r in good[b : b + batch_size]]
                for key, value in backbone.cache_fields(images).items():
                    fields.setdefault(key, []).append(value.detach().cpu())
        tensors = {key: torch.cat(v).contiguous() for key, v in fields.items()}
        meta = {
            "range": f"{start}:{stop}",
            "identity": json.dumps(ident, sort_keys=True),
            "captions": json.dumps([r.caption for _, r in good]),
            "keys": json.dumps([r.key for _, r in good]),
            "good": json.dumps([i for i, _ in good]),
            "bad": json.dumps(shard_bad),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)  # a killed run leaves at most a .tmp file, never a partial shard
        if progress is not None:
            progress(stop, n)
    if barrier is not None:
        barrier()  # every process has written its shards
    if rank == 0:
        shards, bad = [], []
        for k, start, stop in ranges:
            path = _shard_path(folder, k)
            if (meta := _finished_shard(path, start, stop, ident)) is None:
                raise RuntimeError(f"{path} is missing or incomplete after every process finished")
            shards.append(path.name)
            bad += json.loads(meta["bad"])
        index = {"identity": ident, "count": n, "shard_size": shard_size, "shards": shards, "bad": bad}
        tmp = index_file.with_name(INDEX + ".tmp")
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, index_file)
    if barrier is not None:
        barrier()  # the index is there
    return json.loads(index_file.read_text())


class CachedImageText:
    """The records of a cache, by index, as the dataset they were encoded from."""

    def __init__(self, folder: str | Path, index: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.index = index
        self.shard_size = int(index["shard_size"])
        self.bad = {int(b["index"]): b for b in index["bad"]}
        self._loaded: tuple[int, dict[int, CachedRecord]] | None = None

    def __len__(self) -> int:
        return int(self.index["count"])

    def _shard(self, k: int) -> dict[int, CachedRecord]:
        if self._loaded is None or self._loaded[0] != k:
            from safetensors import safe_open

            path = self.folder / self.index["shards"][k]
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            captions, keys, good = (json.loads(meta[m]) for m in ("captions", "keys", "good"))
            records = {
                i: CachedRecord(captions[j], keys[j], {key: t[j] for key, t in tensors.items()})
                for j, i in enumerate(good)
            }
            self._loaded = (k, records)
        return self._loaded[1]

    def __getitem__(self, i: int) -> CachedRecord | BadRecord:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i in self.bad:
            return BadRecord(self.bad[i]["key"], self.bad[i]["reason"])
        return self._shard(i // self.shard_size)[i]


def open_cache(folder: str | Path, backbone: Any, data: Any, model_name: str) -> CachedImageText:
    """The cache at ``folder`` if it was made with this backbone's encoders and this data;
    otherwise a ``ValueError`` naming what differs."""
    folder = Path(folder)
    index_file = folder / INDEX
    if not index_file.is_file():
        raise FileNotFoundError(
            f"data.cache {folder} has no {INDEX}: not a cache, or `segros cache` did not finish "
            "(run it again to complete it)"
        )
    index = json.loads(index_file.read_text())
    if diff := _mismatch(identity(backbone, data, model_name), index.get("identity", {})):
        raise ValueError(f"data.cache {folder} was made with another encoder or data: " + "; ".join(diff))
    return CachedImageText(folder, index)
