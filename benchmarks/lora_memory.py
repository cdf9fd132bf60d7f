"""Trainable-parameter share and optimizer-state memory with and without LoRA, counted (not run)
at the published Harmon sizes: the model is built on the meta device, so no weights are allocated.

AdamW keeps two float32 moments per trainable parameter (8 bytes each); gradients add one more
tensor of the parameter's dtype. Full fine-tuning trains every parameter of Harmon's transformer
and MAR but the frozen class embedding (as ``HarmonBackbone`` does; the VAE is never trained);
LoRA trains the adapters on the default targets (``HarmonBackbone.lora_targets``) only.

    python benchmarks/lora_memory.py [--size 0.5b] [--rank 8 16 32]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from segros.backbones import lora
from segros.backbones.harmon.adapter import HarmonBackbone
from segros.backbones.harmon.model import Harmon, HarmonConfig

ADAM_BYTES = 8  # exp_avg + exp_avg_sq, float32


class _Holder(nn.Module):
    """What :func:`segros.backbones.lora.apply` needs of a backbone: ``model`` and ``lora_targets``."""

    lora_targets = HarmonBackbone.lora_targets

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def counts(size: str, rank: int) -> dict[str, float]:
    with torch.device("meta"):
        holder = _Holder(Harmon(HarmonConfig.for_size(size)))
    holder.model.mar.class_emb.requires_grad_(False)
    if rank:
        lora.apply(holder, rank)  # type: ignore[arg-type]
    c = lora.parameter_counts(holder)
    trainable_bytes = sum(p.numel() * p.element_size() for p in holder.parameters() if p.requires_grad)
    return {
        "rank": rank,
        **c,
        "trainable_share_percent": round(100 * c["trainable_share"], 3),
        "adamw_state_mib": round(c["trainable_params"] * ADAM_BYTES / 2**20, 2),
        "grad_mib": round(trainable_bytes / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5b", choices=["0.5b", "1.5b", "tiny"])
    parser.add_argument("--rank", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    rows = [counts(args.size, 0)] + [counts(args.size, r) for r in args.rank]
    full = rows[0]["trainable_params"]
    for row in rows:
        row["adamw_state_vs_full"] = round(row["trainable_params"] / full, 5)
        print(json.dumps({"size": args.size, **row}))


if __name__ == "__main__":
    main()
