"""Batches read and collated in DataLoader workers (segros.data.loader) equal the in-process ones,
resume exactly from what was consumed, and count every bad record once; the trainer with
``data.workers=2`` trains, logs its wait for data, and resumes exactly."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import pytest
import torch
from _data_files import CORRUPT, png_bytes
from train_helpers import tiny_config

from segros.backbones.base import T2IBatch
from segros.backbones.registry import backbone_class, build_backbone
from segros.data.budget import BadRecordBudget, TooManyBadRecords
from segros.data.loader import InProcessBatches, WorkerBatches, collated_batches
from segros.data.readers import JsonlImageText
from segros.data.sampling import RecordBatches, ShardedOrder
from segros.train.loop import train

WORDS = ["a red circle", "two blue squares left of a green star", "a cross", "a large yellow diamond above"]


def write_dataset(folder: Path, n: int, bad: set[int]) -> Path:
    """A JSONL manifest of n 20 x 12 PNGs with captions of varied length; ``bad`` ones corrupt
    (odd) or without caption (even)."""
    lines = []
    for i in range(n):
        rgb = torch.full((12, 20, 3), 0, dtype=torch.uint8)
        rgb[..., 0], rgb[: i % 12, :, 1] = 9 * i % 256, 200
        (folder / f"{i:03d}.png").write_bytes(CORRUPT if i in bad and i % 2 else png_bytes(rgb.numpy()))
        caption = "" if i in bad and i % 2 == 0 else WORDS[i % 4] + f" {i}"
        lines.append(json.dumps({"image": f"{i:03d}.png", "caption": caption}))
    (folder / "m.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "m.jsonl"


@pytest.fixture(scope="module")
def tiny(small_tokenizer):
    options = backbone_class("tiny").Options(image_tokenizer=str(small_tokenizer), image_size=32)
    return build_backbone(options)


BAD = {2, 3, 11, 20, 21, 22, 35}


def records(path: Path, batch_size: int = 4, rank: int = 0, world: int = 2, max_share: float = 0.5):
    ds = JsonlImageText(path)
    budget = BadRecordBudget(max_share=max_share, min_seen=10)
    return RecordBatches(ds, ShardedOrder(len(ds), 5, True, rank, world), batch_size, budget)


def workers(path: Path, backbone, n: int = 2, **kw) -> WorkerBatches:
    cat = partial(T2IBatch.cat, pad_id=backbone.pad_id)
    return WorkerBatches(records(path, **kw), backbone.collate_t2i, cat, workers=n, prefetch=2)


def comparable(state: dict) -> dict:
    """A stream's state with the bad records' reasons cut to their first words (PIL names the
    BytesIO object it failed on by its memory address)."""
    state = json.loads(json.dumps(state))
    state["budget"]["examples"] = [[key, reason.split(":")[0]] for key, reason in state["budget"]["examples"]]
    return state


def equal(a: T2IBatch, b: T2IBatch) -> bool:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def test_worker_batches_equal_the_in_process_ones_and_resume_from_what_was_consumed(tmp_path, tiny):
    path = write_dataset(tmp_path, 60, BAD)
    # 30 indices per rank, 4 or 5 of them bad: 12 batches of 4 run into a third epoch
    reference = InProcessBatches(records(path), tiny.collate_t2i)
    it = iter(reference)
    want = [next(it) for _ in range(12)]
    assert any(len(set(b.text_mask.sum(1).tolist())) > 1 for b in want)  # padding differs in a batch
    loaded = workers(path, tiny)
    got_it = iter(loaded)
    for k, batch in enumerate(want):
        assert equal(next(got_it), batch), k
    # the budget counted every bad record read so far once, as the in-process stream did
    assert comparable(loaded.state_dict()) == comparable(reference.state_dict())
    assert loaded.records.budget.bad_records == reference.records.budget.bad_records > 0
    loaded.close()

    for k in (1, 5):  # stop after k batches (the workers have read ahead), resume from the state
        before = workers(path, tiny)
        first = iter(before)
        for _ in range(k):
            next(first)
        state = comparable(before.state_dict())
        plain = records(path)
        plain_it = iter(plain)
        for _ in range(k):
            next(plain_it)
        assert state == comparable(plain.state_dict()), k  # what was consumed, not what was read ahead
        before.close()
        after = workers(path, tiny, n=1)
        after.load_state_dict(state)
        resumed = iter(after)
        for j in range(k, 12):
            assert equal(next(resumed), want[j]), (k, j)
        after.close()


def test_worker_batches_shard_ranks_without_duplication(tmp_path, tiny):
    path = write_dataset(tmp_path, 40, {7})
    captions = []
    for rank in range(2):
        loaded = workers(path, tiny, rank=rank, batch_size=6)
        it = iter(loaded)
        captions.append([c for _ in range(3) for c in next(it).captions])  # 18 of 20 indices
        loaded.close()
    assert not set(captions[0]) & set(captions[1]) and len(set(captions[0]) | set(captions[1])) == 36


def test_too_many_bad_records_stop_a_worker_stream_naming_them(tmp_path, tiny):
    path = write_dataset(tmp_path, 60, set(range(1, 60, 2)))
    loaded = workers(path, tiny, max_share=0.01)
    with pytest.raises(TooManyBadRecords, match=r"m\.jsonl:\d+ \(\d+\.png\): cannot decode"):
        for _, _ in zip(range(50), loaded, strict=False):
            pass
    loaded.close()


def test_a_stream_that_is_not_map_style_is_collated_in_the_main_process(tmp_path, tiny):
    class Stream:  # the interface of RecordBatches, over an iterable source
        def __init__(self, source):
            self.source = source

        def __iter__(self):
            while True:
                yield [next(self.source) for _ in range(2)]

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    ds = JsonlImageText(write_dataset(tmp_path, 6, set()))
    batches = collated_batches(Stream(iter(ds[i] for i in range(6))), tiny.collate_t2i, None, 2, 2)
    assert isinstance(batches, InProcessBatches)
    assert next(iter(batches)).captions == [ds[0].caption, ds[1].caption]


def test_the_trainer_with_workers_resumes_exactly_and_logs_its_wait(small_tokenizer, tmp_path):
    """data.workers=2 on files with bad records: the losses of workers=0, and stop at step 3 +
    resume gives the straight run's losses and bad-record count."""
    data = tmp_path / "data"
    data.mkdir()
    path = write_dataset(data, 48, {5, 6, 17, 30})
    common = ["data.source=files", f"data.files.path={path}", "data.i2t=none", "data.max_bad_share=0.2",
              "data.batch_size=8", "run.save_every=3", "optim.schedule_steps=6",
              "run.max_steps=6"]  # fmt: skip
    straight = train(tiny_config(small_tokenizer, *common, "data.workers=2"), tmp_path / "w2")
    plain = train(tiny_config(small_tokenizer, *common, "data.workers=0"), tmp_path / "w0")
    assert straight.losses == plain.losses and straight.bad_records == plain.bad_records == 4
    first = train(tiny_config(small_tokenizer, *common, "run.max_steps=3", "data.workers=2"), tmp_path / "r")
    second = train(tiny_config(small_tokenizer, *common, "data.workers=2"), tmp_path / "r", resume=True)
    assert first.losses + second.losses == straight.losses
    assert second.bad_records == straight.bad_records
    summary = json.loads((tmp_path / "w2/train_summary.json").read_text())
    assert 0.0 <= summary["data_wait_share"] < 1.0 and summary["data_workers"] == 2


