"""Collated batches for the training loop: read, decoded and collated in DataLoader workers.

:class:`~segros.data.sampling.RecordBatches` defines the batches: exactly ``batch_size`` good
records, pulled in the deterministic order of a :class:`~segros.data.sampling.ShardedOrder`, a bad
record replaced by the next index and counted once by the :class:`~segros.data.budget.BadRecordBudget`.
This module makes the same batches, collated (``Backbone.collate_t2i`` / ``collate_i2t``: tokenised
text and the pixel transforms, CPU tensors), either in the main process (:class:`InProcessBatches`,
``data.workers=0``) or in torch DataLoader workers (:class:`WorkerBatches`). The frozen encoders are
not run here: the trainer runs ``Backbone.encode_t2i`` on the device.

How the workers keep the batches exact. Whether a record is bad is only known once it is read, so
where batch k+1 starts depends on batch k. The workers therefore do not make batches: each reads a
*chunk*, ``batch_size`` consecutive indices of the order (a copy of the order, run ahead by the
prefetch), and sends the chunk's good records collated plus its bad records. The main process walks
the chunks index by index exactly as ``RecordBatches`` walks the order (the same budget calls at the
same points), takes each batch's rows from one or two chunks and joins them with
``T2IBatch.cat``, which gives the batch the collate function makes of those records together
(tested on every backbone). So the batches equal ``data.workers=0``'s, tensor for tensor.

What is saved is what was consumed. The real order and budget advance only as the main process
takes records into a batch, so after a batch is handed out ``state_dict()`` is the same as
``RecordBatches.state_dict()`` at that batch: whatever the workers read ahead is read again after a
resume, and a checkpoint written with workers on resumes with them off and the other way round.

Only map-style datasets under a ``ShardedOrder`` run in workers; any other batches object with
``RecordBatches``' interface (an iterable stream: iteration yields lists of records,
``state_dict`` / ``load_state_dict``) is collated in the main process, whatever ``data.workers`` says.

Why torch's DataLoader and not torchdata's ``StatefulDataLoader``: the state that matters is the
order's position after the last record a batch *consumed*, which can be the middle of a chunk
a worker sent; ``StatefulDataLoader`` counts what the loader yielded (whole chunks) and restores by
fast-forwarding its sampler. Keeping the position in the main process is exact and needs nothing
but the order, so the plain DataLoader (restarted from the saved position) is all that is needed.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import pickle
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from segros.data.readers import BadRecord
from segros.data.sampling import RecordBatches, ShardedOrder

log = logging.getLogger(__name__)

Collate = Callable[[Sequence[Any]], Any]


class InProcessBatches:
    """Collated batches of ``records`` (a ``RecordBatches`` or any object with its interface),
    collated in the calling process. Its state is the records' state."""

    def __init__(self, records: Any, collate: Collate) -> None:
        self.records = records
        self.collate = collate

    def __iter__(self) -> Iterator[Any]:
        for batch in self.records:
            yield self.collate(batch)

    def state_dict(self) -> dict[str, Any]:
        return self.records.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records.load_state_dict(state)

    def close(self) -> None:
        """Nothing runs in the background."""


@dataclass
class _Chunk:
    """What a worker sends for ``batch_size`` consecutive indices of the order: their good records
    collated (``None`` if there are none) and, per index, its row in ``batch`` or its BadRecord."""

    indices: list[int]
    rows: list[int | BadRecord]
    batch: Any


class _Indexed:
    """The dataset, each item with its index (so the main process can check the chunk's order)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return int(i), self.dataset[int(i)]


class _CollateChunk:
    """The workers' collate function: a chunk's good records collated, its bad ones listed."""

    def __init__(self, collate: Collate) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[int, Any]]) -> _Chunk | bytes:
        good: list[Any] = []
        rows: list[int | BadRecord] = []
        for _, record in items:
            if isinstance(record, BadRecord):
                rows.append(record)
            else:
                rows.append(len(good))
                good.append(record)
        chunk = _Chunk([i for i, _ in items], rows, self.collate(good) if good else None)
        return pickle.dumps(chunk) if _tensor_bytes(chunk.batch) < SMALL_CHUNK else chunk


#: chunks whose tensors hold fewer bytes than this cross to the main process as one pickled byte
#: string: a tensor that crosses as itself moves through shared memory, and receiving its handle costs
#: a round trip to the worker (taking a Show-o-tiny batch of 16 from a full queue: median 7-13 ms
#: that way, 1.7-3.7 ms as bytes, on a loaded 2-core machine)
SMALL_CHUNK = 4 << 20


def _tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in a batch (its fields, their dicts)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if dataclasses.is_dataclass(value):
        return sum(_tensor_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


class _Chunks:
    """The batch sampler: endless chunks of ``size`` consecutive indices of ``order`` (a copy of the
    real order, which it runs ahead of)."""

    def __init__(self, order: ShardedOrder, size: int) -> None:
        self.order = order
        self.size = size

    def __iter__(self) -> Iterator[list[int]]:
        indices = iter(self.order)
        while True:
            yield [next(indices) for _ in range(self.size)]


def _start_method() -> str | None:
    """``fork`` where there is one: workers then share the backbone (its tokenizers, which the
    collate function uses) with the main process instead of unpickling a copy of its weights. They
    never touch the model's device."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


