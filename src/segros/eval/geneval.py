"""GenEval's scoring rules and folder layout, independent of any detector.

GenEval (Ghosh et al., 2023; github.com/djghosh13/geneval) scores a generated image by running an
object detector and checking the prompt's metadata record against the detections. This module
re-implements, rule for rule, the parts of ``evaluation/evaluate_images.py`` and
``evaluation/summary_scores.py`` that do not depend on the detector, so that any detector that
produces :class:`Detection` lists (here: the ShapesWorld judge) is scored exactly as GenEval would
score Mask2Former's output. Each function names the upstream function it mirrors.

Layouts:

* input: ``<root>/<index:05d>/metadata.jsonl`` (one JSON object) and
  ``<root>/<index:05d>/samples/<n>.png``;
* output: ``results.jsonl`` with the fields ``filename, tag, prompt, correct, reason, metadata,
  details`` (``metadata`` and ``details`` are JSON strings, as upstream writes them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# GenEval's vocabulary and prompt files live in the data layer (ShapesWorld is built from them);
# they are scored with here and stay importable from here.
from segros.data.geneval_prompts import COLORS as COLORS
from segros.data.geneval_prompts import POSITION_THRESHOLD as POSITION_THRESHOLD
from segros.data.geneval_prompts import RELATIONS as RELATIONS
from segros.data.geneval_prompts import TAGS as TAGS
from segros.data.geneval_prompts import json_lines as json_lines
from segros.data.geneval_prompts import prompt_folder as prompt_folder
from segros.data.geneval_prompts import read_prompts as read_prompts
from segros.data.geneval_prompts import relative_position as relative_position
from segros.data.geneval_prompts import write_prompt_metadata as write_prompt_metadata
from segros.data.geneval_prompts import write_prompts as write_prompts

# Upstream defaults (``evaluate_images.py`` options): confidence threshold, stricter threshold for
# the counting tag and detections kept per class (the relation test's is POSITION_THRESHOLD).
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16


@dataclass(frozen=True)
class Detection:
    """One detected object: class name, colour name, box ``(x0, y0, x1, y1)`` and confidence."""

    cls: str
    color: str
    box: tuple[float, float, float, float]
    confidence: float

    def to_json(self) -> list[float]:
        """Upstream ``details`` format: the box followed by the score."""
        return [float(v) for v in self.box] + [float(self.confidence)]


def select_detections(
    detections: Iterable[Detection],
    tag: str,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
) -> dict[str, list[Detection]]:
    """Group detections by class, most confident first; mirrors the filtering in ``evaluate_image``.

    Detections at or below the confidence threshold (the stricter one for ``counting``) are dropped
    and at most ``max_objects`` are kept per class. Upstream's NMS is off by default
    (``max_overlap=1``), so none is applied here.
    """
    cut = counting_threshold if tag == "counting" else threshold
    grouped: dict[str, list[Detection]] = {}
    for det in detections:
        if det.confidence > cut:
            grouped.setdefault(det.cls, []).append(det)
    return {
        cls: sorted(dets, key=lambda d: -d.confidence)[:max_objects] for cls, dets in grouped.items()
    }  # fmt: skip


def evaluate(objects: dict[str, list[Detection]], metadata: dict[str, Any]) -> tuple[bool, str]:
    """Apply one metadata record to the grouped detections; mirrors upstream ``evaluate``.

    * include (AND): the top ``count`` detections of the class must exist; with ``color``, at least
      ``count`` of those top detections must have that colour; with ``position: [rel, i]``, every
      one of them must stand in ``rel`` to every object matched by include item ``i``.
    * exclude (OR): the image fails when at least ``count`` detections of the class exist.
    """
    correct = True
    reason: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        classname, count = req["class"], req["count"]
        matched = True
        found = objects.get(classname, [])[:count]
        if len(found) < count:
            correct = matched = False
            reason.append(f"expected {classname}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [d.color for d in found]
                n_ok = colors.count(req["color"])
                if n_ok < count:
                    correct = matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reason.append(
                        f"expected {req['color']} {classname}>={count}, found {n_ok} {req['color']}; "
                        f"and {seen}"
                    )
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                targets = matched_groups[target_group]
                if targets is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for obj in found:
                        for target in targets:
                            true_rels = relative_position(obj.box, target.box)
                            if expected_rel not in true_rels:
                                correct = matched = False
                                reason.append(
                                    f"expected {classname} {expected_rel} target, found "
                                    f"{' and '.join(sorted(true_rels))} target"
                                )
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        n_found = len(objects.get(classname, []))
        if n_found >= req["count"]:
            correct = False
            reason.append(f"expected {classname}<{req['count']}, found {n_found}")
    return correct, "\n".join(reason)


def metadata_classes(metadata: dict[str, Any]) -> set[str]:
    """Every class a metadata record mentions (include and exclude)."""
    return {req["class"] for key in ("include", "exclude") for req in metadata.get(key, [])}


def score_image(
    filename: str,
    detections: list[Detection],
    metadata: dict[str, Any],
    supported_classes: Iterable[str] | None = None,
) -> dict[str, Any]:
    """One ``results.jsonl`` row with upstream's fields; mirrors the return of ``evaluate_image``.

    If ``supported_classes`` is given and the record names a class outside it, the row is marked
    ``"unsupported": true`` with ``correct: false`` instead of being scored.
    """
    row: dict[str, Any] = {"filename": filename, "tag": metadata["tag"], "prompt": metadata["prompt"]}
    missing = sorted(metadata_classes(metadata) - set(supported_classes)) if supported_classes else []
    if missing:
        grouped: dict[str, list[Detection]] = {}
        row.update(correct=False, reason=f"unsupported classes: {', '.join(missing)}", unsupported=True)
    else:
        grouped = select_detections(detections, metadata["tag"])
        correct, reason = evaluate(grouped, metadata)
        row.update(correct=correct, reason=reason)
    row["metadata"] = json.dumps(metadata)
    row["details"] = json.dumps({cls: [d.to_json() for d in dets] for cls, dets in grouped.items()})
    return row


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Mean correctness per tag and their unweighted mean; mirrors ``summary_scores.py``.

    Tags appear in order of first occurrence (pandas ``groupby(sort=False)``). Rows marked
    ``unsupported`` are left out.
    """
    per_tag: dict[str, list[bool]] = {}
    n = 0
    for row in rows:
        if row.get("unsupported"):
            continue
        per_tag.setdefault(row["tag"], []).append(bool(row["correct"]))
        n += 1
    tags = {tag: sum(v) / len(v) for tag, v in per_tag.items()}
    overall = sum(tags.values()) / len(tags) if tags else 0.0
    return {"overall": overall, "tags": tags, "images": n}


