"""How much memory each phase of the trainer adds on top of what it already holds, next to the
model's size: a check that no phase makes a temporary copy of the model.

A mid-size random Show-o (Phi layers of ``--hidden`` x ``--layers``, ~100M parameters by default:
400 MB of fp32 weights, big enough that a copy of the model stands far above allocator noise) is
trained by the real :class:`segros.train.loop.Trainer`, full fine-tuning, and before each phase the
process's peak resident set is reset (Linux: ``/proc/self/clear_refs``). Per phase the growth is the
new peak minus the resident set before it:

- ``first_step``: gradients and AdamW's two moments appear (expected ~3x the trained weights);
- ``step``: a steady-state step (activations only);
- ``save``: ``Trainer.save`` (model, optimizer, scheduler and per-process state);
- ``resume``: ``Trainer.checkpoints.resume`` (its Checkpointer) of a new Trainer loading that
  checkpoint (expected: the optimizer's own state, 2x the trained weights for AdamW, and no copy
  of the model);
- ``finish``: ``Trainer.finish`` (the weight fingerprint across processes, the summary).

    python benchmarks/memory_audit.py [--hidden 1024] [--layers 8]

Prints one JSON object; sizes in MiB and as a multiple of the fp32 weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

MIB = 2**20


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> int:
    """Reset the peak resident set (``VmHWM``) to the current one; return the current one."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_growth(fn) -> int:  # noqa: ANN001
    """Bytes the peak resident set rose above the resident set while ``fn()`` ran."""
    before = reset_peak()
    fn()
    return _status("VmHWM") - before


def audit(hidden: int, layers: int, out: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_size import TINY_SHOWO_ARCH, make_tokenizer

    from segros.train.config import validate
    from segros.train.loop import Trainer, TrainResult

    tokenizer = make_tokenizer("showo", out / "tokenizer", tiny=True)
    arch = {**TINY_SHOWO_ARCH, "showo": {"hidden_size": hidden, "num_layers": layers, "num_heads": 8,
                                          "intermediate_size": 4 * hidden}}  # fmt: skip
    raw = {
        "model": {"name": "showo", "init_from": None, "tokenizer": str(tokenizer), "arch": arch,
                  "image_size": 32, "max_text_len": 16},
        "method": {"preset": "segros"},
        "data": {"source": "shapes", "batch_size": 1},
        "optim": {"warmup_steps": 0},
        "lora": None,
        "run": {"max_steps": 3, "save_every": 100, "picture_every": 0, "progress": False},
        "logging": {"tensorboard": False},
    }  # fmt: skip
    torch.manual_seed(0)
    trainer = Trainer(validate(raw), out / "run")
    weights = sum(p.numel() * p.element_size() for p in trainer.backbone.parameters())
    growth = {}
    growth["first_step"] = peak_growth(trainer.train_step)
    growth["step"] = peak_growth(trainer.train_step)
    growth["save"] = peak_growth(trainer.save)
    # as a resumed run meets it: a new Trainer (no optimizer state yet) loads the checkpoint; what
    # it may add is the optimizer's own state (AdamW: two moments, 2x the trained weights)
    del trainer
    gc.collect()
    trainer = Trainer(validate(raw), out / "run")
    growth["resume"] = peak_growth(trainer.checkpoints.resume)
    start = time.perf_counter()
    growth["finish"] = peak_growth(lambda: trainer.finish(TrainResult(out / "run", trainer.step), 0.0))
    return {
        "params": sum(p.numel() for p in trainer.backbone.parameters()),
        "weights_mib": round(weights / MIB, 1),
        "finish_seconds": round(time.perf_counter() - start, 2),
        "growth_mib": {k: round(v / MIB, 1) for k, v in growth.items()},
        "growth_x_weights": {k: round(v / weights, 3) for k, v in growth.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="segros-memory-audit-") as tmp:
        print(json.dumps(audit(args.hidden, args.layers, Path(tmp))))


if __name__ == "__main__":
    main()
