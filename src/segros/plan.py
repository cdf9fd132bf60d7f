"""Supervision plans: which image tokens are hints, which stay visible, which carry loss.

Paper Sec. 3.4. From the perturbed grounding map m-tilde the plan takes the top
``floor(eta * N)`` tokens as visual hints, keeps the bottom ``N - floor(gamma * N)`` tokens
visible in the corrupted input, and masks the rest as reconstruction targets. The baselines
are the same machinery with other picks: SFT (no hints, random mask) and RecA (no text, every
token as a hint, random mask). Every ablation of the paper is one field of :class:`PlanConfig`.

The plan is backbone-agnostic: a backbone adapter turns it into its own hint embeddings,
mask pattern and loss (see ``segros.backbones``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from segros._checks import check_bool, check_choice, check_ratio
from segros.grounding import (
    Grounding,
    GroundingConfig,
    content_tokens,
    ground,
    keep_top_k,
    uniform_noise,
)

HINT_PICKS = ("top", "bottom", "random", "all", "none")  # Table 5 (top/bottom), Table 9 (all)
SEEN_PICKS = ("bottom", "top", "random")  # Table 5 (top/bottom), SFT/RecA (random)
# prefix: hints are ordinary prefix tokens whose position ids say nothing of their slot beyond
# their order (Sec. 3.4, Fig. 6); slot: a hint takes its image slot's position id (an ablation)
HINT_POSITIONS = ("prefix", "slot")


@dataclass(frozen=True)
class PlanConfig:
    """Every SeGroS knob; defaults are the paper's SeGroS setting."""

    hint_ratio: float = 0.3  # eta (Table 3); ignored for hint_pick "all" / "none"
    hint_pick: str = "top"  # top | bottom | random | all | none
    seen_pick: str = "bottom"  # bottom | top | random
    loss_target_ratio: float | None = None  # drop-loss r (Table 6); None = every masked token
    text_condition: bool = True  # False: RecA-style image-only conditioning (Table 9)
    hint_position: str = "prefix"  # prefix | slot (docs/visual-hints.md)
    hint_prob: float = 1.0  # probability that a sample gets its hints (beyond the paper)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)

    def __post_init__(self) -> None:
        """The one validation of these knobs (a config's ``method:`` keys too, which name them)."""
        check_ratio("hint_ratio", self.hint_ratio)
        check_ratio("hint_prob", self.hint_prob)
        check_choice("hint_position", self.hint_position, HINT_POSITIONS)
        check_choice("hint_pick", self.hint_pick, HINT_PICKS)
        check_choice("seen_pick", self.seen_pick, SEEN_PICKS)
        if self.loss_target_ratio is not None:
            check_ratio("loss_target_ratio", self.loss_target_ratio)
        check_bool("text_condition", self.text_condition)
        if not isinstance(self.grounding, GroundingConfig):
            raise TypeError("grounding must be a GroundingConfig")

    @property
    def needs_grounding(self) -> bool:
        """Whether any pick reads the grounding map (SFT and RecA do not)."""
        return (
            self.hint_pick in ("top", "bottom")
            or self.seen_pick in ("top", "bottom")
            or self.loss_target_ratio is not None
        )

    def replace(self, **changes: object) -> PlanConfig:
        return dataclasses.replace(self, **changes)


# Drop-loss (Table 6): the share r of the masked tokens, most grounded first, that carry loss.
DROP_LOSS_RATIO = 0.3

PRESETS: dict[str, PlanConfig] = {
    "sft": PlanConfig(hint_ratio=0.0, hint_pick="none", seen_pick="random"),
    "reca": PlanConfig(hint_ratio=1.0, hint_pick="all", seen_pick="random", text_condition=False),
    "reca_filtered": PlanConfig(hint_pick="top", seen_pick="random", text_condition=False),
    "segros": PlanConfig(),
    "segros_droploss": PlanConfig(loss_target_ratio=DROP_LOSS_RATIO),
}


def preset(name: str, **overrides: object) -> PlanConfig:
    """A named preset with any knob overridden, e.g. ``preset("segros", hint_ratio=0.5)``."""
    check_choice("preset", name, tuple(PRESETS))
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


