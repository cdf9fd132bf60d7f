"""Loss terms of SeGroS (paper Eqs. 2, 13, 15), weighted by a supervision plan.

The reconstruction loss is the backbone's own: here the cross-entropy over code ids for
discrete tokens (Show-o, Eq. 15); continuous backbones compute theirs in their adapter
(Harmon's diffusion loss at the targets, Eq. 17; see docs/design.md). It reads only the plan's
targets through ``weight`` and is normalised by the weight sum, so a batch with many masked
tokens does not outweigh one with few. The image-to-text term is next-token NLL on answer
tokens only (Eq. 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weighted_mean(per_token: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.to(per_token.dtype)
    # clamp: a batch with no target gives 0 (with a graph), not NaN
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


def _check_weight(name: str, weight: torch.Tensor, shape: torch.Size) -> None:
    if tuple(weight.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(weight.shape)}")


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 15: NLL of the true code ids, averaged over the weighted target positions.

    Args:
        logits: ``(B, N, V)`` predictions at the image positions.
        targets: ``(B, N)`` long code ids.
        weight: ``(B, N)`` the plan's ``loss_weight`` (0 at seen / dropped tokens).
    """
    _check_weight("weight", weight, targets.shape)
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return _weighted_mean(nll.view_as(weight), weight)


def i2t_loss(logits: torch.Tensor, tokens: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 2: next-token NLL of the answer given image and question.

    Args:
        logits: ``(B, T, V)`` outputs at the text positions; position t predicts token t+1.
        tokens: ``(B, T)`` long token ids of question and answer.
        answer_mask: ``(B, T)`` bool, True at answer tokens (the ones that are predicted).
    """
    if logits.shape[:2] != tokens.shape or answer_mask.shape != tokens.shape:
        raise ValueError("logits (B, T, V), tokens (B, T) and answer_mask (B, T) must agree")
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    return _weighted_mean(nll.view(tokens.shape[0], -1), answer_mask[:, 1:])


def total_loss(reconstruction: torch.Tensor, i2t: torch.Tensor | float, i2t_weight: float) -> torch.Tensor:
    """Eq. 13: L = L_SeGroS + lambda * L_i2t (lambda = 1 in the paper, 0 for OpenUni)."""
    return reconstruction + i2t_weight * i2t
