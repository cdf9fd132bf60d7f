"""Generate a benchmark's prompts with any backbone into GenEval's folder layout.

``ROOT/<index:05d>/metadata.jsonl`` holds the prompt's record and ``samples/<n>.png`` its
images, exactly what GenEval's ``evaluate_images.py`` (and ``segros eval shapes``) reads.
Prompts are generated in batches; each batch draws from a generator seeded from ``seed`` and
its first (prompt, sample) pair, so a folder is reproducible for a given batch size. Several
processes (``accelerate launch`` / ``torchrun``) split the batches, not the seeds (:class:`Share`),
so they write the same bytes as one process.

torch is imported inside the functions that run a model, so that importing this module (and
:mod:`segros.eval.benchmarks`, and ``segros generate --help``) stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from segros.eval.geneval import image_problem, prompt_folder, write_prompt_metadata


def sample_seed(seed: int, index: int, sample: int) -> int:
    return (seed * 1_000_003 + index * 1_009 + sample) % (2**63)


Job = tuple[int, int]  # (prompt index, sample number)


def remove_undecodable(root: str | Path, pattern: str = "*.png") -> list[tuple[Path, str]]:
    """Delete the images under ``root`` that do not decode, so a resumed run makes them again.

    ``--skip-existing`` trusts any file that exists; an output cut short (a full disk, a copy
    interrupted) would otherwise be kept and only fail later, in the benchmark's scorer.
    Returns ``(path, reason)`` for each file removed.
    """
    removed = []
    for path in sorted(Path(root).rglob(pattern)):
        if path.is_file() and (problem := image_problem(path)) is not None:
            path.unlink()
            removed.append((path, problem))
    return removed


@dataclass(frozen=True)
class Share:
    """Which batches this process generates: batch ``b`` of the job list goes to process
    ``b % world``. The batches themselves (and so their seeds) are those of a single process, so
    every image is byte-identical whatever the number of processes."""

    rank: int = 0
    world: int = 1

    def batches(self, jobs: Sequence[Job], batch_size: int) -> list[Sequence[Job]]:
        chunks = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
        return chunks[self.rank :: self.world]


ONE_PROCESS = Share()


def generate_jobs(
    backbone: Any,
    prompts: Sequence[str],
    jobs: Sequence[Job],
    write: Callable[[Job, np.ndarray], None],
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "generate",
    options: dict[str, Any] | None = None,
    share: Share = ONE_PROCESS,
) -> None:
    """Generate ``prompts[i]`` for every ``(i, n)`` job in batches and hand each image to ``write``
    as soon as its batch is done (a killed run keeps what it wrote). ``options`` go to
    ``backbone.generate`` (``guidance_scale``, ``steps``). With several processes each takes its
    :class:`Share` of the batches."""
    import torch

    was_training = backbone.training
    backbone.eval()
    mine = share.batches(jobs, batch_size)
    bar = tqdm(total=sum(map(len, mine)), desc=desc, disable=not progress, dynamic_ncols=True)
    for chunk in mine:
        # one generator per batch, seeded from its first job: batches are reproducible units
        generator = torch.Generator().manual_seed(sample_seed(seed, *chunk[0]))
        batch_prompts = [prompts[i] for i, _ in chunk]
        with torch.no_grad():
            images = backbone.generate(batch_prompts, generator=generator, **(options or {}))
        images = images.cpu().numpy()
        for job, image in zip(chunk, images, strict=True):
            write(job, image)
        bar.update(len(chunk))
    bar.close()
    backbone.train(was_training)


def generate_folder(
    backbone: Any,
    records: Sequence[dict[str, Any]],
    root: str | Path,
    samples_per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    options: dict[str, Any] | None = None,
) -> Path:
    """Write ``samples_per_prompt`` images for every record (needs a ``prompt`` field); ``options``
    go to ``backbone.generate`` (``guidance_scale``, ``steps``; None values keep its defaults)."""
    root = Path(root)
    for i, record in enumerate(records):
        write_prompt_metadata(root, i, record)

    def write(job: Job, image: np.ndarray) -> None:
        i, n = job
        Image.fromarray(image).save(prompt_folder(root, i) / "samples" / f"{n}.png")

    jobs = [(i, n) for i in range(len(records)) for n in range(samples_per_prompt)]
    prompts = [r["prompt"] for r in records]
    generate_jobs(
        backbone, prompts, jobs, write, seed, batch_size, progress, f"generate {root.name}", options
    )
    return root


def score_shapes_folder(root: str | Path) -> dict[str, Any]:
    """Judge a ShapesWorld GenEval folder; writes ``results.jsonl`` and returns the summary."""
    from segros.data.shapes import SHAPES
    from segros.eval.geneval import score_folder, summarize, write_results
    from segros.eval.shapes_judge import detect_file

    rows = score_folder(root, detect_file, supported_classes=SHAPES)
    write_results(Path(root) / "results.jsonl", rows)
    return summarize(rows)
