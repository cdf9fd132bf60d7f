"""Streamed image-caption data (``data.files.streaming: true``): shards too large to hold, read in order.

The source is a ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``) over Parquet
files, WebDataset tar shards (``.tar``, ``.tar.gz``/``.tgz``, local or URLs through fsspec), JSON(L)
manifests, a hub id, or a saved dataset. It is

- split across processes without duplication by ``datasets.distributed.split_dataset_by_node``
  (whole shards per process when the shard count divides by the world size, else every
  ``world``-th example of every shard);
- shuffled, when ``data.shuffle``, by shard order and a buffer of ``data.files.shuffle_buffer``
  examples, both seeded from ``run.seed`` and the epoch (``set_epoch``), so every run of the same
  config reads the same order;
- endless: when a process's stream ends, the next epoch starts (reshuffled).

:class:`StreamBatches` batches it with :class:`~segros.data.sampling.RecordBatches`' interface
(lists of exactly ``batch_size`` good records, the same :class:`BadRecordBudget`, and
``state_dict()`` / ``load_state_dict()`` for the checkpoint). Resume is exact (the batches after
a resume are those of the uninterrupted run):

- without a shuffle buffer (``data.files.shuffle_buffer: 0``, or no shuffle) the checkpoint holds the
  ``IterableDataset.state_dict()`` of ``datasets`` (the shard and the example within it), and a
  resume reopens that shard and skips to that example: it costs at most one shard's reading;
- with a buffer, ``datasets`` would drop the buffered examples on resume (its buffer is not
  saved), so the checkpoint holds the epoch and how many examples were taken from it, and a
  resume replays the epoch's stream up to there without decoding its images: exact, at the cost
  of re-reading (re-downloading, for URLs) this process's part of the epoch so far.

The budget cannot tell one streamed record from another across epochs, so a bad record met
again in a later epoch is counted again (the map-style sources count it once).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from segros.data.budget import BadRecordBudget
from segros.data.columns import resolve_columns
from segros.data.hf import image_value_record, undecoded
from segros.data.readers import BadRecord, ImageTextRecord

log = logging.getLogger(__name__)


class StreamBatches:
    """Endless batches of exactly ``batch_size`` good records from an ``IterableDataset``.

    ``to_record`` turns one raw example into a record (or a ``BadRecord``); bad records are
    counted by ``budget`` and replaced by further examples, exactly as ``RecordBatches`` does.
    ``replay``: resume by re-reading the epoch up to the saved position (needed with a shuffle
    buffer, see the module docstring); otherwise by the stream's own ``state_dict``.
    """

    def __init__(
        self,
        stream: Any,
        to_record: Callable[[dict[str, Any], int, int], Any],
        batch_size: int,
        budget: BadRecordBudget | None = None,
        replay: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.stream = stream
        self.to_record = to_record
        self.batch_size = batch_size
        self.budget = budget if budget is not None else BadRecordBudget()
        self.replay = replay
        self.epoch = 0
        self.taken = 0  # raw examples taken from this epoch's stream
        self._resume_state: dict[str, Any] | None = None

    def _examples(self) -> Iterator[tuple[dict[str, Any], int, int]]:
        while True:
            self.stream.set_epoch(self.epoch)
            if self._resume_state is not None and not self.replay:
                self.stream.load_state_dict(self._resume_state)
                examples = iter(self.stream)
            else:
                examples = iter(self.stream)
                if self.taken:  # replay: skip what this epoch already gave, undecoded
                    skipped = sum(1 for _ in itertools.islice(examples, self.taken))
                    if skipped < self.taken:
                        raise ValueError(
                            f"cannot resume the stream: epoch {self.epoch} now holds {skipped} examples "
                            f"for this process, the checkpoint had read {self.taken}: the data changed"
                        )
            self._resume_state = None
            got = False
            for example in examples:
                got = True
                self.taken += 1
                yield example, self.epoch, self.taken - 1
            if not got and not self.taken:
                raise ValueError("the stream holds no examples for this process")
            self.epoch += 1
            self.taken = 0

    def __iter__(self) -> Iterator[list[Any]]:
        examples = self._examples()
        while True:
            batch: list[Any] = []
            pulled = 0
            while len(batch) < self.batch_size:
                record = self.to_record(*next(examples))
                pulled += 1
                if self.budget.observe(record):
                    batch.append(record)
                else:
                    self.budget.check(share=False)
                if pulled % self.batch_size == 0:
                    self.budget.check()
            self.budget.check()
            yield batch

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "taken": self.taken, "budget": self.budget.state_dict()}
        if not self.replay and self.taken:
            state["stream"] = self.stream.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.taken = int(state["taken"])
        self._resume_state = state.get("stream") if self.taken else None
        self.budget.load_state_dict(state["budget"])


# ---------------------------------------------------------------------------
# Opening a stream from a data: section
# ---------------------------------------------------------------------------

_BUILDERS = {
    ".parquet": "parquet",
    ".tar": "webdataset",
    ".tar.gz": "webdataset",
    ".tgz": "webdataset",
    ".jsonl": "json",
    ".json": "json",
    ".arrow": "arrow",
}


def open_stream(spec: Any, split: str = "train", cache_dir: str | None = None) -> tuple[Any, Path | None]:
    """The ``IterableDataset`` ``data.files.path`` names, and the folder relative image paths are in."""
    from datasets import load_dataset

    from segros.data import hf
    from segros.data.shards import expand, is_multi, is_url, suffix_of

    hf._quiet()
    names = expand(spec)
    if not is_multi(spec) and not is_url(names[0]):
        path = hf.local_source(names[0])
        if path is None:  # a hub id, streamed from the hub
            return hf.load_repo(names[0], split, cache_dir, streaming=True), None
        if path.is_dir():
            if hf.is_saved_dataset(path):
                ds = hf.load_saved(path, split)
                return ds.to_iterable_dataset(num_shards=min(len(ds), 64)), path
            from segros.data.formats import listed_files

            listed = listed_files(path)
            if not listed:
                if hf.is_repo_folder(path):
                    return hf.load_repo(str(path), split, cache_dir, streaming=True), path
                raise ValueError(
                    f"{path}: a folder of images with .txt captions cannot be streamed (it is read "
                    "by index; leave data.files.streaming off)"
                )
            names = [str(p) for p in listed]
    suffixes = {suffix_of(n) for n in names}
    builders = {_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise ValueError(
            f"cannot stream {spec}: expected Parquet, Arrow, tar (.tar, .tar.gz, .tgz) or JSON(L) "
            f"files of one kind, got suffixes {sorted(suffixes)}"
        )
    for n in names:
        if not is_url(n) and not Path(n).is_file():
            raise FileNotFoundError(f"data source not found: {n}")
    builder = builders.pop()
    files = {split: names}
    stream = load_dataset(builder, data_files=files, split=split, streaming=True, cache_dir=cache_dir)
    base = None if is_url(names[0]) else Path(names[0]).parent
    return stream, base


def image_text_stream(
    data: Any, seed: int, rank: int, world: int
) -> tuple[Any, Callable[[dict[str, Any], int, int], ImageTextRecord | BadRecord], bool]:
    """The stream of a ``data:`` section (its ``files``) for process ``rank`` of ``world`` (split,
    shuffled), the function making a record of one example, and whether resume must replay (a
    shuffle buffer)."""
    from datasets.distributed import split_dataset_by_node

    files = data.files
    stream, base = open_stream(files.path, files.split, files.hf_cache_dir)
    names = list(stream.column_names or (stream.features or {}).keys())
    where = str(files.path)
    image_column, caption_column = resolve_columns(names, files.image_column, files.caption_column, where)
    kept = [c for c in names if c in (image_column, caption_column, "__key__")]
    stream = undecoded(stream.select_columns(kept), image_column)
    if world > 1:
        if stream.num_shards % world:
            log.warning(
                "%d shards do not divide among %d processes: each process reads every shard and keeps "
                "every %d-th example",
                stream.num_shards,
                world,
                world,
            )
        stream = split_dataset_by_node(stream, rank=rank, world_size=world)
    buffer = files.shuffle_buffer if data.shuffle else 0
    if data.shuffle:
        stream = stream.shuffle(seed=seed, buffer_size=max(1, buffer))

    def to_record(example: dict[str, Any], epoch: int, n: int) -> ImageTextRecord | BadRecord:
        key = example.get("__key__") or f"{Path(str(files.path)).name}:epoch{epoch}:rank{rank}:{n}"
        return image_value_record(example.get(image_column), example.get(caption_column), str(key), base)

    return stream, to_record, buffer > 1


def streaming_batches(data: Any, seed: int, rank: int, world: int, budget: BadRecordBudget) -> StreamBatches:
    """The trainer's image-caption batches when ``data.files.streaming`` is on (see the module docstring)."""
    stream, to_record, replay = image_text_stream(data, seed, rank, world)
    return StreamBatches(stream, to_record, data.batch_size, budget, replay=replay)
