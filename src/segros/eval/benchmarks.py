"""Generate a public benchmark's prompts with any backbone, in the layout its scorer reads.

The paper evaluates on GenEval, DPG-Bench and T2I-CompBench. Their scorers need detectors and
VQA models this project does not ship, so segros writes the images exactly where those scorers
look for them and the user runs the official scoring:

- ``geneval``: ``evaluation_metadata.jsonl`` in, ``OUT/<index:05d>/{metadata.jsonl,
  samples/<n>.png}`` out (GenEval's ``evaluate_images.py``; ``segros eval shapes`` for
  ShapesWorld prompts).
- ``dpg``: DPG-Bench's ``prompts.json`` (``{"<item_id>.txt": prompt}``) in, one grid per prompt
  ``OUT/<item_id>.png`` of the samples (2 x 2 for 4 samples) out, as ``compute_dpg_bench.py
  --pic-num 4`` splits it.
- ``t2i-compbench``: a ``<category>_val.txt`` (one prompt per line) in,
  ``OUT/samples/<prompt>_<k:06d>.png`` out with ``k`` counting images over the file, as
  T2I-CompBench's scorers read them.
- ``wise``: one of WISE's ``data/*.json`` files (a JSON list of records with ``prompt_id``,
  ``Prompt``, ``Explanation``, ``Subcategory``) in, ``OUT/<prompt_id>.png`` out, one image per
  prompt, as WISE's ``gpt_eval.py --image_dir OUT`` reads them. The three files number their
  prompts 1-1000 without overlap, so all three can be generated into the same folder.

docs/evaluation.md gives the scorer command for each layout.

Prompt files are data the user points at (the benchmarks' licences keep them out of this
repository). A malformed or empty prompt stops with the file and line, before anything is
generated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from segros.eval.generate import ONE_PROCESS, Job, Share, generate_jobs
from segros.eval.geneval import json_lines, prompt_folder, write_prompt_metadata

Benchmark = Literal["geneval", "dpg", "t2i-compbench", "wise"]
BENCHMARKS: tuple[str, ...] = ("geneval", "dpg", "t2i-compbench", "wise")
# images per prompt the benchmark's scorer reads when --samples is not given
DEFAULT_SAMPLES = {"geneval": 4, "dpg": 4, "t2i-compbench": 4, "wise": 1}


PARTS = ".parts"  # dpg: samples of a prompt that several processes shared, until tiled


class PromptFileError(ValueError):
    """A prompt file that cannot be read as the benchmark says."""


def read_benchmark_prompts(path: str | Path, benchmark: Benchmark) -> list[dict[str, Any]]:
    """Records with a ``prompt`` (and, for DPG-Bench, the item ``key``) from a benchmark file."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if benchmark == "geneval":
        lines = json_lines(text.splitlines(), path, PromptFileError)
        records = [_checked(record, f"{path}:{n}") for n, record in lines]
    elif benchmark == "dpg":
        items = _json(text, path)
        if not isinstance(items, dict):
            raise PromptFileError(f'{path}: expected {{"<item_id>.txt": prompt, ...}}')
        records = [
            _checked({"key": Path(key).stem, "prompt": prompt}, f"{path}: {key}")
            for key, prompt in items.items()
        ]
    elif benchmark == "t2i-compbench":
        records = [
            _checked({"prompt": line.strip()}, f"{path}:{n}")
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    elif benchmark == "wise":
        records = _wise_records(text, path)
    else:
        raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}; got {benchmark!r}")
    if not records:
        raise PromptFileError(f"{path} holds no prompts")
    return records