@dataclass
class SupervisionPlan:
    """What a backbone trains on for one batch (all tensors on one device)."""

    hint_idx: torch.Tensor  # (B, K) long: hint positions on the hint grid, ascending
    seen: torch.Tensor  # (B, N) bool: visible in the corrupted input
    loss_weight: torch.Tensor  # (B, N) float32: 1 on reconstruction targets, else 0
    text_condition: bool  # condition the reconstruction on the caption
    mask_ratio: torch.Tensor  # (B,) float64: gamma per sample
    hint_grid: tuple[int, int] | None = None  # None: hints index the generation tokens
    grounding: Grounding | None = None  # for logging and pictures
    hint_position: str = "prefix"  # how adapters number the hints (HINT_POSITIONS)
    # (B,) bool: which samples get their hints (method.hint_prob); None: every sample. A sample
    # without hints still has the grounded corrupted input and targets.
    hint_keep: torch.Tensor | None = None

    @property
    def masked(self) -> torch.Tensor:
        """(B, N) bool: replaced by [MASK] in the corrupted input."""
        return ~self.seen

    @property
    def num_hints(self) -> int:
        return self.hint_idx.shape[1]

    def to(self, device: torch.device | str) -> SupervisionPlan:
        return dataclasses.replace(
            self,
            hint_idx=self.hint_idx.to(device),
            seen=self.seen.to(device),
            loss_weight=self.loss_weight.to(device),
            grounding=None if self.grounding is None else self.grounding.to(device),
            hint_keep=None if self.hint_keep is None else self.hint_keep.to(device),
        )

    def hint_valid(self) -> torch.Tensor | None:
        """(B, K) bool: the hints each sample attends to (None: all), for the sequence layout."""
        if self.hint_keep is None:
            return None
        return self.hint_keep.unsqueeze(1).expand(-1, self.num_hints)


