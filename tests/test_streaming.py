"""Streamed sources (``data.files.streaming``): sharded without duplication, exact resume, the budget,
and through the trainer the same losses after a resume as in one straight run."""

from __future__ import annotations

import io
import math
import tarfile
import types
from pathlib import Path

import pytest
from _data_files import CORRUPT, png_bytes
from paper_data import picture
from train_helpers import tiny_config

from segros.data.budget import BadRecordBudget, TooManyBadRecords
from segros.data.streaming import streaming_batches
from segros.train.loop import train

SHARDS, PER_SHARD = 4, 5


def write_shards(folder: Path, suffix: str = ".tar.gz", bad: int = 0) -> str:
    """Four WebDataset shards of five png + txt samples (``bad`` of them undecodable); their
    brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if suffix != ".tar" else "w"
    for s in range(SHARDS):
        with tarfile.open(folder / f"shard-{s:03d}{suffix}", mode) as tar:
            for k in range(PER_SHARD):
                n = s * PER_SHARD + k
                image = CORRUPT if n < bad else png_bytes(picture(n, (16, 16)))
                for ext, data in (("png", image), ("txt", f"caption {n}".encode())):
                    info = tarfile.TarInfo(f"{n:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return f"{folder}/shard-{{000..{SHARDS - 1:03d}}}{suffix}"


def data_section(path: str, buffer: int, batch_size: int = 3, shuffle: bool = True):
    files = types.SimpleNamespace(
        path=path, split="train", hf_cache_dir=None, image_column="image", caption_column="caption",
        shuffle_buffer=buffer,
    )  # fmt: skip
    return types.SimpleNamespace(files=files, shuffle=shuffle, batch_size=batch_size)


def captions(data, n: int, rank: int = 0, world: int = 1, state=None):
    batches = streaming_batches(data, 7, rank, world, BadRecordBudget())
    if state is not None:
        batches.load_state_dict(state)
    it = iter(batches)
    out = [[r.caption for r in next(it)] for _ in range(n)]
    return out, batches.state_dict()


@pytest.mark.parametrize("buffer", [0, 8])
def test_resume_gives_the_batches_of_a_straight_run(tmp_path: Path, buffer: int) -> None:
    """Across an epoch boundary (20 examples, 3 per batch), with and without a shuffle buffer."""
    data = data_section(write_shards(tmp_path), buffer)
    straight, _ = captions(data, 10)
    first, state = captions(data, 4)
    rest, _ = captions(data, 6, state=state)
    assert first + rest == straight
    epoch = [c for batch in straight for c in batch][: SHARDS * PER_SHARD]
    assert sorted(epoch) == sorted(f"caption {n}" for n in range(20))  # each example once per epoch
    assert epoch != [f"caption {n}" for n in range(20)]  # shuffled
    assert ("stream" in state) == (buffer == 0)  # datasets' own position only without a buffer


def test_two_processes_share_the_shards_without_duplication(tmp_path: Path) -> None:
    data = data_section(write_shards(tmp_path, ".tar"), 4, batch_size=2)
    per_rank = [captions(data, 5, rank=r, world=2)[0] for r in range(2)]
    seen = [{c for batch in batches for c in batch} for batches in per_rank]
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 20


def test_a_tgz_shard_streams_and_a_streamed_source_cannot_be_read_by_index(tmp_path: Path) -> None:
    from segros.data.sources import t2i_source
    from segros.train.config import load_config

    pattern = write_shards(tmp_path, ".tgz")
    first = next(iter(streaming_batches(data_section(pattern, 0, shuffle=False), 0, 0, 1, BadRecordBudget())))
    assert [r.caption for r in first] == ["caption 0", "caption 1", "caption 2"]
    cfg = load_config(None, ["data.source=files", f"data.files.path={pattern}", "data.files.streaming=true"])
    with pytest.raises(ValueError, match="segros cache needs them"):
        t2i_source(cfg.data, None)


def test_bad_streamed_records_are_skipped_and_counted(tmp_path: Path) -> None:
    data = data_section(write_shards(tmp_path, bad=1), 0, shuffle=False)
    batches = streaming_batches(data, 0, 0, 1, BadRecordBudget(max_share=0.5))
    first = next(iter(batches))
    assert [r.caption for r in first] == ["caption 1", "caption 2", "caption 3"]
    assert batches.budget.bad == 1
    all_bad = data_section(write_shards(tmp_path / "bad", bad=20), 0)
    with pytest.raises(TooManyBadRecords, match="all of the first"):
        next(iter(streaming_batches(all_bad, 0, 0, 1, BadRecordBudget())))


@pytest.mark.parametrize("buffer", [0, 6])
def test_the_trainer_resumes_a_streamed_run_exactly(small_tokenizer, tmp_path: Path, buffer: int) -> None:
    """Through the checkpoint (torch.save, read back with weights_only) in both resume modes."""
    path = write_shards(tmp_path / "shards", bad=1)
    common = (
        "data.source=files", f"data.files.path={path}", "data.files.streaming=true",
        f"data.files.shuffle_buffer={buffer}",
        "data.i2t=none", "run.save_every=3", "optim.schedule_steps=6",
    )  # fmt: skip
    full = train(tiny_config(small_tokenizer, "run.max_steps=6", *common), tmp_path / "full")
    first = train(tiny_config(small_tokenizer, "run.max_steps=3", *common), tmp_path / "split")
    second = train(tiny_config(small_tokenizer, "run.max_steps=6", *common), tmp_path / "split", resume=True)
    assert first.losses + second.losses == full.losses  # float for float
    assert len(full.losses) == 6 and all(math.isfinite(x) for x in full.losses)
    assert full.bad_records >= 1  # the corrupt sample was read (24 reads > 20) and skipped


def test_two_processes_stream_half_the_shards_each(small_tokenizer, tmp_path: Path) -> None:
    """torchrun, two CPU processes: 4 shards of 5 split 2 + 2, so after 4 steps of 4 records each
    process is 6 records into its second 10-record epoch; both stay in sync."""
    import json
    import os
    import subprocess
    import sys

    import torch

    path = write_shards(tmp_path / "shards", ".tar")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "segros.cli", "train", "--out", str(tmp_path / "run"), "--max-steps", "4",
        f"model.image_tokenizer={small_tokenizer}", "model.image_size=32", "data.batch_size=4",
        "data.source=files", f"data.files.path={path}", "data.files.streaming=true",
        "data.files.shuffle_buffer=0",
        "data.i2t=none", "run.picture_every=0", "run.progress=off", "logging.tensorboard=false",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run/train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["params_in_sync"] is True and summary["step"] == 4
    for rank in (0, 1):
        state = torch.load(tmp_path / f"run/checkpoints/step-4/rank-{rank}.pt", weights_only=True)["t2i"]
        assert (state["epoch"], state["taken"]) == (1, 6)
        assert "stream" in state  # datasets' own position (no buffer), saved and read back safely
