"""Peak memory of this process, for ``train_summary.json``.

On the CPU: the peak resident set size (``getrusage``'s ``ru_maxrss``), the most host memory the
process has held at once since it started, model building included. On CUDA also
``torch.cuda.max_memory_allocated``: the most GPU memory tensors held at once (the caching
allocator reserves somewhat more; ``nvidia-smi`` shows that).
"""

from __future__ import annotations

import resource
import sys

import torch

MIB = 2**20


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def peak_memory(device: torch.device) -> dict[str, float]:
    """``peak_rss_mib`` and, on a CUDA device, ``peak_cuda_allocated_mib`` (MiB, this process)."""
    out = {"peak_rss_mib": peak_rss_bytes() / MIB}
    if device.type == "cuda":
        out["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return out