def _json(text: str, path: Path) -> Any:
    """A benchmark's JSON prompt file, or a ``PromptFileError`` naming the file and the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None


def _wise_records(text: str, path: Path) -> list[dict[str, Any]]:
    """WISE's ``data/*.json``: a list of ``{"prompt_id": int, "Prompt": str, "Explanation": str,
    "Subcategory": str, ...}``; ``key`` is the prompt id (the image is ``<prompt_id>.png``)."""
    items = _json(text, path)
    if not isinstance(items, list):
        raise PromptFileError(f'{path}: expected a JSON list of {{"prompt_id": ..., "Prompt": ...}} records')
    records, seen = [], set()
    for n, item in enumerate(items):
        where = f"{path}: record {n}"
        if not isinstance(item, dict):
            raise PromptFileError(f"{where}: not an object")
        key = item.get("prompt_id")
        if isinstance(key, bool) or not isinstance(key, int | str) or not str(key).isdigit():
            raise PromptFileError(f"{where}: prompt_id must be a whole number; got {key!r}")
        if str(int(key)) in seen:
            raise PromptFileError(f"{where}: prompt_id {key} appears twice")
        seen.add(str(int(key)))
        records.append(_checked({**item, "key": str(int(key)), "prompt": item.get("Prompt")}, where))
    return records


def _checked(record: dict[str, Any], where: str) -> dict[str, Any]:
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptFileError(f"{where}: no prompt (a non-empty string is required)")
    return record


def image_grid(images: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W, 3) images tiled row by row into a near-square grid (2 x 2 for 4)."""
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, c = images[0].shape
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for k, image in enumerate(images):
        r, q = divmod(k, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = image
    return grid


def compbench_name(prompt: str, k: int) -> str:
    """T2I-CompBench's file name: the prompt, an underscore, a six-digit running number."""
    return f"{prompt.replace('/', ' ')}_{k:06d}.png"


def generate_benchmark(
    backbone: Any,
    records: Sequence[dict[str, Any]],
    benchmark: Benchmark,
    out: str | Path,
    samples: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    skip_existing: bool = False,
    progress: bool = False,
    options: dict[str, Any] | None = None,
    share: Share = ONE_PROCESS,
    barrier: Callable[[], None] | None = None,
) -> int:
    """Generate every record ``samples`` times into ``out``; returns the images generated (by all
    processes).

    ``skip_existing`` resumes a killed run: jobs whose file exists are left alone (the rest are
    re-batched, so their pixels differ from an uninterrupted run's; seeds stay per batch).
    ``options`` go to ``backbone.generate`` (``guidance_scale``, ``steps``). Several processes
    pass their ``share`` and a ``barrier`` (``accelerate``'s ``wait_for_everyone``): each lists the
    missing files before any is written, process 0 writes the metadata, each generates its batches.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wait = barrier or (lambda: None)
    prompts = [r["prompt"] for r in records]
    if benchmark == "geneval":

        def target(job: Job) -> Path:
            return prompt_folder(out, job[0]) / "samples" / f"{job[1]}.png"

    elif benchmark == "t2i-compbench":
        (out / "samples").mkdir(exist_ok=True)

        def target(job: Job) -> Path:
            return out / "samples" / compbench_name(prompts[job[0]], job[0] * samples + job[1])

    elif benchmark == "wise":
        if samples != 1:
            raise ValueError(f"WISE scores one image per prompt (<prompt_id>.png); got samples={samples}")

        def target(job: Job) -> Path:
            return out / f"{records[job[0]]['key']}.png"

    else:  # dpg: one grid per prompt, written once all its samples are done
        return _generate_dpg(
            backbone, records, out, samples, seed, batch_size, skip_existing, progress, options, share, wait
        )

    all_jobs = [(i, n) for i in range(len(records)) for n in range(samples)]
    jobs = [job for job in all_jobs if not (skip_existing and target(job).is_file())]
    if benchmark == "geneval" and share.rank == 0:
        for i, record in enumerate(records):
            write_prompt_metadata(out, i, record)
    wait()  # every process has listed what is missing, and the folders exist

    def write(job: Job, image: np.ndarray) -> None:
        _save_atomic(image, target(job))

    generate_jobs(
        backbone, prompts, jobs, write, seed, batch_size, progress, f"generate {benchmark}", options, share
    )
    wait()
    return len(jobs)


def _generate_dpg(
    backbone: Any,
    records: Sequence[dict[str, Any]],
    out: Path,
    samples: int,
    seed: int,
    batch_size: int,
    skip_existing: bool,
    progress: bool,
    options: dict[str, Any] | None,
    share: Share,
    wait: Callable[[], None],
) -> int:
    """One grid per prompt. A prompt whose samples fell into batches of several processes has its
    samples written to ``OUT/.parts/`` and process 0 tiles them once everyone is done."""
    prompts = [r["prompt"] for r in records]
    todo = [i for i, r in enumerate(records) if not (skip_existing and (out / f"{r['key']}.png").is_file())]
    jobs = [(i, n) for i in todo for n in range(samples)]
    pending: dict[int, dict[int, np.ndarray]] = {}
    parts = out / PARTS
    wait()

    def write(job: Job, image: np.ndarray) -> None:
        i, n = job
        pending.setdefault(i, {})[n] = image
        if len(pending[i]) == samples:
            done = pending.pop(i)
            _save_atomic(image_grid([done[k] for k in range(samples)]), out / f"{records[i]['key']}.png")

    generate_jobs(backbone, prompts, jobs, write, seed, batch_size, progress, "generate dpg", options, share)
    if pending:
        parts.mkdir(exist_ok=True)
        for i, done in pending.items():
            for n, image in done.items():
                _save_atomic(image, parts / f"{i}-{n}.png")
    wait()
    if share.rank == 0 and parts.is_dir():
        for i in todo:
            files = [parts / f"{i}-{n}.png" for n in range(samples)]
            if all(f.is_file() for f in files):
                grid = image_grid([np.asarray(Image.open(f).convert("RGB")) for f in files])
                _save_atomic(grid, out / f"{records[i]['key']}.png")
                for f in files:
                    f.unlink()
        if not any(parts.iterdir()):
            parts.rmdir()
    wait()
    return len(jobs)


def _save_atomic(image: np.ndarray, path: Path) -> None:
    """Write through a temporary name, so a killed run never leaves a half-written PNG behind
    for ``skip_existing`` to trust."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