def resample_grid(scores: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Area-resample a (B, h*w) map from grid ``src`` to grid ``dst``, returning (B, h'*w').

    Used when hints come from an encoder with another grid than the generation tokens
    (Show-o's CLIP path: 24x24 hints over 16x16 or 32x32 codes).
    """
    B, N = scores.shape
    if src[0] * src[1] != N:
        raise ValueError(f"scores have {N} tokens but the source grid {src} has {src[0] * src[1]}")
    grid = scores.reshape(B, 1, *src)
    return F.interpolate(grid, size=dst, mode="area").reshape(B, dst[0] * dst[1])


def _count(ratio: torch.Tensor | float, n: int) -> torch.Tensor:
    """floor(ratio * n) in float64 (matching math.floor on Python floats), as long."""
    return torch.floor(torch.as_tensor(ratio, dtype=torch.float64) * n).long()


def _descending_rank(values: torch.Tensor) -> torch.Tensor:
    """rank[b, i] = position of i in the stable descending order of values[b]."""
    order = torch.argsort(values, dim=-1, descending=True, stable=True)
    ranks = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def _random_keys(
    shape: tuple[int, int], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    return uniform_noise(shape, generator, like.to(torch.float32))


def _pick(rank: torch.Tensor, count: torch.Tensor, from_top: bool) -> torch.Tensor:
    """Bool (B, N): the ``count`` (per row) highest-ranked (from_top) or lowest-ranked tokens."""
    n = rank.shape[-1]
    count = count.to(rank.device).reshape(-1, 1)
    return rank < count if from_top else rank >= n - count


def make_plan(
    cfg: PlanConfig,
    mask_ratio: torch.Tensor,
    num_tokens: int,
    grounding: Grounding | None = None,
    generator: torch.Generator | None = None,
    token_grid: tuple[int, int] | None = None,
    hint_grid: tuple[int, int] | None = None,
) -> SupervisionPlan:
    """Build a plan from a grounding result and per-sample masking ratios (Sec. 3.4).

    Args:
        cfg: the knobs.
        mask_ratio: ``(B,)`` gamma per sample, in [0, 1]; see :mod:`segros.schedules`. Pass
            float64 (as the schedules return): a float32 0.45 is 0.4499999881 and floors lower.
        num_tokens: N, the number of generation tokens.
        grounding: required when ``cfg.needs_grounding``.
        generator: draws random picks and, on another hint grid, that grid's noise.
        token_grid / hint_grid: (h, w) of the generation tokens and of the hint encoder, when
            they differ; hints then index the hint grid.
    """
    mask_ratio = torch.as_tensor(mask_ratio, dtype=torch.float64)
    if mask_ratio.dim() != 1:
        raise ValueError(f"mask_ratio must have shape (B,), got {tuple(mask_ratio.shape)}")
    if not bool(((mask_ratio >= 0) & (mask_ratio <= 1)).all()):
        bad = ((mask_ratio < 0) | (mask_ratio > 1) | mask_ratio.isnan()).nonzero().flatten()[:8].tolist()
        raise ValueError(f"mask_ratio must be in [0, 1]; out of range at sample index {bad}")
    B, N = mask_ratio.shape[0], num_tokens
    if cfg.needs_grounding:
        if grounding is None:
            raise ValueError(f"this plan ({cfg.hint_pick} hints, {cfg.seen_pick} seen) needs a grounding")
        if tuple(grounding.perturbed.shape) != (B, N):
            raise ValueError(f"grounding covers shape {tuple(grounding.perturbed.shape)}, expected {(B, N)}")
    device = grounding.perturbed.device if grounding is not None else torch.device("cpu")
    other_grid = hint_grid is not None and token_grid is not None and tuple(hint_grid) != tuple(token_grid)

    # Corrupted input (Sec. 3.4): K_seen = N - floor(gamma N) tokens stay visible.
    num_seen = N - _count(mask_ratio, N)
    if cfg.seen_pick == "random":
        seen_rank = _descending_rank(_random_keys((B, N), generator, mask_ratio))
        seen = _pick(seen_rank.to(device), num_seen, from_top=True)
    else:
        token_rank = _descending_rank(grounding.perturbed)
        seen = _pick(token_rank, num_seen, from_top=cfg.seen_pick == "top")

    # Visual hints (Sec. 3.4): top floor(eta N_hint) of m-tilde, on the hint grid.
    num_hint_tokens = hint_grid[0] * hint_grid[1] if other_grid else N
    hint_count = _count(cfg.hint_ratio, num_hint_tokens)
    if cfg.hint_pick == "none":
        hint_idx = torch.zeros(B, 0, dtype=torch.long, device=device)
    elif cfg.hint_pick == "all":
        hint_idx = torch.arange(num_hint_tokens, device=device).expand(B, -1).clone()
    else:
        if cfg.hint_pick == "random":
            hint_scores = _random_keys((B, num_hint_tokens), generator, mask_ratio).to(device)
        elif other_grid:  # area-resample m-bar, then perturb on the hint grid (docs/design.md)
            noise = uniform_noise((B, num_hint_tokens), generator, grounding.scores)
            hint_scores = resample_grid(grounding.scores, token_grid, hint_grid)
            hint_scores = hint_scores + cfg.grounding.noise_scale * noise
        else:
            hint_scores = grounding.perturbed
        order = torch.argsort(hint_scores, dim=-1, descending=cfg.hint_pick != "bottom", stable=True)
        hint_idx = order[:, : int(hint_count)].sort(dim=-1).values

    # Hint dropout (method.hint_prob, beyond the paper): drawn only when it can drop something,
    # so the default leaves every other draw of the generator where it was.
    hint_keep = None
    if cfg.hint_prob < 1.0 and hint_idx.shape[1] > 0:
        hint_keep = (uniform_noise((B,), generator, mask_ratio.float()) < cfg.hint_prob).to(device)

    # Loss targets: every masked token, or (drop-loss, Table 6) the top-r grounded masked ones.
    masked = ~seen
    if cfg.loss_target_ratio is None:
        targets = masked
    else:
        targets = keep_top_k(grounding.perturbed, masked, cfg.loss_target_ratio)

    return SupervisionPlan(
        hint_idx=hint_idx,
        seen=seen,
        loss_weight=targets.to(torch.float32),
        text_condition=cfg.text_condition,
        mask_ratio=mask_ratio,
        hint_grid=tuple(hint_grid) if other_grid else None,
        grounding=grounding,
        hint_position=cfg.hint_position,
        hint_keep=hint_keep,
    )


def plan_batch(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    text_valid: torch.Tensor,
    cfg: PlanConfig,
    mask_ratio: torch.Tensor,
    generator: torch.Generator | None = None,
    token_grid: tuple[int, int] | None = None,
    hint_grid: tuple[int, int] | None = None,
    text_stopword: torch.Tensor | None = None,
) -> SupervisionPlan:
    """Ground (only when the plan needs it) and plan in one call; the usual entry point.

    ``text_stopword`` (B, L) bool marks caption tokens of function words; with
    ``cfg.grounding.text_stopwords="english"`` they are left out of the grounding
    (:func:`segros.grounding.content_tokens`).
    """
    grounding = None
    if cfg.needs_grounding:
        valid = content_tokens(text_valid, text_stopword, cfg.grounding.text_stopwords)
        grounding = ground(text_emb, image_emb, valid, cfg.grounding, generator)
    return make_plan(
        cfg, mask_ratio, image_emb.shape[1], grounding, generator, token_grid=token_grid, hint_grid=hint_grid
    )