# --- folder layout -------------------------------------------------------------------------------


def iter_images(root: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield ``(image path, metadata)`` for every ``<digits>/samples/<digits>.png``; mirrors ``main``.

    Upstream lists folders in ``os.listdir`` order; this sorts them numerically so results are
    reproducible (order does not change any score).
    """
    root = Path(root)
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
    folders.sort(key=lambda p: int(p.name))
    for folder in folders:
        metadata = json.loads((folder / "metadata.jsonl").read_text(encoding="utf-8"))
        samples = folder / "samples"
        if not samples.is_dir():
            continue
        names = [p for p in samples.iterdir() if p.is_file() and re.fullmatch(r"\d+\.png", p.name)]
        for path in sorted(names, key=lambda p: int(p.stem)):
            yield path, metadata


def image_problem(path: Path) -> str | None:
    """Why the image file cannot be read completely (missing, truncated, corrupt), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        return f"{type(e).__name__}: {e}"
    return None


def score_folder(
    root: str | Path,
    detect: Callable[[Path], list[Detection]],
    supported_classes: Iterable[str] | None = None,
    images: Iterable[tuple[Path, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Score every image of a GenEval folder with ``detect`` (image path -> detections).

    ``images``: the ``(path, metadata)`` pairs to score (default: :func:`iter_images`, every
    image in the folder; :func:`check_folder` gives those a prompt file expects). An image that
    cannot be read is not a crash: its row is a failure (``correct: false``) with ``unreadable:
    true`` and the reason.
    """
    supported = set(supported_classes) if supported_classes is not None else None
    rows = []
    for path, metadata in iter_images(root) if images is None else images:
        unsupported = supported is not None and not metadata_classes(metadata) <= supported
        problem = None if unsupported else image_problem(path)
        if problem is not None:
            rows.append(
                {
                    "filename": str(path),
                    "tag": metadata["tag"],
                    "prompt": metadata["prompt"],
                    "correct": False,
                    "reason": f"unreadable image: {problem}",
                    "unreadable": True,
                    "metadata": json.dumps(metadata),
                    "details": json.dumps({}),
                }
            )
            continue
        detections = [] if unsupported else detect(path)
        rows.append(score_image(str(path), detections, metadata, supported))
    return rows


@dataclass
class FolderCheck:
    """A GenEval-layout folder compared with what it should hold (:func:`check_folder`)."""

    reference: str  # what it was checked against (a prompt file, or the folder's own metadata)
    prompts: int  # prompt folders expected
    samples: int  # images expected per prompt
    images: list[tuple[Path, dict[str, Any]]]  # the expected images present, in order: score these
    missing_prompts: list[str]  # "00012", or "00012 (metadata.jsonl: ...)" when unusable
    missing_images: list[str]  # "00003/samples/2.png" in prompt folders that exist
    extra: list[str]  # entries that would be scored but are not expected (left out of the score)
    mismatched: list[str]  # prompt folders whose metadata differ from the prompt file

    @property
    def expected_images(self) -> int:
        return self.prompts * self.samples

    @property
    def missing_image_count(self) -> int:
        """Expected images not there: those of missing prompt folders and the missing samples."""
        return self.expected_images - len(self.images)

    @property
    def complete(self) -> bool:
        return not (self.missing_prompts or self.missing_images or self.extra or self.mismatched)


def _read_metadata(folder: Path) -> dict[str, Any] | str:
    try:
        metadata = json.loads((folder / "metadata.jsonl").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "metadata.jsonl missing"
    except (OSError, ValueError) as e:
        return f"metadata.jsonl unreadable: {e}"
    if not isinstance(metadata, dict) or "tag" not in metadata or "prompt" not in metadata:
        return "metadata.jsonl is not a GenEval record (no tag/prompt)"
    return metadata


def check_folder(
    root: str | Path,
    records: list[dict[str, Any]] | None = None,
    samples: int | None = None,
    reference: str = "the prompt file",
    default: tuple[list[dict[str, Any]], str] | None = None,
) -> FolderCheck:
    """Compare a GenEval-layout folder with the prompts it was generated from.

    With ``records`` (the prompt file's lines, named by ``reference``), prompt ``i`` must be the
    folder ``<i:05d>`` with that record as ``metadata.jsonl``; without, ``default`` is used if
    every prompt folder's metadata is that list's record of the same index, else the folder is
    checked against itself (prompts ``0 .. highest index present``; missing prompts after the
    last folder cannot be seen). Each prompt should have ``samples/0.png .. <samples-1>.png``;
    ``samples=None`` expects the most common count in the folder. Upstream GenEval scores
    whatever is there; this lists what is missing, what is extra (prompt folders the prompt
    file does not have, samples beyond the count, folders not named ``<index:05d>``) and which
    metadata disagree with the prompt file, so a partial folder is never scored as a whole one.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    extra: list[str] = []
    folders: dict[int, Path] = {}
    for path in sorted(root.iterdir()):
        if path.is_dir() and path.name.isdigit():
            if path.name == f"{int(path.name):05d}":
                folders[int(path.name)] = path
            else:
                extra.append(f"{path.name}/ (not named <index:05d>)")
    metadata = {i: _read_metadata(folder) for i, folder in sorted(folders.items())}
    present: dict[int, dict[int, Path]] = {}
    for i, folder in folders.items():
        found: dict[int, Path] = {}
        for path in sorted((folder / "samples").glob("*.png")) if (folder / "samples").is_dir() else []:
            if re.fullmatch(r"\d+\.png", path.name):
                if path.name == f"{int(path.stem)}.png":
                    found[int(path.stem)] = path
                else:
                    extra.append(f"{folder.name}/samples/{path.name} (not named <n>.png)")
        present[i] = found
    usable = {i: m for i, m in metadata.items() if isinstance(m, dict)}
    if records is None and default is not None:
        candidate, name = default
        inside = {i: m for i, m in usable.items() if i < len(candidate)}  # others are extra
        if inside and all(candidate[i] == m for i, m in inside.items()):
            records, reference = candidate, name
    if records is None:
        reference = (
            "the folder's own metadata (no prompt file: prompts after the last folder are not checked)"
        )
        n_prompts = max(folders) + 1 if folders else 0
    else:
        n_prompts = len(records)
    if samples is None:
        counts = [max(found) + 1 for found in present.values() if found]
        if not counts:
            raise ValueError(f"{root} holds no <index:05d>/samples/<n>.png images")
        samples = max(counts, key=lambda c: (counts.count(c), c))
    check = FolderCheck(reference, n_prompts, samples, [], [], [], extra, [])
    for i in sorted(set(range(n_prompts)) | set(folders)):
        name = f"{i:05d}"
        if i >= n_prompts:
            check.extra.append(f"{name}/ (prompt {i} is not in {reference})")
            continue
        if i not in folders:
            check.missing_prompts.append(name)
            continue
        meta = metadata[i]
        if isinstance(meta, str):
            check.missing_prompts.append(f"{name} ({meta})")
            continue
        if records is not None and records[i] != meta:
            check.mismatched.append(f"{name}/metadata.jsonl differs from prompt {i} of {reference}")
            continue
        for n in sorted(set(range(samples)) | set(present[i])):
            if n >= samples:
                check.extra.append(f"{name}/samples/{n}.png (beyond {samples} samples per prompt)")
            elif n in present[i]:
                check.images.append((present[i][n], meta))
            else:
                check.missing_images.append(f"{name}/samples/{n}.png")
    return check


def write_results(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as ``results.jsonl`` (one JSON object per line, upstream field order)."""
    with open(path, "w", encoding="utf-8") as fp:
        for row in rows:
            fp.write(json.dumps(row) + "\n")
