"""The prompt a reconstruction is conditioned on, written once for every backbone: caption dropout,
RecA's caption-less condition and the classifier-free-guidance pair.

An adapter says what its caption-less prompt is (:meth:`PromptConditioning.empty_prompt`), which
token pads prompts (``pad_id``) and on which side (``prompt_padding``); everything else is here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F


class PromptConditioning(ABC):
    """Caption dropout and the empty prompt, a mixin of :class:`~segros.backbones.base.Backbone`."""

    __slots__ = ()  # a mixin of an nn.Module: adds no instance layout (FSDP2 swaps the class)

    #: the side prompts are padded on (Show-o left-pads its fixed-width prompt)
    prompt_padding: ClassVar[str] = "right"

    @property
    @abstractmethod
    def pad_id(self) -> int:
        """The token id prompts are padded with."""

    @abstractmethod
    def empty_prompt(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of the prompt without a caption, at its own width: what a dropped caption
        becomes, RecA's condition, and the unconditional branch of classifier-free guidance."""

    @property
    def caption_dropout(self) -> float:
        """Probability of replacing a caption by the empty prompt (classifier-free guidance)."""
        return self.options.caption_dropout

    def fit_prompt(
        self, ids: torch.Tensor, mask: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids and mask padded to ``width`` on :attr:`prompt_padding`'s side."""
        extra = width - ids.shape[1]
        if extra <= 0:
            return ids, mask
        pad = (extra, 0) if self.prompt_padding == "left" else (0, extra)
        return F.pad(ids, pad, value=self.pad_id), F.pad(mask, pad, value=False)

    def with_empty_prompt(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[prompts; empty prompts]`` (2B rows) at one width, for classifier-free guidance."""
        empty_ids, empty_mask = self.empty_prompt(ids.shape[0], ids.device)
        width = max(ids.shape[1], empty_ids.shape[1])
        ids, mask = self.fit_prompt(ids, mask, width)
        empty_ids, empty_mask = self.fit_prompt(empty_ids, empty_mask, width)
        return torch.cat([ids, empty_ids]), torch.cat([mask, empty_mask])

    def condition(self, batch: Any, text_condition: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt (ids, mask) a reconstruction of a :class:`~segros.backbones.base.T2IBatch` is
        conditioned on: the captions, the empty prompt where ``batch.drop_caption`` is set, or the
        empty prompt for every sample when ``text_condition`` is False (RecA, Table 9)."""
        if not text_condition:
            return self.empty_prompt(batch.text_ids.shape[0], batch.text_ids.device)
        return self.dropped(batch.text_ids, batch.text_mask, batch.drop_caption)

    def dropped(
        self, ids: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts (ids, mask) with the rows ``drop`` replaced by the empty prompt."""
        if drop is None or not bool(drop.any()):
            return ids, mask
        empty_ids, empty_mask = self.empty_prompt(ids.shape[0], ids.device)
        width = max(ids.shape[1], empty_ids.shape[1])
        ids, mask = self.fit_prompt(ids, mask, width)
        empty_ids, empty_mask = self.fit_prompt(empty_ids, empty_mask, width)
        drop = drop.to(ids.device).unsqueeze(1)
        return torch.where(drop, empty_ids, ids), torch.where(drop, empty_mask, mask)

    def drop_captions(self, batch: Any, generator: torch.Generator | None) -> Any:
        """Draw ``batch.drop_caption``: each caption replaced by the empty prompt with probability
        :attr:`caption_dropout`, so the model learns the unconditional branch of guidance."""
        drop = torch.rand(len(batch), generator=generator) < self.caption_dropout
        batch.drop_caption = drop.to(batch.text_ids.device)
        return batch
