"""`segros inspect`: what SeGroS does with one image and caption, as one picture (paper Fig. 3).

(The module is ``inspection``, not ``inspect``, so it never shadows the standard library's.)

The picture shows (a) the image at the model's resolution, (b) per caption token the text scores
s_intra (Eq. 4), s_inter (Eq. 6) and Omega (Eq. 7) with the kept tokens w (Eq. 9) marked, (c) the
grounding map m-bar (Eq. 11) over the image and (d) the roles the SeGroS preset gives the image
tokens for one masking ratio: top-eta hints, bottom-K_seen visible, the rest masked (Sec. 3.4).

Everything goes through the backbone protocol (``prepare_t2i``, ``grounding_inputs``, grids), so
any registered backbone can be inspected; only the default model (no ``--checkpoint``) is the
built-in tiny one. Word labels come from the backbone's ``text_tokenizer`` when it has one.
"""

from __future__ import annotations

import argparse
import string
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where it is used, so `segros --help` stays instant
    import numpy as np

KEPT_RGB = "#e8710a"  # orange: kept text tokens (w = 1)
DROPPED_RGB = "#b0b0b0"  # grey: filtered-out text tokens


class InspectError(ValueError):
    """A user input the inspection cannot work with (bad image, empty or unknown caption)."""


@dataclass
class Inspection:
    """Everything the picture shows, as plain arrays (one image, one caption)."""

    image: np.ndarray  # (H, W, 3) uint8 at the model's resolution
    caption: str
    words: list[str]  # one label per caption token the grounding reads
    intra: np.ndarray  # (Lv,) s_intra
    inter: np.ndarray  # (Lv,) s_inter
    importance: np.ndarray  # (Lv,) Omega
    keep: np.ndarray  # (Lv,) bool w
    scores: np.ndarray  # (N,) m-bar on token_grid
    token_grid: tuple[int, int]
    hint_idx: np.ndarray  # (K,) hint positions on hint_grid
    hint_grid: tuple[int, int]
    seen: np.ndarray  # (N,) bool on token_grid
    unknown_words: list[str]  # caption words outside the model's vocabulary
    settings: dict[str, float]
    # (Lv,) bool: tokens left out of the grounding as stopwords (--text-stopwords english)
    excluded: np.ndarray | None = None

    @property
    def kept_words(self) -> list[str]:
        return [w for w, k in zip(self.words, self.keep, strict=True) if k]

    def summary(self) -> str:
        n = self.seen.size
        lines = [
            f"kept words ({self.keep.sum()}/{self.keep.size}): {' '.join(self.kept_words)}",
            f"image tokens: {n} on a {self.token_grid[0]}x{self.token_grid[1]} grid; "
            f"hints {self.hint_idx.size}, seen {int(self.seen.sum())}, masked {n - int(self.seen.sum())}",
        ]
        if self.unknown_words:
            lines.append(f"words unknown to the model (read as <unk>): {', '.join(self.unknown_words)}")
        if self.excluded is not None and self.excluded.any():
            stop = [w for w, x in zip(self.words, self.excluded, strict=True) if x]
            lines.append(f"stopwords left out of the grounding ({len(stop)}): {' '.join(stop)}")
        return "\n".join(lines)