def test_workers_and_prefetch_are_validated():
    from segros.train.config import ConfigError, load_config

    assert load_config(None, ["data.workers=3", "data.prefetch=4"]).data.workers == 3
    assert load_config(None, []).data.workers is None  # the machine's default (segros.data.loader)
    for bad in ("data.workers=-1", "data.prefetch=0", "data.workers=two"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            load_config(None, [bad])


def test_large_chunks_cross_through_shared_memory_and_give_the_same_batches(tmp_path, tiny, monkeypatch):
    """Chunks above loader.SMALL_CHUNK bytes cross as tensors (shared memory), smaller ones as one
    pickled string: the batches are the same either way."""
    import segros.data.loader as loader

    path = write_dataset(tmp_path, 30, {4})
    want = [b for b, _ in zip(InProcessBatches(records(path), tiny.collate_t2i), range(5), strict=False)]
    monkeypatch.setattr(loader, "SMALL_CHUNK", 0)  # the workers fork after this: every chunk is "large"
    loaded = workers(path, tiny)
    got = [b for b, _ in zip(loaded, range(5), strict=False)]
    loaded.close()
    assert all(equal(a, b) for a, b in zip(got, want, strict=True))
    assert loader._CollateChunk(tiny.collate_t2i)([(0, JsonlImageText(path)[0])]).__class__ is loader._Chunk
