"""Checkpoints that resume exactly and never leave a broken ``latest``.

Layout of ``OUT/checkpoints/step-<N>/``:

- ``model.safetensors`` + ``config.json`` (+ backbone assets): ``Backbone.save_pretrained`` of
  the whole model, whatever the engine (gathered from every process under FSDP and ZeRO-3), so
  generate / eval / export read it as they read any model folder (under LoRA with only adapters
  training, these files are hard links to the previous checkpoint's: :mod:`segros.train.shared_base`);
- the optimizer state, as the engine needs (:mod:`segros.train.engines`): ``optimizer.pt`` (one
  process, DDP: ``optimizer.state_dict()``; FSDP: the full state keyed by parameter name), or
  ``deepspeed/state/`` (DeepSpeed's own files, one optimizer partition per process);
- ``scheduler.pt``: the learning-rate schedule's state;
- ``ema.safetensors`` (with ``optim.ema_decay``): the EMA of the trainable weights, plain names
  (:mod:`segros.train.ema`);
- ``rank-<r>.pt``: per process, the plan generator, the global torch RNG (dropout) and the
  data position and bad-record counts (ranks skip bad records independently);
- ``trainer_state.json``: step, world size, engine, counters; written last, it marks completeness.

A checkpoint is written into ``.tmp-step-<N>`` and renamed when complete; ``latest`` (a text
file naming the folder) is replaced atomically after that. A run killed while saving leaves
the previous ``latest`` intact. A write that fails (a full disk) removes the partial folder
and raises :class:`CheckpointWriteError` saying where and how much space was needed. Everything
is read back with safetensors or ``torch.load(weights_only=True)``: no pickled code is ever
executed (except DeepSpeed's own files, which DeepSpeed reads itself, unpickling them: resume
only from DeepSpeed checkpoints you wrote). :func:`latest_checkpoint` checks that the files of a
checkpoint are intact (not cut short) and falls back to the newest intact one, saying which it
skipped and why; it and the other reading functions are :mod:`segros.storage`'s, offered here
under their old names.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# the layout's reading side (which folders are complete, which files are whole, the newest intact
# checkpoint) is storage's, so that loading a model needs no trainer; it is offered here too
from segros.storage import COMPLETE_MARKER as COMPLETE_MARKER
from segros.storage import STEP_DIR as STEP_DIR
from segros.storage import checkpoint_problem as checkpoint_problem
from segros.storage import checkpoints_dir as checkpoints_dir
from segros.storage import complete_checkpoints as complete_checkpoints
from segros.storage import is_complete as is_complete
from segros.storage import latest_checkpoint as latest_checkpoint
from segros.storage import safetensors_problem as safetensors_problem
from segros.storage import torch_file_problem as torch_file_problem

log = logging.getLogger(__name__)

def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with open(tmp) as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- writing --------------------------------------------------------------------------------------


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (typically: the disk is full); the partial folder is gone."""


def tmp_dir(out_dir: str | Path, step: int) -> Path:
    """The temporary folder a checkpoint is written into before it is renamed."""
    return checkpoints_dir(out_dir) / f".tmp-step-{step}"


def partial_checkpoints(out_dir: str | Path) -> list[Path]:
    """Temporary ``.tmp-step-*`` folders left by a save that did not finish."""
    root = checkpoints_dir(out_dir)
    return sorted(root.glob(".tmp-step-*")) if root.is_dir() else []


