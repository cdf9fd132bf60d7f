"""Logged curves and pictures of a run: TensorBoard by default, Weights & Biases when configured.

Scalars go through accelerate's trackers (main process only). Pictures go to the trackers and to
PNG files under ``OUT/pictures/``: the trainer's own (the grounding map with hint / seen / masked
tokens over the batch's images) and whatever the application's :data:`PictureCallback` draws,
typically :func:`sample_pictures`, a grid of samples from fixed prompts with a fixed seed, so
successive grids are comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segros.viz import captioned_grid, grounding_panel

#: pictures an application wants every ``run.picture_every`` steps: (backbone, step) -> {tag: (H, W, 3) uint8}
PictureCallback = Callable[[Any, int], dict[str, np.ndarray]]


def sample_pictures(prompts: Sequence[str], seed: int = 0) -> PictureCallback:
    """A :data:`PictureCallback` drawing ``prompts`` (seeded, in eval mode) as one captioned grid
    tagged ``samples``."""
    prompts = list(prompts)

    def draw(backbone: Any, step: int) -> dict[str, np.ndarray]:
        was_training = backbone.training
        backbone.eval()
        try:
            samples = backbone.generate(prompts, generator=torch.Generator().manual_seed(seed))
        finally:
            backbone.train(was_training)
        return {"samples": captioned_grid(samples.cpu().numpy(), prompts)}

    return draw


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

    def grounding_picture(self, backbone: Any, batch: Any, plan: Any, step: int) -> None:
        """The grounding panel of a batch and its plan (main process only; none for plans without
        a grounding, or for batches from a cache, which keeps no pixels)."""
        if plan.grounding is not None and batch.images is not None:
            panel = grounding_panel(
                batch.images.cpu(),
                plan.grounding.scores,
                backbone.token_grid,
                plan.hint_idx if plan.hint_grid is None else None,
                plan.seen,
                batch.captions,
            )
            self.image("grounding", panel, step)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return out
