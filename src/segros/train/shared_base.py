"""LoRA checkpoints share the frozen base weights through hard links instead of rewriting them.

Under LoRA (``lora.rank > 0``) only the adapter trains: the base model's weights are the same at
every checkpoint. Writing them again each time cost a LoRA run of Show-o 5.8 GiB of disk and the
time to write it at every save. Here the base files a checkpoint's ``save_pretrained`` wrote
(``model.safetensors``, ``config.json``, the backbone's assets) are recorded in its trainer state
(``lora_base_files``), and the next checkpoint hard-links those files from it instead of writing
its own. Every checkpoint folder stays a complete model folder (generate, eval and export read it
as before, and pruning an old one leaves the others whole: a file lives while any link does).

Links are made only when they are exact: LoRA is on, no non-adapter parameter trains
(``lora.trainable`` empty), the previous checkpoint is intact and recorded its base files, and the
model's buffers hash as they did when that checkpoint was written (parameters without gradients
cannot change; buffers could). Otherwise, or when the file system
refuses hard links, the base is written as before. Nothing ever writes into a checkpoint's files
after it is complete, so a shared file cannot change under another checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch

from segros.backbones.lora import plain_name

log = logging.getLogger(__name__)

STATE_KEY = "lora_base_files"  # trainer_state.json: the files save_pretrained wrote
FINGERPRINT_KEY = "lora_base_buffers"  # trainer_state.json: buffers_fingerprint at that save


def base_is_frozen(backbone: torch.nn.Module) -> bool:
    """True if every trainable parameter is a LoRA adapter weight (the base cannot change)."""
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    return bool(trainable) and all(".lora_" in n for n in trainable)


# a checkpoint's own files, never the model folder's (another process may still be writing them)
_NOT_BASE = ("rank-*.pt", "optimizer*", "deepspeed/*", "scheduler.pt", "ema.safetensors", "adapter/*")


def snapshot(folder: Path) -> set[str]:
    """The files under ``folder`` now (relative paths), for :func:`files_written`."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def files_written(folder: Path, before: set[str]) -> list[str]:
    """Relative paths of the files under ``folder`` not in ``before`` (what ``save_pretrained``
    added), leaving out the checkpoint's own files."""
    return sorted(
        p for p in snapshot(folder) if p not in before and not any(fnmatch(p, pat) for pat in _NOT_BASE)
    )


def buffers_fingerprint(backbone: torch.nn.Module) -> str | None:
    """A hash of every buffer's name and value; None if one cannot be read here (then no links)."""
    digest = hashlib.sha256()
    try:
        for name, buf in sorted(backbone.named_buffers(), key=lambda item: item[0]):
            value = buf.detach().cpu().contiguous()
            digest.update(f"{plain_name(name)}|{value.dtype}|{tuple(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d too
    except Exception:  # a sharded buffer, a meta tensor: do not guess
        return None
    return digest.hexdigest()


def link_base(source: Path, files: list[str], tmp: Path) -> bool:
    """Hard-link ``files`` of checkpoint ``source`` into ``tmp``; False (and nothing linked) when
    one is missing or the file system refuses hard links."""
    if not files or not all((source / f).is_file() for f in files):
        return False
    try:
        for f in files:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            os.link(source / f, tmp / f)
    except Exception as err:  # EXDEV, EPERM (no hard links here), an unreadable file, ...
        log.info("LoRA: cannot hard-link the base weights from %s (%s); writing them", source, err)
        for f in files:
            (tmp / f).unlink(missing_ok=True)
        for d in sorted({(tmp / f).parent for f in files} - {tmp}, key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty: a folder the links created
        return False
    return True


def reusable_files(state: dict[str, Any], fingerprint: str | None) -> list[str]:
    """The base files a checkpoint's trainer state recorded, if its buffers hashed to
    ``fingerprint`` as the model's do now; else none (the base must be written)."""
    if fingerprint is None or state.get(FINGERPRINT_KEY) != fingerprint:
        return []
    return [str(f) for f in state.get(STATE_KEY, [])]
