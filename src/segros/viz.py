"""Pictures a person would rather look at: grounding maps with token roles, sample grids.

Everything returns (H, W, 3) uint8 arrays, so the same picture goes to TensorBoard, W&B, a PNG
file or an HTML report. matplotlib runs on its headless Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

HINT_RGB = np.array([40, 200, 60])  # green
SEEN_RGB = np.array([60, 110, 255])  # blue
MASKED_RGB = np.array([235, 60, 50])  # red


def figure_to_array(fig: Any) -> np.ndarray:
    """The figure's pixels as (H, W, 3) uint8; closes it."""
    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return array


def _upsample(grid_values: np.ndarray, size: int) -> np.ndarray:
    """(h, w, ...) token values -> (size, size, ...) by nearest neighbour."""
    h, w = grid_values.shape[:2]
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    return grid_values[rows][:, cols]


def role_overlay(image: np.ndarray, grid: tuple[int, int], hint: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The image tinted per token: hints green, visible (seen) blue, masked red."""
    colours = np.where(hint[:, None], HINT_RGB, np.where(seen[:, None], SEEN_RGB, MASKED_RGB))
    tint = _upsample(colours.reshape(*grid, 3), image.shape[0])
    return (0.45 * image + 0.55 * tint).astype(np.uint8)


def grounding_panel(
    images: torch.Tensor,
    scores: torch.Tensor,
    grid: tuple[int, int],
    hint_idx: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
    captions: Sequence[str] | None = None,
    max_rows: int = 4,
) -> np.ndarray:
    """Per sample: image | grounding heatmap m-bar | token roles (hint / seen / masked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(max_rows, images.shape[0])
    with_roles = hint_idx is not None and seen is not None
    cols = 3 if with_roles else 2
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.8), squeeze=False)
    heat_image = None
    for r in range(rows):
        image = images[r].cpu().numpy()
        heat = _upsample(scores[r].float().cpu().numpy().reshape(grid), image.shape[0])
        axes[r, 0].imshow(image)
        title = captions[r] if captions else ""
        axes[r, 0].set_title(title[:38] + ("…" if len(title) > 38 else ""), fontsize=7)
        axes[r, 1].imshow(image)
        heat_image = axes[r, 1].imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        axes[r, 1].set_title("grounding m̄", fontsize=7)
        if with_roles:
            hint = np.zeros(grid[0] * grid[1], dtype=bool)
            hint[hint_idx[r].cpu().numpy()] = True
            axes[r, 2].imshow(role_overlay(image, grid, hint, seen[r].cpu().numpy()))
            axes[r, 2].set_title("hint / seen / masked", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0.07 if with_roles else 0.04, 1, 1))
    bar = fig.add_axes((0.38 if with_roles else 0.55, 0.03, 0.25 if with_roles else 0.35, 0.012))
    fig.colorbar(heat_image, cax=bar, orientation="horizontal").set_label("m̄ (Eq. 11)", fontsize=7)
    bar.tick_params(labelsize=6)
    if with_roles:
        from matplotlib.patches import Patch

        roles = ((HINT_RGB, "hint"), (SEEN_RGB, "seen"), (MASKED_RGB, "masked"))
        fig.legend(
            handles=[Patch(color=c / 255, label=n) for c, n in roles],
            loc="lower right", ncol=3, fontsize=7, frameon=False, bbox_to_anchor=(0.99, 0.0),
        )  # fmt: skip
    return figure_to_array(fig)


def captioned_grid(images: torch.Tensor | np.ndarray, captions: Sequence[str], ncols: int = 4) -> np.ndarray:
    """A grid of generated samples with their prompts as titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.5 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        ax = axes.flat[i]
        ax.imshow(image)
        ax.set_title(caption[:34] + ("…" if len(caption) > 34 else ""), fontsize=7)
    fig.tight_layout()
    return figure_to_array(fig)