def load_image(path: str | Path) -> Any:
    """Open any image PIL reads, as RGB; InspectError for a missing or undecodable file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InspectError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InspectError(f"cannot decode {path} as an image: {err}") from err


def _text_tokenizer_info(backbone: Any) -> tuple[Any, int | None]:
    tok = getattr(backbone, "text_tokenizer", None)
    unk = getattr(tok, "unk_id", None)
    if unk is None:
        unk = getattr(tok, "unk_token_id", None)  # Hugging Face tokenizers
    return tok, unk


def _labels(tok: Any, ids: list[int]) -> list[str]:
    if isinstance(getattr(tok, "vocab", None), list):
        return [tok.vocab[i] for i in ids]
    if hasattr(tok, "convert_ids_to_tokens"):
        return list(tok.convert_ids_to_tokens(ids))
    return [f"#{i}" for i in ids]


def _unknown_words(tok: Any, unk: int | None, caption: str) -> list[str]:
    """Whitespace-separated caption words the tokenizer reads (at least partly) as unknown."""
    if tok is None or unk is None or not hasattr(tok, "encode"):
        return []
    out = []
    for chunk in caption.split():
        word = chunk.strip(string.punctuation)
        if word and unk in list(tok.encode(word)):
            out.append(word)
    return out


def inspect_grounding(
    backbone: Any,
    image: Any,
    caption: str,
    mask_ratio: float = 0.8,
    hint_ratio: float = 0.3,
    seed: int = 0,
    grounding: Any = None,
) -> Inspection:
    """Ground one image-caption pair and plan it with the SeGroS preset.

    ``image`` is a PIL image or an (H, W, 3) uint8 array (resized by the backbone);
    ``grounding`` a :class:`~segros.grounding.GroundingConfig` (paper defaults when None).
    """
    import torch

    from segros.data.readers import ImageTextRecord
    from segros.grounding import GroundingConfig
    from segros.plan import preset
    from segros.supervision import ground_and_plan

    if not caption.strip():
        raise InspectError("the caption is empty")
    grounding = grounding or GroundingConfig()
    cfg = preset("segros", hint_ratio=hint_ratio, grounding=grounding)
    tok, unk = _text_tokenizer_info(backbone)
    unknown = _unknown_words(tok, unk, caption)

    batch = backbone.prepare_t2i([ImageTextRecord(image=image, caption=caption, key="inspect")])
    valid = batch.caption_mask[0]  # what the grounding reads (the contract's text_valid)
    ids = batch.text_ids[0][valid].tolist()
    all_unknown = bool(ids) and unk is not None and all(i == unk for i in ids)
    if not bool(valid.any()) or all_unknown:
        named = f": {', '.join(repr(w) for w in unknown)}" if unknown else ""
        raise InspectError(f"no word of the caption {caption!r} is known to the model{named}")

    generator = torch.Generator().manual_seed(seed)
    ratio = torch.tensor([mask_ratio], dtype=torch.float64)
    plan = ground_and_plan(backbone, batch, cfg, ratio, generator)
    g = plan.grounding  # its text_valid: the caption tokens left after stopwords
    words = _labels(tok, ids) if tok is not None else [f"t{j}" for j in range(len(ids))]
    if unknown and unk is not None:  # name <unk> tokens by the caption words they stand for
        pending = iter(unknown)
        words = [f"{next(pending, '<unk>')}?" if i == unk else w for w, i in zip(words, ids, strict=True)]
    hint_grid = tuple(plan.hint_grid or backbone.token_grid)
    return Inspection(
        image=batch.images[0].cpu().numpy(),
        caption=caption,
        words=words,
        intra=g.text_intra[0][valid].cpu().numpy(),
        inter=g.text_inter[0][valid].cpu().numpy(),
        importance=g.text_importance[0][valid].cpu().numpy(),
        keep=g.text_keep[0][valid].cpu().numpy(),
        scores=g.scores[0].cpu().numpy(),
        token_grid=tuple(backbone.token_grid),
        hint_idx=plan.hint_idx[0].cpu().numpy(),
        hint_grid=hint_grid,
        seen=plan.seen[0].cpu().numpy(),
        unknown_words=unknown,
        excluded=(valid & ~g.text_valid[0])[valid].cpu().numpy(),
        settings={
            "tau": grounding.temperature,
            "rho": grounding.text_keep_ratio,
            "alpha": grounding.noise_scale,
            "eta": hint_ratio,
            "gamma": mask_ratio,
            "seed": seed,
        },
    )


def _any(flags: np.ndarray | None) -> bool:
    return flags is not None and bool(flags.any())


def inspection_figure(ins: Inspection, title: str) -> np.ndarray:
    """The Fig. 3-style picture of an :class:`Inspection`, as an (H, W, 3) uint8 array."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from segros.viz import MASKED_RGB, SEEN_RGB, figure_to_array

    lv = len(ins.words)
    width = max(11.0, 0.42 * lv + 2.0)
    fig = plt.figure(figsize=(width, 9.4))
    outer = fig.add_gridspec(2, 1, height_ratios=[1.15, 1.25], hspace=0.28)
    top = outer[0].subgridspec(1, 3, wspace=0.25)
    bottom = outer[1].subgridspec(3, 1, hspace=0.12)
    H, W = ins.image.shape[:2]
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)

    image_axes = [fig.add_subplot(top[i]) for i in range(3)]
    ax = image_axes[0]
    ax.imshow(ins.image, interpolation="nearest", extent=extent)
    ax.set_title(f"(a) input image ({W}x{H} px)", fontsize=10)

    ax = image_axes[1]
    ax.imshow(ins.image, interpolation="nearest", extent=extent)
    heat = ax.imshow(
        ins.scores.reshape(ins.token_grid), cmap="inferno", alpha=0.65, vmin=0, vmax=1,
        interpolation="nearest", extent=extent,
    )  # fmt: skip
    cbar = fig.colorbar(heat, cax=ax.inset_axes([1.03, 0.0, 0.05, 1.0]))  # keeps the panel's size
    cbar.ax.tick_params(labelsize=7)
    ax.set_title("(c) grounding map m̄ (Eq. 11)", fontsize=10)

    ax = image_axes[2]
    n_seen = int(ins.seen.sum())
    n = ins.seen.size
    colours = np.where(ins.seen[:, None], SEEN_RGB, MASKED_RGB).reshape(*ins.token_grid, 3)
    tint = colours[np.arange(H) * ins.token_grid[0] // H][:, np.arange(W) * ins.token_grid[1] // W]
    ax.imshow((0.5 * ins.image + 0.5 * tint).astype(np.uint8), interpolation="nearest", extent=extent)
    gh, gw = ins.hint_grid
    ch, cw = H / gh, W / gw
    for idx in ins.hint_idx.tolist():
        r, c = divmod(idx, gw)
        ax.add_patch(
            Rectangle((c * cw - 0.5, r * ch - 0.5), cw, ch, fill=False, edgecolor="#ffe000", linewidth=2.0)
        )
    ax.set_title(f"(d) token roles, γ = {ins.settings['gamma']:g}, η = {ins.settings['eta']:g}", fontsize=10)
    ax.legend(
        handles=[
            Patch(facecolor="none", edgecolor="#ffe000", linewidth=2, label=f"hint ({ins.hint_idx.size})"),
            Patch(color=SEEN_RGB / 255, label=f"seen ({n_seen})"),
            Patch(color=MASKED_RGB / 255, label=f"masked ({n - n_seen})"),
        ],
        loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False,
        handlelength=1.2, columnspacing=1.0,
    )  # fmt: skip
    for a in image_axes:
        a.set_xticks([])
        a.set_yticks([])

    x = np.arange(lv)
    bar_colours = [KEPT_RGB if k else DROPPED_RGB for k in ins.keep]
    rows = [
        (ins.intra, "s_intra (Eq. 4)"),
        (ins.inter, "s_inter (Eq. 6)"),
        (ins.importance, "Ω (Eq. 7)"),
    ]
    for i, (values, label) in enumerate(rows):
        ax = fig.add_subplot(bottom[i])
        ax.bar(x, values, color=bar_colours, width=0.75)
        ax.set_ylabel(label, fontsize=9)
        ax.set_xlim(-0.6, lv - 0.4)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if i == 0:
            ax.set_title(
                f"(b) text scores per caption token; orange = kept (w = 1, top ρ = {ins.settings['rho']:g})"
                + ("; word? = unknown to the model (<unk>)" if ins.unknown_words else "")
                + ("; [word] = stopword, not grounded" if _any(ins.excluded) else ""),
                fontsize=10,
            )
        if i < len(rows) - 1:
            ax.set_xticks(x, [""] * lv)
        else:
            excluded = ins.excluded if ins.excluded is not None else np.zeros(lv, dtype=bool)
            labels = [f"[{w}]" if x else w for w, x in zip(ins.words, excluded, strict=True)]
            ax.set_xticks(x, labels, rotation=45 if lv > 8 else 0, ha="right" if lv > 8 else "center")
            for tick, kept, stop in zip(ax.get_xticklabels(), ins.keep, excluded, strict=True):
                tick.set_fontsize(9)
                if stop:
                    tick.set_color("#999999")
                if kept:
                    tick.set_fontweight("bold")
                    tick.set_color(KEPT_RGB)
    s = ins.settings
    lines = textwrap.wrap(f"“{ins.caption}”", 120)
    caption = "\n".join(lines[:2]) + ("…" if len(lines) > 2 else "")
    fig.suptitle(
        f"{title}\n{caption}\n"
        f"τ = {s['tau']:g}, ρ = {s['rho']:g}, α = {s['alpha']:g}, η = {s['eta']:g}, γ = {s['gamma']:g}, "
        f"seed {s['seed']:g}",
        fontsize=10,
    )
    fig.subplots_adjust(left=0.07, right=0.97, top=0.86, bottom=0.1)
    return figure_to_array(fig)


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="image file (any format PIL reads)")
    parser.add_argument("--caption", required=True, help="the caption to ground")
    parser.add_argument(
        "--checkpoint", default=None, help="checkpoint folder; default: a freshly initialised tiny model"
    )
    parser.add_argument(
        "--out",
        default="segros-inspect.png",
        help="output PNG, or a folder to write segros-inspect.png into (default: %(default)s)",
    )
    parser.add_argument(
        "--mask-ratio", type=float, default=0.8, help="masking ratio γ (default: %(default)s)"
    )
    parser.add_argument("--hint-ratio", type=float, default=0.3, help="hint ratio η (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise ξ (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature τ")
    parser.add_argument("--text-keep-ratio", type=float, default=0.4, help="text keep ratio ρ")
    parser.add_argument("--noise-scale", type=float, default=0.5, help="noise scale α of Eq. 12")
    parser.add_argument(
        "--text-stopwords",
        choices=("none", "english"),
        default="none",
        help="english: leave function words out of the grounding (marked [word] in the picture)",
    )


