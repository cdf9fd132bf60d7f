"""Logged curves and pictures of a run: TensorBoard by default, Weights & Biases when configured.

Scalars go through accelerate's trackers (main process only). Pictures (the grounding map with
hint / seen / masked tokens over the batch's images, and a grid of samples generated from fixed
prompts with a fixed seed, so successive grids are comparable) go to the trackers and to PNG
files under ``OUT/pictures/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segros.viz import captioned_grid, grounding_panel

SAMPLE_PROMPTS = (
    "a photo of a red circle",
    "a photo of a blue square left of a yellow star",
    "a photo of three green triangles",
    "a photo of a purple cross and an orange diamond",
)


class RunLogger:
    def __init__(self, accelerator: Any, cfg: Any, out_dir: Path) -> None:
        self.acc = accelerator
        self.out_dir = out_dir
        self.enabled = bool(accelerator.log_with)
        if self.enabled:
            init_kwargs = {}
            if cfg.logging.wandb_project:
                init_kwargs["wandb"] = {"entity": cfg.logging.wandb_entity, "dir": str(out_dir)}
            flat = _flatten(cfg.model_dump(mode="json"))
            accelerator.init_trackers(
                cfg.logging.wandb_project or "tensorboard", config=flat, init_kwargs=init_kwargs
            )

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.enabled:
            self.acc.log(values, step=step)

    def image(self, tag: str, array: np.ndarray, step: int) -> Path:
        folder = self.out_dir / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{tag.replace('/', '-')}-step{step:06d}.png"
        Image.fromarray(array).save(path)
        for tracker in self.acc.trackers if self.enabled else []:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(tag, array, step, dataformats="HWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.run.log({tag: wandb.Image(array)}, step=step)
        return path

    def pictures(self, backbone: Any, batch: dict[str, Any], plan: Any, step: int) -> None:
        """Grounding panel of the current batch and a sample grid (main process only)."""
        if plan.grounding is not None and batch.images is not None:  # a cache keeps no pixels
            panel = grounding_panel(
                batch.images.cpu(),
                plan.grounding.scores,
                backbone.token_grid,
                plan.hint_idx if plan.hint_grid is None else None,
                plan.seen,
                batch.captions,
            )
            self.image("grounding", panel, step)
        was_training = backbone.training
        backbone.eval()
        samples = backbone.generate(list(SAMPLE_PROMPTS), generator=torch.Generator().manual_seed(0))
        backbone.train(was_training)
        self.image("samples", captioned_grid(samples.cpu().numpy(), SAMPLE_PROMPTS), step)

    def close(self) -> None:
        if self.enabled:
            self.acc.end_training()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return out
