"""Sequence layout for training with hints: ``[hints | text | corrupted image]`` (paper Fig. 6).

Attention rules (query row -> key column):

- hints attend bidirectionally among themselves only;
- text attends to every hint and causally to the text (itself and earlier text tokens);
- corrupted image tokens attend to everything (hints, text, image);
- padding is never attended to. A padding query attends only to itself, so every row of the
  additive mask has a finite entry and ``scaled_dot_product_attention`` never yields NaN;
  the outputs at padding positions are meaningless and must be ignored.

Position ids: text tokens count 0, 1, ... over real tokens (right padding shifts nothing),
image slot ``i`` gets ``n_text + i``. Hints are numbered by ``hint_position``:

- ``"prefix"`` (the default of :class:`segros.plan.PlanConfig`): hint ``k`` of ``K`` gets ``k - K``,
  i.e. ``-K .. -1``, and text and image keep exactly the ids they have without hints (at
  generation). A hint's id carries its order only, never its slot. Rotary models use these ids as
  they are (only differences matter, so this equals numbering hints ``0 .. K-1`` and shifting
  the rest); models with a learned position table map them to a range of their own.
- ``"slot"``: the hint from image slot ``i`` (``hint_idx``) gets that slot's id ``n_text + i``, the
  same as the image token it duplicates (an ablation: for code-embedding hints it lets the model
  copy a hinted target from distance 0).
- ``"shift"`` (when neither is asked and no ``hint_idx`` is given): a plain prefix ``0 .. K-1`` and
  the rest shifted by K; used for image prefixes in image-to-text layouts.

``hint_valid`` (B, K) bool drops hints per sample (``method.hint_prob``): a dropped hint is treated
as padding, so no token attends to it and the sample behaves exactly as one without hints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segros._checks import check_bool_tensor

HINT, TEXT, IMAGE = 0, 1, 2


@dataclass
class PackedLayout:
    """Attention and positions for one batch laid out as [hints | text | image]."""

    allowed: torch.Tensor  # (B, S, S) bool: allowed[b, q, k] = query q may attend to key k
    position_ids: torch.Tensor  # (B, S) long
    is_real: torch.Tensor  # (B, S) bool: False at text padding
    segment: torch.Tensor  # (S,) long: HINT / TEXT / IMAGE
    num_hints: int
    text_len: int
    num_image: int

    @property
    def hints(self) -> slice:
        return slice(0, self.num_hints)

    @property
    def text(self) -> slice:
        return slice(self.num_hints, self.num_hints + self.text_len)

    @property
    def image(self) -> slice:
        start = self.num_hints + self.text_len
        return slice(start, start + self.num_image)


def pack_layout(
    num_hints: int,
    text_mask: torch.Tensor,
    num_image: int,
    hint_idx: torch.Tensor | None = None,
    hint_position: str | None = None,
    hint_valid: torch.Tensor | None = None,
) -> PackedLayout:
    """Build the Fig. 6 attention mask and position ids.

    Args:
        num_hints: K, hint tokens per sample (equal across the batch by construction).
        text_mask: ``(B, T)`` bool, True at real text tokens (caption and template tokens
            alike), False at padding. ``T`` may be 0 (image-only conditioning, as RecA).
        num_image: N, image tokens per sample. With N = 0 and the image as the prefix, the same
            rules give the image-to-text layout (image bidirectional, text causal after it).
        hint_idx: ``(B, K)`` image-slot index of every hint, or None (see module docstring).
        hint_position: ``"prefix"``, ``"slot"`` (needs ``hint_idx``) or ``"shift"``; None means
            ``"slot"`` when ``hint_idx`` is given, else ``"shift"``.
        hint_valid: ``(B, K)`` bool, False at hints a sample does not get; None: all.
    """
    if not isinstance(text_mask, torch.Tensor) or text_mask.dim() != 2:
        raise ValueError("text_mask must be a (B, T) bool tensor")
    B, T = text_mask.shape
    check_bool_tensor("text_mask", text_mask, (B, T))
    if num_hints < 0 or num_image < 0:
        raise ValueError(f"need num_hints >= 0 and num_image >= 0, got {num_hints} and {num_image}")
    if hint_idx is not None and tuple(hint_idx.shape) != (B, num_hints):
        raise ValueError(f"hint_idx must have shape {(B, num_hints)}, got {tuple(hint_idx.shape)}")
    if hint_position is None:
        hint_position = "shift" if hint_idx is None else "slot"
    if hint_position not in ("prefix", "slot", "shift"):
        raise ValueError(f"hint_position must be prefix, slot or shift, got {hint_position!r}")
    if hint_position == "slot" and hint_idx is None and num_hints:
        raise ValueError("hint_position='slot' needs hint_idx")
    if hint_valid is not None:
        check_bool_tensor("hint_valid", hint_valid, (B, num_hints))
    device = text_mask.device
    S = num_hints + T + num_image

    segment = torch.cat(
        [
            torch.full((num_hints,), HINT, device=device),
            torch.full((T,), TEXT, device=device),
            torch.full((num_image,), IMAGE, device=device),
        ]
    )
    ones = torch.ones
    hints_real = ones(B, num_hints, dtype=torch.bool, device=device) if hint_valid is None else hint_valid
    is_real = torch.cat(
        [
            hints_real.to(device),
            text_mask,
            ones(B, num_image, dtype=torch.bool, device=device),
        ],
        dim=1,
    )

    q_seg, k_seg = segment.view(S, 1), segment.view(1, S)
    idx = torch.arange(S, device=device)
    causal = idx.view(S, 1) >= idx.view(1, S)
    rule = (
        ((q_seg == HINT) & (k_seg == HINT))
        | ((q_seg == TEXT) & ((k_seg == HINT) | ((k_seg == TEXT) & causal)))
        | (q_seg == IMAGE)
    )
    allowed = rule.unsqueeze(0) & is_real.unsqueeze(1) & is_real.unsqueeze(2)
    allowed |= torch.eye(S, dtype=torch.bool, device=device).unsqueeze(0) & ~is_real.unsqueeze(2)

    n_text = text_mask.sum(1, keepdim=True)  # (B, 1)
    text_pos = (text_mask.long().cumsum(1) - 1).clamp_min(0) * text_mask
    image_pos = n_text + torch.arange(num_image, device=device)
    if hint_position == "shift":
        hint_pos = torch.arange(num_hints, device=device).expand(B, -1)
        text_pos, image_pos = text_pos + num_hints * text_mask, image_pos + num_hints
    elif hint_position == "prefix":
        hint_pos = torch.arange(-num_hints, 0, device=device).expand(B, -1)
    else:
        hint_pos = n_text + hint_idx.to(device)
    position_ids = torch.cat([hint_pos, text_pos, image_pos], dim=1).long()

    return PackedLayout(
        allowed=allowed,
        position_ids=position_ids,
        is_real=is_real,
        segment=segment,
        num_hints=num_hints,
        text_len=T,
        num_image=num_image,
    )
