"""What segros leaves on disk, read back and checked, for every layer above: a file's integrity,
a run folder's checkpoint layout and its newest intact checkpoint, the EMA file.

Layout of a run folder ``OUT/checkpoints/``: ``step-<N>/`` folders, each complete once its
``trainer_state.json`` is written (last), and ``latest``, a text file naming the newest one.
:mod:`segros.train.checkpoint` writes them (and says what each file is);
:func:`segros.backbones.registry.load_backbone` reads them, as does ``--resume``. This module is
low in the layers (docs/design.md) so that loading a model and the feature cache
(:mod:`segros.data.cache`) can check files without importing the trainer.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"
#: the EMA of the trainable weights beside a checkpoint's weights (segros.train.ema writes it)
EMA_FILE = "ema.safetensors"


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


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


# --- the EMA file --------------------------------------------------------------------------------


def read_ema(folder: str | Path) -> dict[str, torch.Tensor]:
    """The EMA tensors a checkpoint folder holds; a clear error when it has none."""
    from safetensors.torch import load_file

    path = Path(folder) / EMA_FILE
    if not path.is_file():
        raise ValueError(
            f"{folder} holds no EMA weights ({EMA_FILE}): it was trained without optim.ema_decay "
            "(use --weights raw)"
        )
    return load_file(str(path))


@torch.no_grad()
def load_ema_weights(model: torch.nn.Module, folder: str | Path) -> int:
    """Copy the EMA tensors of checkpoint ``folder`` over ``model``'s parameters of the same
    names (the trainable ones; frozen ones keep their saved weights). Returns how many."""
    saved = read_ema(folder)
    params = dict(model.named_parameters())
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise ValueError(f"{Path(folder) / EMA_FILE} names parameters the model does not have: {unknown[:5]}")
    for name, tensor in saved.items():
        params[name].copy_(tensor)
    return len(saved)


def resolve_checkpoint(path: str | Path) -> Path:
    """A model folder from what a user may point at: the folder itself, a run's
    ``checkpoints/latest`` pointer file, or a run folder (its newest complete checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name == "latest":
        return path.parent / path.read_text().strip()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "checkpoints").is_dir():
        # the newest one as it is: a broken one is named by load_backbone, not silently replaced
        found = latest_checkpoint(path, verify=False)
        if found is not None:
            return found
    return path
