"""Run by ``accelerate launch`` in test_engines.py: a run as ``segros train`` makes it, plus two probes.

Before training, the grounding read of one batch through the trainer's wrapped model (sharded
under FSDP / ZeRO-3) is compared with the same read through an unsharded copy of the initial
weights (built from the same seed); after training, the loss of every step is recorded. The main
process writes both to ``OUT/probe.json``.

    accelerate launch ... tests/engine_probe.py CONFIG OUT [key=value ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from segros.backbones.registry import build_backbone
from segros.data.sources import t2i_source
from segros.supervision import ground_and_plan, sample_ratio
from segros.train import engines
from segros.train.config import load_config
from segros.train.loop import Trainer


def grounding_difference(trainer: Trainer) -> dict[str, float]:
    """Largest absolute differences of the grounding inputs and the plan's grounding scores of one
    batch, read through ``trainer.model`` versus an unsharded copy of the initial weights."""
    cfg = trainer.cfg
    set_seed(cfg.run.seed)  # as Trainer._setup_model: the same initial weights
    with engines.whole_model_construction(trainer.accelerator):
        reference = build_backbone(cfg.model_options())
    reference.train(trainer.backbone.training)
    source = t2i_source(cfg.data, reference)
    batch = reference.prepare_t2i([source[i] for i in range(cfg.data.batch_size)])
    ratio = sample_ratio(reference, len(batch), torch.Generator().manual_seed(1))
    with torch.no_grad():
        sharded = trainer.model(batch, mode="ground")
        plain = reference.grounding_inputs(batch)
    plans = [
        ground_and_plan(backbone, batch, trainer.plan_cfg, ratio, torch.Generator().manual_seed(2), model)
        for backbone, model in ((trainer.backbone, trainer.model), (reference, None))
    ]
    return {
        "text_emb": float((sharded.text_emb - plain.text_emb).abs().max()),
        "image_emb": float((sharded.image_emb - plain.image_emb).abs().max()),
        "scores": float((plans[0].grounding.scores - plans[1].grounding.scores).abs().max()),
        "text_emb_norm": float(plain.text_emb.abs().max()),  # the read is not trivially zero
    }


def main() -> None:
    config, out, *overrides = sys.argv[1:]
    trainer = Trainer(load_config(config, overrides), out)
    grounding = grounding_difference(trainer)
    engine, main_process = trainer.engine, trainer.accelerator.is_main_process
    result = trainer.run()
    if main_process:
        probe = {"engine": engine, "losses": result.losses, "grounding": grounding}
        (Path(out) / "probe.json").write_text(json.dumps(probe, indent=2))


if __name__ == "__main__":
    main()
