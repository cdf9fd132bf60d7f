"""One run per folder (segros.runlock): real second processes, real kills, real lock files."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import tiny_config

import segros
from segros import runlock
from segros.runlock import FolderInUseError, lock_folder
from segros.train import checkpoint as ckpt
from segros.train.loop import Trainer, train

SRC = Path(segros.__file__).resolve().parents[1]  # the segros under test, for subprocesses
PY = [sys.executable, "-m", "segros.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def tiny_args(tokenizer: Path, *overrides: str) -> list[str]:
    """``segros train`` arguments for the tiny 32 px model (as ``train_helpers.tiny_config``)."""
    return [
        f"model.image_tokenizer={tokenizer}",
        "model.image_size=32",
        "data.batch_size=4",
        "run.picture_every=0",
        "run.progress=off",
        "logging.tensorboard=false",
        "optim.warmup_steps=2",
        *overrides,
    ]


def start_training(args: list[str]) -> subprocess.Popen:
    """``segros train ARGS`` in the background, returned once it is training (its first log line
    after the lock and the signal handlers are in place)."""
    proc = subprocess.Popen([*PY, "train", *args], stderr=subprocess.PIPE, text=True, env=_env())
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "training steps" in line:
            return proc
    proc.wait()
    raise AssertionError("the run never started training:\n" + "".join(seen[-20:]))


def hold_in_another_process(folder: Path) -> subprocess.Popen:
    """A real process that takes the lock on ``folder`` and sleeps, returned once it holds it."""
    code = (
        "import sys, time; from segros.runlock import lock_folder; "
        "held = lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(120)"
    )
    cmd = [sys.executable, "-c", code, str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_train_on_the_folder_refuses_and_the_first_finishes_intact(small_tokenizer, tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--max-steps", "12", "--save-every", "4", *tiny_args(small_tokenizer)]
    first = start_training(args)
    os.kill(first.pid, signal.SIGSTOP)  # held mid-run while the second one tries
    try:
        config_before = (out / "config.yaml").read_text()
        second = subprocess.run(
            [*PY, "train", "--out", str(out), "--max-steps", "3", *tiny_args(small_tokenizer, "run.seed=7")],
            capture_output=True, text=True, env=_env(), timeout=300,
        )  # fmt: skip
    finally:
        os.kill(first.pid, signal.SIGCONT)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert lines[-1].startswith(f"segros train: error: {out} is in use by pid {first.pid} on host ")
    assert "segros.cli train --out" in lines[-1] and "--max-steps 12" in lines[-1]  # the holder's command
    assert not any("segros train" in line for line in lines[:-1])  # one line
    assert (out / "config.yaml").read_text() == config_before  # the refused run wrote nothing

    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    latest = ckpt.latest_checkpoint(out)
    assert latest == out / "checkpoints/step-12" and ckpt.is_complete(latest)
    assert [s for s, _ in ckpt.complete_checkpoints(out)] == [4, 8, 12]
    assert json.loads((out / "train_summary.json").read_text())["step"] == 12
    assert (out / runlock.LOCK_FILE).read_text() == ""  # released: the record is emptied


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(small_tokenizer, tmp_path, caplog):
    out = tmp_path / "run"
    holder = hold_in_another_process(out)
    with pytest.raises(FolderInUseError, match=f"in use by pid {holder.pid}"):
        train(tiny_config(small_tokenizer, "run.max_steps=1"), out)
    assert not (out / "config.yaml").exists()
    holder.kill()  # SIGKILL: no release, the record stays, the kernel drops the flock
    holder.wait()
    assert json.loads((out / runlock.LOCK_FILE).read_text())["pid"] == holder.pid

    with caplog.at_level(logging.WARNING, logger="segros.runlock"):
        result = train(tiny_config(small_tokenizer, "run.max_steps=2", "run.save_every=2"), out)
    assert result.step == 2
    assert any(f"taking over the lock left by pid {holder.pid}" in r.getMessage() for r in caplog.records)
    assert (out / runlock.LOCK_FILE).read_text() == ""


def test_a_trainer_that_fails_to_build_leaves_the_folder_free(small_tokenizer, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Trainer(tiny_config(small_tokenizer), tmp_path, resume=True)
    with caplog.at_level(logging.WARNING, logger="segros.runlock"), lock_folder(tmp_path):
        pass
    assert not caplog.records  # released, not left for a takeover


def test_a_trainer_built_but_never_run_holds_the_folder_until_it_is_dropped(small_tokenizer, tmp_path):
    cfg = tiny_config(small_tokenizer, "run.max_steps=1")
    gc.disable()  # a Trainer is kept in reference cycles: only a collection frees it
    try:
        first = Trainer(cfg, tmp_path)
        with pytest.raises(FolderInUseError, match=f"in use by pid {os.getpid()}"):
            Trainer(cfg, tmp_path)
        del first
        assert Trainer(cfg, tmp_path).run().step == 1  # the dropped one is collected, the lock freed
    finally:
        gc.enable()


def test_two_locks_in_one_process_conflict_and_keys_are_independent(tmp_path):
    with lock_folder(tmp_path):
        with pytest.raises(FolderInUseError, match=f"in use by pid {os.getpid()}"):
            lock_folder(tmp_path)
        with lock_folder(tmp_path, key="seed0"), pytest.raises(FolderInUseError, match=r"\(seed0\)"):
            lock_folder(tmp_path, key="seed0")
    with lock_folder(tmp_path) as again:
        assert again.held
    assert not again.held


@pytest.mark.parametrize("holder", ["alive", "dead", "other host"])
def test_without_working_locks_the_record_decides(tmp_path, monkeypatch, caplog, holder):
    """A file system without flock (Lustre without -o flock): the holder's pid on this host."""
    monkeypatch.setattr(runlock, "fcntl", None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = runlock.holder_record(["segros", "train"])
    record["pid"] = {"alive": os.getppid(), "dead": dead.pid, "other host": os.getppid()}[holder]
    if holder == "other host":
        record["host"] = "elsewhere"
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps(record))
    if holder == "dead":
        with caplog.at_level(logging.WARNING, logger="segros.runlock"), lock_folder(tmp_path):
            assert json.loads((tmp_path / runlock.LOCK_FILE).read_text())["pid"] == os.getpid()
        assert f"taking over the lock left by pid {dead.pid}" in caplog.text
    else:
        with pytest.raises(FolderInUseError, match=f"pid {record['pid']}.*if that run is gone, delete"):
            lock_folder(tmp_path)


