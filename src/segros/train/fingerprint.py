"""Fingerprints of a model's weights, tensor by tensor, for the end-of-run "processes agree" check.

Every parameter is hashed from its raw bytes (BLAKE2b, 8-byte digest, seeded with its dtype and
shape) in slices of at most ``CHUNK_BYTES``, read in place: on the CPU a contiguous tensor's bytes
are hashed through a NumPy view that shares its memory, on a GPU each slice is copied to the host
alone. The extra memory is one slice, whatever the model's size (the previous check built a
float64 copy of every weight and a float64 ramp as long: 24 bytes per parameter, ~36 GB for
Harmon-1.5B). A hash of the bytes sees any difference, down to one bit of one weight, which a sum
can round away; equal weights give equal fingerprints on every process, as the DDP invariant needs.

Engines that shard the parameters (FSDP's ``DTensor`` shards, DeepSpeed ZeRO-3's partitions) give
each process a different part by design, so there is nothing to compare: :func:`is_sharded` says so
and the trainer records ``params_in_sync: null``.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

CHUNK_BYTES = 1 << 24  # 16 MiB: what one slice may cost (a host copy of it, for GPU tensors)


def _update(h: hashlib._Hash, t: torch.Tensor) -> None:
    """Feed the bytes of ``t`` (in row-major order) to ``h``, one bounded slice at a time."""
    if not t.is_contiguous():
        if t.dim() > 1:  # row by row: no copy of the whole tensor
            for row in t.unbind(0):
                _update(h, row)
            return
        t = t.contiguous()  # a strided 1-D tensor: one row's copy
    raw = t.reshape(-1).view(torch.uint8)  # a view: no copy
    for start in range(0, raw.numel(), CHUNK_BYTES):
        piece = raw[start : start + CHUNK_BYTES]
        h.update(piece.cpu().numpy())  # on the CPU: shares memory; elsewhere: one slice copied


def tensor_digest(t: torch.Tensor) -> int:
    """A signed 64-bit hash of ``t``'s dtype, shape and bytes (equal tensors, equal digests)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    _update(h, t.detach())
    return int.from_bytes(h.digest(), "little", signed=True)


def fingerprint(model: nn.Module) -> tuple[list[str], torch.Tensor]:
    """Parameter names and one int64 digest per parameter (:func:`tensor_digest`), in
    ``named_parameters`` order; the digests hold 8 bytes per tensor, not per weight."""
    names, digests = [], []
    for name, param in model.named_parameters():
        names.append(name)
        digests.append(tensor_digest(param))
    return names, torch.tensor(digests, dtype=torch.int64)


def is_sharded(model: nn.Module) -> bool:
    """Whether an engine has split the parameters across processes (FSDP ``DTensor``s, or
    DeepSpeed ZeRO-3's partitioned parameters, which carry ``ds_id``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())
