"""Reading config files: YAML, ``base:`` chains, and where each key came from.

A config file may start from other files with a top-level ``base:`` key (a path, or a list of
paths applied in order, each relative to the file that names it) and state only what differs.
Mappings merge key by key, depth first; anything else (lists, scalars, ``null``) in the later file
replaces the earlier value whole. Bases may have bases; a cycle is refused with the files named.

The merged dict is validated once, as a whole (segros.train.config.validate), so a base may be a
fragment that is not a runnable config on its own. To let an error in a base name that base, the
reader also returns the file each leaf value came from (:data:`Origins`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

BASE_KEY = "base"

#: key path (tuple of keys) -> the file that set the value there
Origins = dict[tuple[str, ...], Path]
OriginOf = Callable[[tuple[str, ...]], Path | None]


class ConfigFileError(ValueError):
    """A config file that cannot be read: missing, not YAML, a bad ``base:`` or a cycle."""


def read_yaml(path: Path) -> dict[str, Any]:
    """One file's own mapping (no bases resolved)."""
    if not path.is_file():
        raise ConfigFileError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigFileError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _bases(path: Path, value: Any) -> list[Path]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigFileError(f"{path}: {BASE_KEY} must be a file path or a list of them, got {value!r}")
    return [path.parent / n for n in names]


def merge(into: dict[str, Any], top: dict[str, Any], origins: Origins, origin: OriginOf, prefix=()) -> None:
    """Deep-merge ``top`` into ``into`` in place: mappings key by key, everything else replaced.
    Records ``origin(key_path)`` for every value ``top`` sets, and forgets what it replaced."""
    for key, value in top.items():
        at = (*prefix, key)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            origins.pop(at, None)  # the mapping now mixes files: only its values keep one
            merge(into[key], value, origins, origin, at)
            continue
        forget(origins, at)
        into[key] = value
        _record(value, origins, origin, at)


def _record(value: Any, origins: Origins, origin: OriginOf, at: tuple[str, ...]) -> None:
    if (source := origin(at)) is not None:
        origins[at] = source
    if isinstance(value, dict):
        for key, child in value.items():
            _record(child, origins, origin, (*at, key))


def forget(origins: Origins, at: tuple[str, ...]) -> None:
    """Drop the origin of ``at`` and of everything under it (it is being replaced)."""
    for key in [k for k in origins if k[: len(at)] == at]:
        del origins[key]


def resolve(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Origins]:
    """The merged mapping of ``path`` and its bases, without ``base:``, and each value's file."""
    path = Path(path)
    seen = [p.resolve() for p in _chain]
    if path.resolve() in seen:
        cycle = " -> ".join(str(p) for p in (*_chain[seen.index(path.resolve()) :], path))
        raise ConfigFileError(f"config files form a cycle through {BASE_KEY}: {cycle}")
    own = read_yaml(path)
    merged: dict[str, Any] = {}
    origins: Origins = {}
    for base in _bases(path, own.pop(BASE_KEY)) if BASE_KEY in own else []:
        if not base.is_file():
            raise ConfigFileError(f"{path}: {BASE_KEY} {base} does not exist")
        raw, where = resolve(base, (*_chain, path))
        merge(merged, raw, origins, where.get)
    merge(merged, own, origins, lambda at: path)
    return merged, origins
