"""SIGTERM (a scheduler's warning before it preempts a job) and Ctrl-C stop training at a step
boundary with a checkpoint, and ``--resume`` from it repeats the uninterrupted run exactly."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_run_lock import PY, _env, start_training, tiny_args
from train_helpers import tiny_config

from segros.train import checkpoint as ckpt
from segros.train import stopping
from segros.train.loop import RunStoppedError, Trainer, train, train_to_end

# a constant learning rate after warm-up, so a run's updates do not depend on its max_steps
CONSTANT = ("optim.schedule=constant", "run.log_every=1")


def max_abs_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def signal_at_step(trainer: Trainer, step: int, sig: signal.Signals, times: int = 1, pause: float = 0):
    """Send ``sig`` to this process ``times`` times, ``pause`` seconds apart, as optimizer step
    ``step`` begins."""
    original = trainer.train_step

    def train_step():
        if trainer.step + 1 == step:
            for i in range(times):
                time.sleep(pause if i else 0)
                os.kill(os.getpid(), sig)
        return original()

    trainer.train_step = train_step


def test_sigterm_in_process_saves_returns_and_restores_the_handlers(small_tokenizer, tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    trainer = Trainer(tiny_config(small_tokenizer, "run.max_steps=6", "run.save_every=4"), tmp_path)
    signal_at_step(trainer, 2, signal.SIGTERM)
    result = trainer.run()
    assert result.stopped_by == "SIGTERM" and result.step == 2 and len(result.losses) == 2
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints/step-2"
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == 2
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

    # the next run is not stopped by the old request, and train_to_end refuses a stopped run
    result = train(tiny_config(small_tokenizer, "run.max_steps=3", "run.save_every=4"), tmp_path, resume=True)
    assert result.stopped_by is None and result.step == 3
    trainer_cfg = tiny_config(small_tokenizer, "run.max_steps=6", "run.save_every=4")
    original_run = Trainer.run

    def stopped_run(self):
        signal_at_step(self, 5, signal.SIGTERM)
        return original_run(self)

    Trainer.run = stopped_run
    try:
        with pytest.raises(RunStoppedError, match=r"stopped by SIGTERM after step 5 of 6.*step-5") as stopped:
            train_to_end(trainer_cfg, tmp_path)
    finally:
        Trainer.run = original_run
    assert stopped.value.exit_code == 143


def test_ctrl_c_stops_with_a_checkpoint_and_a_second_one_at_once(small_tokenizer, tmp_path):
    # the handler the run must restore: Python's default, or SIG_IGN where the test process was
    # started in the background of a shell without job control (as some CI launchers do)
    before = signal.getsignal(signal.SIGINT)
    cfg = tiny_config(small_tokenizer, "run.max_steps=6", "run.save_every=6")
    trainer = Trainer(cfg, tmp_path / "once")
    signal_at_step(trainer, 3, signal.SIGINT, times=2)  # one Ctrl-C delivered twice (torchrun)
    result = trainer.run()
    assert result.stopped_by == "SIGINT" and result.step == 3
    assert ckpt.latest_checkpoint(tmp_path / "once").name == "step-3"

    trainer = Trainer(cfg, tmp_path / "twice")
    signal_at_step(trainer, 3, signal.SIGINT, times=2, pause=stopping.REPEAT_AFTER + 0.1)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert ckpt.latest_checkpoint(tmp_path / "twice") is None
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_to_segros_train_leaves_a_checkpoint_that_resumes_exactly(small_tokenizer, tmp_path):
    out, straight = tmp_path / "stopped", tmp_path / "straight"
    args = ["--out", str(out), "--max-steps", "2000", "--save-every", "1000"]
    proc = start_training([*args, *tiny_args(small_tokenizer, *CONSTANT)])
    time.sleep(0.5)  # some steps in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    pattern = r"segros train: stopped by SIGTERM after step (\d+); checkpoint (\S+); continue with: (.*)"
    found = re.fullmatch(pattern, last)
    assert found, last
    k = int(found.group(1))
    assert 0 < k < 2000 and Path(found.group(2)) == out / f"checkpoints/step-{k}"
    assert ckpt.latest_checkpoint(out) == out / f"checkpoints/step-{k}"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == k

    # the printed command continues the run (to two steps further here)
    resume = shlex.split(found.group(3))
    assert resume[:2] == ["segros", "train"] and resume[-1] == "--resume"
    resume[resume.index("--max-steps") + 1] = str(k + 2)
    done = subprocess.run([*PY, *resume[1:]], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    args = ["--out", str(straight), "--max-steps", str(k + 2), "--save-every", "1000"]
    done = subprocess.run(
        [*PY, "train", *args, *tiny_args(small_tokenizer, *CONSTANT)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    diff = max_abs_diff(out / f"checkpoints/step-{k + 2}", straight / f"checkpoints/step-{k + 2}")
    print(f"stopped at step {k}, resumed to {k + 2}: max abs weight difference to a straight run {diff}")
    assert diff == 0.0
    resumed = json.loads((out / "train_summary.json").read_text())
    assert resumed["stopped_by"] is None
    assert resumed["final_loss"] == json.loads((straight / "train_summary.json").read_text())["final_loss"]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rank(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in environ if e.startswith(b"RANK=")).split(b"=", 1)[1])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks' processes in /proc")
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(small_tokenizer, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "segros.cli", "train", "--out", str(out), "--max-steps", "2000", "--save-every", "1000",
        *tiny_args(small_tokenizer, *CONSTANT),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_env())
    started, seen = 0, []
    for line in proc.stderr:
        seen.append(line)
        started += "training steps" in line
        if started == 2:
            break
    assert started == 2, "".join(seen[-30:])
    time.sleep(0.5)
    ranks = {_rank(pid): pid for pid in _children(proc.pid)}
    os.kill(ranks[1], signal.SIGTERM)  # rank 0 gets no signal: it learns of it by the all-reduce
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("segros train: stopped by SIGTERM")]
    assert len(lines) == 1, err[-3000:]  # one line, from rank 0
    k = int(re.search(r"after step (\d+)", lines[0]).group(1))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == k and summary["params_in_sync"] is True
    assert [s for s, _ in ckpt.complete_checkpoints(out)] == [k]
    print(f"two processes, rank 1 sent SIGTERM: both stopped after step {k}")
    states = [torch.load(out / f"checkpoints/step-{k}/rank-{r}.pt", weights_only=True) for r in (0, 1)]
    positions = [s["t2i"]["order"]["position"] for s in states]
    assert positions == [4 * k, 4 * k]  # both ranks consumed k steps of 4 records
