"""GenEval's prompt vocabulary and prompt files: what ShapesWorld draws from and GenEval scores.

GenEval (Ghosh et al., 2023; github.com/djghosh13/geneval) describes each prompt by a metadata
record: a tag, the objects with their colours and counts, and a relation between two of them.
The words such a record may use (tags, colours, relations), the geometry that decides whether a
relation holds between two boxes, and the files prompts are kept in (a metadata JSONL; one
``<index:05d>/metadata.jsonl`` folder per prompt) are here, in the data layer: ShapesWorld's
scenes and prompts are built from them, and :mod:`segros.eval.geneval` scores with the same ones
(it re-exports every name). Each function names the upstream function it mirrors, if any.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)  # fmt: skip
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# Upstream's position threshold of the relation test (``evaluate_images.py`` option).
POSITION_THRESHOLD = 0.1


def relative_position(
    box_a: Iterable[float], box_b: Iterable[float], threshold: float = POSITION_THRESHOLD
) -> set[str]:
    """Relations of box A relative to box B; mirrors upstream ``relative_position``.

    The centre offset A - B is shrunk towards zero by ``threshold * (size_a + size_b)`` on each
    axis, divided by the length of the unshrunk offset, and a relation holds when that axis'
    component is beyond 0.5 (image y grows downwards, so negative dy is "above").
    """
    ax0, ay0, ax1, ay1 = (float(v) for v in list(box_a)[:4])
    bx0, by0, bx1, by1 = (float(v) for v in list(box_b)[:4])
    offset = ((ax0 + ax1) / 2 - (bx0 + bx1) / 2, (ay0 + ay1) / 2 - (by0 + by1) / 2)
    dims = (abs(ax1 - ax0) + abs(bx1 - bx0), abs(ay1 - ay0) + abs(by1 - by0))
    revised = [
        max(abs(o) - threshold * d, 0.0) * math.copysign(1.0, o) if o != 0 else 0.0
        for o, d in zip(offset, dims, strict=True)
    ]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


# --- prompt files --------------------------------------------------------------------------------


def json_lines(
    lines: Iterable[str], source: str | Path, error: type[Exception] = ValueError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every non-blank JSONL line; a line that is not a JSON object
    raises ``error`` naming ``source`` and the line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{source}:{n}: not a JSON line ({e.msg})") from None
        if not isinstance(record, dict):
            raise error(f"{source}:{n}: not a JSON object")
        yield n, record


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Read a GenEval metadata JSONL (one record per line, blank lines skipped).

    A line that is not a JSON object is a ``ValueError`` naming the file and line."""
    with open(path, encoding="utf-8") as fp:
        return [record for _, record in json_lines(fp, path)]


def write_prompts(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write metadata records as JSONL, one per line."""
    with open(path, "w", encoding="utf-8") as fp:
        for rec in records:
            fp.write(json.dumps(rec) + "\n")


def prompt_folder(root: str | Path, index: int) -> Path:
    """``<root>/<index:05d>``, the folder GenEval expects for prompt ``index``."""
    return Path(root) / f"{index:05d}"


def write_prompt_metadata(root: str | Path, index: int, metadata: dict[str, Any]) -> Path:
    """Create ``<root>/<index:05d>/samples/`` and write the record to ``metadata.jsonl``."""
    folder = prompt_folder(root, index)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text(json.dumps(metadata) + "\n", encoding="utf-8")
    return folder