class WorkerBatches:
    """The batches of ``records`` (a :class:`~segros.data.sampling.RecordBatches`: its dataset,
    order, batch size and budget are used, and its order and budget advance as batches are taken),
    collated by ``collate`` in ``workers`` DataLoader worker processes, ``prefetch`` chunks ahead
    each. See the module docstring for why they equal :class:`InProcessBatches`' and how resume stays
    exact; ``cat`` joins rows of collated chunks (``T2IBatch.cat`` with the backbone's pad id)."""

    def __init__(
        self,
        records: RecordBatches,
        collate: Collate,
        cat: Callable[[list[tuple[Any, slice]]], Any],
        workers: int,
        prefetch: int = 2,
    ) -> None:
        if workers < 1 or prefetch < 1:
            raise ValueError(f"WorkerBatches needs workers >= 1 and prefetch >= 1, got {workers}, {prefetch}")
        self.records = records
        self.collate = collate
        self.cat = cat
        self.workers = workers
        self.prefetch = prefetch
        self._live: weakref.WeakSet[Any] = weakref.WeakSet()

    def _loader(self) -> DataLoader:
        order = self.records.order
        ahead = ShardedOrder(order.length, order.seed, order.shuffle, order.rank, order.world_size)
        ahead.load_state_dict(order.state_dict())
        return DataLoader(
            _Indexed(self.records.dataset),
            batch_sampler=_Chunks(ahead, self.records.batch_size),
            collate_fn=_CollateChunk(self.collate),
            num_workers=self.workers,
            prefetch_factor=self.prefetch,
            multiprocessing_context=_start_method(),
        )

    @staticmethod
    def _reads(chunks: Iterator[_Chunk | bytes]) -> Iterator[tuple[int, Any, _Chunk]]:
        """(index, BadRecord or row, chunk) for every index, in the order's order."""
        for chunk in chunks:
            chunk = pickle.loads(chunk) if isinstance(chunk, bytes) else chunk  # noqa: S301 - our workers'
            for index, row in zip(chunk.indices, chunk.rows, strict=True):
                yield index, row, chunk

    def __iter__(self) -> Iterator[Any]:
        batches = self._batches()
        self._live.add(batches)
        return batches

    def _batches(self) -> Iterator[Any]:
        # The loop of RecordBatches.__iter__, with dataset[index] replaced by the chunk's answer:
        # the same budget calls at the same points, and the real order advanced as indices are taken.
        size, budget = self.records.batch_size, self.records.budget
        reads = self._reads(iter(self._loader()))  # its copy of the order starts here, before any take
        consumed = iter(self.records.order)
        while True:
            rows: list[tuple[_Chunk, int]] = []
            pulled = 0
            while len(rows) < size:
                index = next(consumed)
                read_index, row, chunk = next(reads)
                if read_index != index:  # the copy of the order ran differently: a bug, not bad data
                    raise RuntimeError(f"loader out of step: read index {read_index}, expected {index}")
                pulled += 1
                if budget.observe(row, index):
                    rows.append((chunk, row))
                else:
                    budget.check(share=False)
                if pulled % size == 0:
                    budget.check()
            budget.check()
            yield self._join(rows)

    def _join(self, rows: list[tuple[_Chunk, int]]) -> Any:
        """The batch of these rows: one slice per run of consecutive rows of one chunk."""
        parts: list[tuple[Any, slice]] = []
        for chunk, row in rows:
            if parts and parts[-1][0] is chunk.batch and parts[-1][1].stop == row:
                parts[-1] = (chunk.batch, slice(parts[-1][1].start, row + 1))
            else:
                parts.append((chunk.batch, slice(row, row + 1)))
        if len(parts) == 1 and parts[0][1] == slice(0, len(parts[0][0])):
            return parts[0][0]  # a whole chunk: as collated
        return self.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return self.records.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()  # a running loader read from the old position
        self.records.load_state_dict(state)

    def close(self) -> None:
        """Stop the worker processes of every iteration still running."""
        for batches in list(self._live):
            batches.close()


def collated_batches(
    records: Any, collate: Collate, cat: Callable[[list[tuple[Any, slice]]], Any], workers: int, prefetch: int
) -> InProcessBatches | WorkerBatches:
    """``records``' batches collated: in ``workers`` worker processes when it is a map-style
    ``RecordBatches`` and ``workers > 0``, else in this process (an iterable stream says so once)."""
    if workers > 0 and isinstance(records, RecordBatches):
        return WorkerBatches(records, collate, cat, workers, prefetch)
    if workers > 0:
        log.info(
            "data.workers=%d: %s is not a map-style RecordBatches; it is read in the main process",
            workers,
            type(records).__name__,
        )
    return InProcessBatches(records, collate)


def default_workers() -> int:
    """``data.workers`` when the config leaves it unset (docs/data-loading.md says why): two
    workers per stream when this process may use more than two CPU cores, else none."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 if cpus > 2 else 0
