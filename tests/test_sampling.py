"""Bad-record budget, rank-sharded resumable order, and batching over real files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from _data_files import CORRUPT, pixels, png_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from segros.data.budget import BadRecordBudget, TooManyBadRecords
from segros.data.readers import BadRecord, JsonlImageText
from segros.data.sampling import RecordBatches, ShardedOrder

GOOD = object()  # anything that is not a BadRecord counts as good


def feed(budget: BadRecordBudget, good: int, bad: int, check: bool = True) -> None:
    for i in range(bad):
        budget.observe(BadRecord(f"img{i}.png", f"cannot decode image {i}"))
        if check:
            budget.check()
    for _ in range(good):
        budget.observe(GOOD)


# --------------------------------------------------------------------------- budget


def test_budget_raises_past_share_with_examples() -> None:
    budget = BadRecordBudget(max_share=0.01, min_seen=50)
    feed(budget, good=97, bad=3, check=False)
    with pytest.raises(TooManyBadRecords) as err:
        budget.check()
    message = str(err.value)
    assert "3 of 100" in message and "3.00%" in message and "1.00%" in message
    assert "img0.png: cannot decode image 0" in message and "img2.png" in message
    assert isinstance(err.value, ValueError)


def test_budget_tolerates_share_at_or_below_limit_and_before_min_seen() -> None:
    at_limit = BadRecordBudget(max_share=0.01, min_seen=50)
    feed(at_limit, good=99, bad=1)
    at_limit.check()  # 1% is allowed, only more is not
    early = BadRecordBudget(max_share=0.01, min_seen=50)
    feed(early, good=37, bad=3)
    early.check()  # 40 seen < min_seen
    feed(early, good=10, bad=0)
    with pytest.raises(TooManyBadRecords):
        early.check()  # 50 seen, 6%


def test_budget_fails_fast_when_everything_is_bad() -> None:
    budget = BadRecordBudget(max_share=1.0, min_seen=10_000)
    feed(budget, good=0, bad=19)  # checks after each, no raise yet
    with pytest.raises(TooManyBadRecords, match="all of the first 20"):
        feed(budget, good=0, bad=1)
    mixed = BadRecordBudget(max_share=1.0, min_seen=10_000)
    mixed.observe(GOOD)
    feed(mixed, good=0, bad=30)  # one good record first: not "entirely broken"


def test_budget_keeps_five_examples_logs_them_and_survives_resume(caplog) -> None:
    budget = BadRecordBudget(max_share=0.01, min_seen=100)
    with caplog.at_level(logging.WARNING, logger="segros.data.budget"):
        feed(budget, good=80, bad=8, check=False)
    assert len(budget.examples) == 5
    assert sum("skipping bad record img" in r.getMessage() for r in caplog.records) == 5
    assert budget.summary() == "skipped 8 bad records of 88 read (9.09%)"
    budget.check()  # 88 < min_seen

    resumed = BadRecordBudget(max_share=0.01, min_seen=100)
    resumed.load_state_dict(json.loads(json.dumps(budget.state_dict())))
    assert (resumed.seen, resumed.bad, resumed.examples) == (88, 8, budget.examples)
    feed(resumed, good=12, bad=0)
    with pytest.raises(TooManyBadRecords, match="8 of 100"):
        resumed.check()


# --------------------------------------------------------------------------- order


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 300),
    world_size=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 5),
    shuffle=st.booleans(),
)
def test_ranks_partition_an_epoch(length: int, world_size: int, seed: int, epoch: int, shuffle: bool) -> None:
    if length < world_size:
        with pytest.raises(ValueError):
            ShardedOrder(length, world_size=world_size)
        return
    shards = [
        ShardedOrder(length, seed=seed, shuffle=shuffle, rank=r, world_size=world_size).epoch_indices(epoch)
        for r in range(world_size)
    ]
    assert len({len(s) for s in shards}) == 1  # lockstep
    union = [i for s in shards for i in s]
    assert len(union) == len(set(union))  # no duplicates across ranks
    assert set(union) <= set(range(length))
    assert length - len(union) < world_size  # trimmed at most world_size - 1


def test_order_is_deterministic_and_reshuffles_per_epoch() -> None:
    a = ShardedOrder(50, seed=7)
    assert a.epoch_indices(0) == ShardedOrder(50, seed=7).epoch_indices(0)
    assert a.epoch_indices(0) != ShardedOrder(50, seed=8).epoch_indices(0)
    assert a.epoch_indices(0) != a.epoch_indices(1)
    assert sorted(a.epoch_indices(1)) == list(range(50))
    assert ShardedOrder(10, shuffle=False, rank=1, world_size=3).epoch_indices(4) == [1, 4, 7]


def take(iterator, n: int) -> list:
    return [next(iterator) for _ in range(n)]


def test_order_resumes_exactly_across_epochs() -> None:
    length, world_size = 23, 2  # 11 per rank, one item trimmed each epoch
    full = take(iter(ShardedOrder(length, seed=3, rank=1, world_size=world_size)), 40)
    assert full[:11] == ShardedOrder(length, seed=3, rank=1, world_size=2).epoch_indices(0)
    for k in (0, 1, 10, 11, 12, 30):
        before = ShardedOrder(length, seed=3, rank=1, world_size=world_size)
        assert take(iter(before), k) == full[:k]
        state = json.loads(json.dumps(before.state_dict()))
        after = ShardedOrder(length, seed=3, rank=1, world_size=world_size)
        after.load_state_dict(state)
        assert take(iter(after), 40 - k) == full[k:], k


def test_order_refuses_a_state_from_another_setup() -> None:
    state = ShardedOrder(20, seed=1, rank=0, world_size=2).state_dict()
    for other in (
        ShardedOrder(20, seed=1, rank=0, world_size=4),
        ShardedOrder(21, seed=1, rank=0, world_size=2),
        ShardedOrder(20, seed=2, rank=0, world_size=2),
        ShardedOrder(20, seed=1, rank=1, world_size=2),
    ):
        with pytest.raises(ValueError, match="cannot resume exactly"):
            other.load_state_dict(state)


# --------------------------------------------------------------------------- batches over real files


def jsonl_dataset(tmp_path: Path, n: int, bad: set[int]) -> JsonlImageText:
    """n records; those in ``bad`` have corrupt images (odd) or empty captions (even)."""
    lines = []
    for i in range(n):
        name = f"{i:03d}.png"
        (tmp_path / name).write_bytes(CORRUPT if i in bad and i % 2 else png_bytes(pixels(i, (2, 2))))
        caption = "" if i in bad and i % 2 == 0 else f"caption {i}"
        lines.append(json.dumps({"image": name, "caption": caption}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    return JsonlImageText(tmp_path / "m.jsonl")


def captions(batch: list) -> list[str]:
    return [r.caption for r in batch]


def test_batches_skip_bad_records_and_resume_exactly(tmp_path: Path) -> None:
    bad = {2, 3, 11, 20, 21, 22, 35}
    ds = jsonl_dataset(tmp_path, 40, bad)

    def stream() -> RecordBatches:
        budget = BadRecordBudget(max_share=0.5, min_seen=10)
        return RecordBatches(ds, ShardedOrder(len(ds), seed=5), batch_size=4, budget=budget)

    reference = stream()
    it = iter(reference)
    full = [captions(next(it)) for _ in range(20)]  # 80 good records: 33 + 33 + 14 over three epochs
    assert all(len(b) == 4 for b in full)
    flat = [c for b in full for c in b]
    assert sorted(flat[:33]) == sorted(f"caption {i}" for i in range(40) if i not in bad)  # each once
    assert reference.order.epoch == 2
    assert (
        reference.budget.bad
        == 2 * len(bad)
        + sum(  # two full epochs, then part of a third
            ds[i].__class__ is BadRecord for i in reference.order.epoch_indices(2)[: reference.order.position]
        )
    )

    for k in (1, 3, 8, 13):
        before = stream()
        it = iter(before)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(before.state_dict()))
        after = stream()
        after.load_state_dict(state)
        assert after.budget.bad == before.budget.bad
        resumed = iter(after)
        assert [captions(next(resumed)) for _ in range(20 - k)] == full[k:], k


def test_batches_on_two_ranks_do_not_overlap(tmp_path: Path) -> None:
    ds = jsonl_dataset(tmp_path, 30, bad={7})
    seen = []
    for rank in range(2):
        order = ShardedOrder(len(ds), seed=0, rank=rank, world_size=2)
        it = iter(RecordBatches(ds, order, batch_size=7, budget=BadRecordBudget(max_share=0.5, min_seen=5)))
        seen.append([r.key for b in (next(it), next(it)) for r in b])  # 14 of this rank's 15 indices
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 28 and "m.jsonl:8 (007.png)" not in seen[0] + seen[1]


def test_batches_stop_on_a_broken_dataset_naming_examples(tmp_path: Path) -> None:
    ds = jsonl_dataset(tmp_path, 60, bad=set(range(1, 60, 2)))  # half the images are corrupt
    stream = RecordBatches(ds, ShardedOrder(len(ds)), batch_size=4, budget=BadRecordBudget(min_seen=20))
    with pytest.raises(TooManyBadRecords, match=r"m\.jsonl:\d+ \(\d+\.png\): cannot decode"):
        for _, _ in zip(range(100), stream, strict=False):  # bounded: a missing check must fail, not hang
            pass
