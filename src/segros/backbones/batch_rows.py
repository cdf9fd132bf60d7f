"""The mechanics of a collated batch: moving it, copying it with changes, and joining rows of
batches collated apart (what :mod:`segros.data.loader` builds its batches from).

The batch dataclasses themselves, and what their fields mean, are part of the backbone contract
(:mod:`segros.backbones.base`); this module holds only what every batch does the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


class BatchMethods:
    """``len``, ``to(device)``, ``replace`` and ``cat`` for the batch dataclasses of
    :mod:`segros.backbones.base` (:class:`~segros.backbones.base.T2IBatch`, ``I2TBatch``)."""

    def __len__(self) -> int:
        return int(self.text_ids.shape[0])

    def to(self, device: torch.device | str) -> Any:
        """A copy with every tensor (extras and memo included) on ``device``."""

        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            is_dict = isinstance(value, dict)
            changes[f.name] = {k: move(v) for k, v in value.items()} if is_dict else move(value)
        return dataclasses.replace(self, **changes)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes``: ``extras`` is copied (so the copy may change it) and ``memo``
        starts empty (what the backbone derived from the old fields may not hold for the new)."""
        return dataclasses.replace(self, **{"extras": dict(self.extras), "memo": {}, **changes})

    @classmethod
    def cat(cls, parts: Sequence[tuple[Any, slice]], pad_id: int) -> Any:
        """The batch of the rows ``parts`` select (``(batch, rows)`` pairs), as the collate function
        would have made it from those records alone: every tensor (``extras`` too) is concatenated
        along the batch dimension, and the text fields (:attr:`text_fields`) are cut or right-padded
        (``pad_id``, masks False) to the width of the longest selected row. Text must be fixed-width
        or right-padded, as ``Backbone.collate_t2i`` promises. The loader builds its batches so
        from the collated chunks its workers send (:mod:`segros.data.loader`)."""
        rows = [(batch, sl) for batch, sl in parts if sl.stop > sl.start]
        if not rows:
            raise ValueError("no rows to concatenate")
        if any(batch.memo for batch, _ in rows):
            raise ValueError("cannot concatenate batches that hold memo (derived on the device)")
        width = max(int(_row_widths(batch.text_mask[sl]).max()) for batch, sl in rows)

        def text(value: torch.Tensor, pad: int | bool) -> torch.Tensor:
            value = value[:, :width]
            return F.pad(value, (0, width - value.shape[1]), value=pad) if value.shape[1] < width else value

        def join(name: str, values: list[Any]) -> Any:
            first = values[0]
            if first is None:
                if any(v is not None for v in values):
                    raise ValueError(f"field {name!r} is set in some parts only")
                return None
            if isinstance(first, torch.Tensor):
                if name in cls.text_fields:
                    pad = pad_id if first.dtype != torch.bool else False
                    values = [text(v, pad) for v in values]
                return torch.cat(values)
            if isinstance(first, list):
                return [x for v in values for x in v]
            if isinstance(first, dict):
                return {k: join(f"{name}.{k}", [v[k] for v in values]) for k in first}
            raise TypeError(f"cannot concatenate field {name!r} of type {type(first).__name__}")

        out = {}
        for f in dataclasses.fields(cls):
            if f.name == "memo":
                out[f.name] = {}
                continue
            sliced = [_rows_of(getattr(batch, f.name), sl) for batch, sl in rows]
            out[f.name] = join(f.name, sliced)
        return cls(**out)


def _rows_of(value: Any, rows: slice) -> Any:
    """``rows`` of a batch field: a tensor's or list's, each value's of a dict; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: v[rows] for k, v in value.items()}
    return value[rows]


def _row_widths(mask: torch.Tensor) -> torch.Tensor:
    """(B,) the width of each row of a text mask up to its last real token (right padding dropped;
    a fixed-width, left-padded row ends in a real token, so it keeps its full width)."""
    cols = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * cols).amax(1)