def begin(out_dir: str | Path, step: int) -> Path:
    """Create (fresh) the temporary folder a checkpoint is written into. Main process only.

    Partial folders left by an earlier save that died are removed first."""
    for stale in partial_checkpoints(out_dir):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tmp_dir(out_dir, step)
    tmp.mkdir(parents=True)
    return tmp


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def _out_of_space(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says the disk or quota is full."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err).lower()
        if "no space left" in text or "os error 28" in text or "disk quota" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def write_failure(
    out_dir: str | Path, err: BaseException, since: float | None = None
) -> CheckpointWriteError | None:
    """After ``err`` stopped a run: if a checkpoint was being written (a ``.tmp-step-*`` folder
    exists, created at or after the time ``since`` if given), remove the partial folder and
    return an error saying what happened, else None.

    "The disk is full" is said when the error says so, or when a write failed with a message
    that does not (torch.save's ``basic_ios::clear: iostream error``) and the disk has less free
    space than a checkpoint needs. The need is estimated from the previous checkpoint's size
    (or, for the first one, from what was written before the failure).
    """
    partial = [p for p in partial_checkpoints(out_dir) if since is None or p.stat().st_mtime >= since]
    if not partial:
        return None
    root = checkpoints_dir(out_dir)
    written = sum(_size(p) for p in partial)
    complete = complete_checkpoints(out_dir)
    previous = complete[-1][1] if complete else None
    needed = _size(previous) if previous is not None else 0
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    names = ", ".join(p.name for p in partial)
    kept = (
        f"the previous checkpoint {previous.name} is intact (continue with --resume)"
        if previous is not None
        else "no earlier checkpoint exists"
    )
    full = _out_of_space(err) or (free is not None and needed and free < needed)
    if full:
        need = f"a checkpoint needs about {_human(needed)}" if needed else f"{_human(written)} were written"
        where = f"{_human(free)} free there" if free is not None else "free space unknown"
        return CheckpointWriteError(
            f"disk full while writing a checkpoint to {root} ({need}, {where}); "
            f"removed the partial {names}; {kept}"
        )
    return CheckpointWriteError(
        f"could not write a checkpoint to {root}: {type(err).__name__}: {err}; "
        f"removed the partial {names}; {kept}"
    )


@contextmanager
def _writing(tmp: Path) -> Iterator[None]:
    """Turn a failed write into ``write_failure``'s message (and remove the partial folder)."""
    try:
        yield
    except Exception as err:
        failure = write_failure(tmp.parent.parent, err)
        if failure is None:
            raise
        raise failure from err


def save_rank_state(tmp: Path, rank: int, state: dict[str, Any]) -> None:
    with _writing(tmp):
        torch.save(state, tmp / f"rank-{rank}.pt")


def save_scheduler(tmp: Path, scheduler: Any) -> None:
    with _writing(tmp):
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")


writing = _writing  # for the engine-specific writes of segros.train.engines


def finish(out_dir: str | Path, tmp: Path, step: int, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Mark complete, rename into place, point ``latest`` at it, prune old ones. Main process only."""
    with _writing(tmp):
        _write_atomic(tmp / COMPLETE_MARKER, json.dumps(trainer_state, indent=2))
    final = checkpoints_dir(out_dir) / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(checkpoints_dir(out_dir) / "latest", final.name + "\n")
    # keep the newest keep_last intact ones; a cut-short one (skipped by --resume) goes too
    complete = [folder for _, folder in complete_checkpoints(out_dir)]
    problems = {folder: checkpoint_problem(folder) for folder in complete if folder != final}
    intact = [folder for folder in complete if problems.get(folder) is None]
    keep = set(intact[-keep_last:]) | {final}
    for old in complete:
        if old not in keep:
            if problems.get(old):
                log.warning("removing broken checkpoint %s: %s", old, problems[old])
            shutil.rmtree(old, ignore_errors=True)
    return final


# --- reading --------------------------------------------------------------------------------------


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {path} is missing") from None
    except Exception as e:
        raise ValueError(f"cannot read checkpoint file {path}: {type(e).__name__}: {e}") from e


def load_trainer_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / COMPLETE_MARKER).read_text())


def finished(out_dir: str | Path, steps: int) -> bool:
    """True if the run in ``out_dir`` holds an intact checkpoint at ``steps`` or later."""
    latest = latest_checkpoint(out_dir)
    return latest is not None and load_trainer_state(latest)["step"] >= steps


def load_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    path = folder / f"rank-{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no state for process {rank}: was it saved with fewer processes?"
        )
    return _torch_load(path)


def load_scheduler(folder: Path, scheduler: Any) -> None:
    scheduler.load_state_dict(_torch_load(folder / "scheduler.pt"))
