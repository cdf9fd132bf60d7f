"""Checkpoints that resume exactly and never leave a broken ``latest``.

Layout of ``OUT/checkpoints/step-<N>/``:

- ``model.safetensors`` + ``config.json`` (+ backbone assets): ``Backbone.save_pretrained``;
- ``optimizer.pt``, ``scheduler.pt``: state dicts of tensors and numbers;
- ``rank-<r>.pt``: per process, the plan generator, the global torch RNG (dropout) and the
  data position and bad-record counts (ranks skip bad records independently);
- ``trainer_state.json``: step, world size, counters; written last, it marks completeness.

A checkpoint is written into ``.tmp-step-<N>`` and renamed when complete; ``latest`` (a text
file naming the folder) is replaced atomically after that. A run killed while saving leaves
the previous ``latest`` intact. Everything is read back with safetensors or
``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with open(tmp) as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "model.safetensors").is_file()


def complete_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = checkpoints_dir(out_dir)
    found = []
    for child in root.glob("step-*") if root.is_dir() else []:
        match = STEP_DIR.match(child.name)
        if match and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The folder ``latest`` names, or (if that is missing or broken) the newest complete one."""
    root = checkpoints_dir(out_dir)
    pointer = root / "latest"
    if pointer.is_file():
        folder = root / pointer.read_text().strip()
        if is_complete(folder):
            return folder
        log.warning("checkpoints/latest names %s, which is incomplete; using the newest complete one", folder)
    found = complete_checkpoints(out_dir)
    return found[-1][1] if found else None


def tmp_dir(out_dir: str | Path, step: int) -> Path:
    """The temporary folder a checkpoint is written into before it is renamed."""
    return checkpoints_dir(out_dir) / f".tmp-step-{step}"


def begin(out_dir: str | Path, step: int) -> Path:
    """Create (fresh) the temporary folder a checkpoint is written into. Main process only."""
    tmp = tmp_dir(out_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_rank_state(tmp: Path, rank: int, state: dict[str, Any]) -> None:
    torch.save(state, tmp / f"rank-{rank}.pt")


def save_shared(tmp: Path, optimizer: Any, scheduler: Any) -> None:
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")


def finish(out_dir: str | Path, tmp: Path, step: int, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Mark complete, rename into place, point ``latest`` at it, prune old ones. Main process only."""
    _write_atomic(tmp / COMPLETE_MARKER, json.dumps(trainer_state, indent=2))
    final = checkpoints_dir(out_dir) / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(checkpoints_dir(out_dir) / "latest", final.name + "\n")
    for _, old in complete_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / COMPLETE_MARKER).read_text())


def load_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    path = folder / f"rank-{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no state for process {rank}: was it saved with fewer processes?"
        )
    return torch.load(path, weights_only=True)


def load_shared(folder: Path, optimizer: Any, scheduler: Any) -> None:
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