def test_segros_cache_locks_its_folder(small_tokenizer, tmp_path):
    out = tmp_path / "cache"
    holder = hold_in_another_process(out)
    try:
        done = subprocess.run(
            [*PY, "cache", "--out", str(out), *tiny_args(small_tokenizer, "data.shapes.scenes=8")],
            capture_output=True, text=True, env=_env(), timeout=300,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"segros cache: error: {out} is in use by pid {holder.pid}")
    assert not (out / "index.json").exists()


def test_demo_locks_its_seeds_and_waits_for_shared_training_data(tmp_path):
    from segros.apps import demo

    work = tmp_path / "demo" / "quick"
    with lock_folder(work, key="seed1"), pytest.raises(FolderInUseError, match=r"quick \(seed1\) is in use"):
        demo.run_demo(tmp_path / "demo", quick=True, seeds=2, cache=tmp_path / "cache")
    # the lock on a training set is waited for, not refused; the set is then written once
    world = {"image_size": 32, "layout": "free", "cells": 4}
    folder = demo.training_set(tmp_path / "cache", 4, world)
    assert len((folder / "data.jsonl").read_text().splitlines()) == 4


def test_under_torchrun_a_refusal_ends_every_rank(small_tokenizer, tmp_path):
    out = tmp_path / "run"
    holder = hold_in_another_process(out)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "segros.cli", "train", "--out", str(out), "--max-steps", "2", *tiny_args(small_tokenizer),
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)  # no rank hangs
    finally:
        holder.kill()
        holder.wait()
    ours = [line for line in done.stderr.splitlines() if line.startswith("segros train:")]
    assert len(ours) == 1 and ours[0].startswith(f"segros train: error: {out} is in use by pid {holder.pid}")
    assert done.returncode != 0
    # torchrun's report: a rank exited 1 (refused); the other exited 1 too, or was ended by torchrun's
    # own SIGTERM (-15) when it lost the race with the launcher's teardown, never anything else
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", done.stderr)
    assert "1" in codes and set(codes) <= {"1", "-15"}, codes
    assert not (out / "config.yaml").exists()
