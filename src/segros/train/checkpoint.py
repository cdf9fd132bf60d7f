"""Checkpoints that resume exactly and never leave a broken ``latest``.

Layout of ``OUT/checkpoints/step-<N>/``:

- ``model.safetensors`` + ``config.json`` (+ backbone assets): ``Backbone.save_pretrained`` of
  the whole model, whatever the engine (gathered from every process under FSDP and ZeRO-3), so
  generate / eval / export read it as they read any model folder;
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
skipped and why.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
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


# --- integrity ---------------------------------------------------------------------------------


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (cut short, corrupt header), or None.

    Reads only the header: the file must be exactly 8 bytes of header length, the JSON header,
    and the tensor data the header describes, which is what ``safetensors`` itself requires
    (it reports a short file as "incomplete metadata", without the path).
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is cut short ({size} bytes; not even a safetensors header)"
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                return f"{path.name} is cut short ({size} bytes; its header alone needs {8 + n})"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"cannot read {path.name}: {e}"
    except (ValueError, UnicodeDecodeError) as e:
        return f"{path.name} has a corrupt safetensors header ({e})"
    if not isinstance(header, dict):
        return f"{path.name} has a corrupt safetensors header (not a JSON object)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return f"{path.name} has a corrupt safetensors header (bad data_offsets)"
    expected = 8 + n + end
    if size < expected:
        return f"{path.name} is cut short ({size} bytes of the {expected} its header describes)"
    if size > expected:
        return f"{path.name} has {size - expected} bytes after the tensor data its header describes"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why a ``torch.save`` file is not whole (its zip directory, at the very end, is missing)."""
    try:
        with zipfile.ZipFile(path):
            return None
    except OSError as e:
        return f"cannot read {path.name}: {e}"
    except zipfile.BadZipFile:
        return f"{path.name} is cut short or corrupt (not a complete torch.save archive)"


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (a missing or cut-short file), or None.

    Checks every ``*.safetensors`` (and LoRA ``adapter/``) and ``*.pt`` file in the folder (and
    DeepSpeed's under ``deepspeed/``), that every process's files are there, and the trainer
    state; cheap (headers and zip directories only, no tensor data is read).
    """
    try:
        state = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError) as e:
        return f"{COMPLETE_MARKER} is unreadable ({e})"
    if not (folder / "model.safetensors").is_file():
        return "model.safetensors is missing"
    if problem := _missing_files(folder, state):
        return problem
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("adapter/*.safetensors")]):
        if problem := safetensors_problem(path):
            return problem
    for path in sorted([*folder.glob("*.pt"), *folder.glob("deepspeed/*/*.pt")]):
        if problem := torch_file_problem(path):
            return problem
    return None


def _missing_files(folder: Path, state: dict[str, Any]) -> str | None:
    """The first file the engine that wrote ``folder`` must have left there and did not."""
    world = int(state.get("world_size", 1)) if isinstance(state, dict) else 1
    engine = str(state.get("engine", "ddp")) if isinstance(state, dict) else "ddp"
    if "step" in state:  # trainer checkpoints (a bare model folder has no optimizer)
        needed = [f"rank-{r}.pt" for r in range(world)] + ["scheduler.pt"]
        if engine.startswith("zero"):
            ds = "deepspeed/state"
            needed += [f"{ds}/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
            needed += (
                [f"{ds}/zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)]
                if engine == "zero3"
                else [f"{ds}/mp_rank_00_model_states.pt"]
            )
        else:
            needed.append("optimizer.pt")
        if "ema_decay" in state:  # the run kept an EMA of its weights (segros.train.ema)
            needed.append("ema.safetensors")
        for name in needed:
            if not (folder / name).is_file():
                return f"{name} is missing (a {engine} checkpoint of {world} processes)"
    return None


def latest_checkpoint(out_dir: str | Path, verify: bool = True) -> Path | None:
    """The folder ``latest`` names, or (if that is missing or broken) the newest complete one.

    With ``verify`` (the default; what ``--resume`` uses) a checkpoint whose files are cut short
    or corrupt is skipped with a warning naming it and the file, and the newest intact one is
    returned instead.
    """
    root = checkpoints_dir(out_dir)
    pointer = root / "latest"
    candidates: list[Path] = []
    if pointer.is_file():
        folder = root / pointer.read_text().strip()
        if is_complete(folder):
            candidates.append(folder)
        else:
            log.warning(
                "checkpoints/latest names %s, which is incomplete; using the newest complete one", folder
            )
    candidates += [
        folder for _, folder in reversed(complete_checkpoints(out_dir)) if folder not in candidates
    ]
    skipped: list[Path] = []
    for folder in candidates:
        problem = checkpoint_problem(folder) if verify else None
        if problem is None:
            if skipped:
                log.warning("using %s, the newest intact checkpoint", folder)
            return folder
        log.warning("skipping checkpoint %s: %s", folder, problem)
        skipped.append(folder)
    return None


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
