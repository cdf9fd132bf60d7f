"""``data.files.path`` as written by users and dataset cards: one path, a glob, brace ranges, or a list.

WebDataset shards ship as numbered files (``shard-{000..099}.tar``), and training scripts name
them the way the ``webdataset`` package does: brace ranges (expanded with ``braceexpand``, the
package webdataset itself uses), several patterns joined by ``::``, or a YAML list. Each part is
expanded in order; a part with ``*?[`` is a shell glob expanded in sorted order. URLs
(``https://``, ``s3://``, ``hf://``, ``pipe:``) are kept as they are: only a stream can read them
(``data.files.streaming``, through ``datasets`` and fsspec).
"""

from __future__ import annotations

import glob as globlib
import re
from collections.abc import Sequence
from pathlib import Path

from braceexpand import braceexpand

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^pipe:")
COMPRESSED_TAR = (".tar.gz", ".tgz")


def is_url(part: str) -> bool:
    """Whether ``part`` names a remote file (``https://...``, ``s3://...``, ``hf://...``, ``pipe:``)."""
    return bool(URL.match(part))


def spec_parts(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """The patterns ``spec`` holds: a list as given, a string split at ``::``."""
    if isinstance(spec, str | Path):
        return [p for p in str(spec).split("::") if p]
    return [str(p) for p in spec]


def expand(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Every file ``spec`` names, in order: braces expanded, globs matched (sorted), URLs kept.

    A pattern that names no existing file is kept as written when it has no glob characters, so
    the caller can say which file is missing; a glob that matches nothing is an error here.
    """
    out: list[str] = []
    for part in spec_parts(spec):
        for name in braceexpand(part) if "{" in part else [part]:
            if is_url(name) or not any(c in name for c in "*?["):
                out.append(name)
                continue
            matches = sorted(globlib.glob(name))
            if not matches:
                raise FileNotFoundError(f"no files match {name}")
            out.extend(matches)
    if not out:
        raise ValueError(f"data.files.path {spec!r} names no file")
    return out


def suffix_of(name: str) -> str:
    """The format suffix of a file name: ``.tar.gz`` as one suffix, else the last one, lower case."""
    lower = name.lower()
    for compound in COMPRESSED_TAR:
        if lower.endswith(compound):
            return compound
    return Path(lower).suffix


def is_multi(spec: str | Path | Sequence[str | Path]) -> bool:
    """Whether ``spec`` is more than one plain path (a list, ``::``, braces or a glob)."""
    parts = spec_parts(spec)
    return len(parts) != 1 or any(c in parts[0] for c in "{*?[")