def _error(message: str) -> int:
    print(f"segros inspect: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from segros.grounding import GroundingConfig

    if not 0.0 <= args.mask_ratio <= 1.0:
        return _error(f"--mask-ratio must be in [0, 1], got {args.mask_ratio}")
    try:
        grounding = GroundingConfig(
            text_keep_ratio=args.text_keep_ratio,
            temperature=args.temperature,
            noise_scale=args.noise_scale,
            text_stopwords=args.text_stopwords,
        )
        from segros.plan import PlanConfig

        PlanConfig(hint_ratio=args.hint_ratio)  # validates eta before anything heavy runs
        image = load_image(args.image)
        if not args.caption.strip():
            raise InspectError("the caption is empty")
    except (InspectError, ValueError, TypeError) as err:
        return _error(str(err))

    if args.checkpoint:
        from segros.backbones.registry import load_backbone

        try:
            backbone = load_backbone(args.checkpoint)
        except (FileNotFoundError, ValueError) as err:
            return _error(str(err))
        model = f"checkpoint {args.checkpoint}"
    else:
        import torch

        from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions

        torch.manual_seed(args.seed)  # the untrained model, too, is reproducible from --seed
        backbone = TinyBackbone.from_options(TinyOptions())
        model = (
            f"fresh tiny model, untrained embeddings (init seed {args.seed}; "
            "pass --checkpoint for a trained one)"
        )
    backbone.eval()

    try:
        ins = inspect_grounding(
            backbone, image, args.caption, args.mask_ratio, args.hint_ratio, args.seed, grounding
        )
    except InspectError as err:
        return _error(str(err))
    out = Path(args.out)
    if out.is_dir() or not out.suffix:  # a folder: the picture goes inside it
        out = out / "segros-inspect.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(inspection_figure(ins, f"SeGroS grounding — {model}")).save(out)
    print(f"wrote {out}")
    print(f"model: {model}")
    print(ins.summary())
    return 0
