"""Two real processes (torchrun, CPU, gloo): both train, stay in sync, shard data, save and resume."""

import json
import os
import subprocess
import sys

import torch

from segros.data.sampling import ShardedOrder


def launch(tokenizer, out, max_steps, resume=False):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "segros.cli",
        "train",
        "--out",
        str(out),
        "--max-steps",
        str(max_steps),
        "--save-every",
        "2",
        f"model.image_tokenizer={tokenizer}",
        "model.image_size=32",
        "data.batch_size=4",
        "run.picture_every=0",
        "run.progress=off",
        "logging.tensorboard=false",
        "run.log_every=1",
        "data.workers=1",  # a loader worker per stream and process: positions saved are still exact
    ] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "train_summary.json").read_text())


def test_two_processes_train_in_sync_and_resume(small_tokenizer, tmp_path):
    summary = launch(small_tokenizer, tmp_path, max_steps=4)
    assert summary["processes"] == 2 and summary["params_in_sync"] is True and summary["step"] == 4
    step = tmp_path / "checkpoints/step-4"
    states = [torch.load(step / f"rank-{r}.pt", weights_only=True) for r in (0, 1)]
    # each process read its own shard: the indices consumed so far are disjoint
    consumed = []
    for rank, state in enumerate(states):
        order_state = state["t2i"]["order"]
        assert order_state["rank"] == rank and order_state["world_size"] == 2
        order = ShardedOrder(order_state["length"], order_state["seed"], order_state["shuffle"], rank, 2)
        assert order_state["epoch"] == 0
        consumed.append(set(order.epoch_indices(0)[: order_state["position"]]))
        assert len(consumed[-1]) == 4 * 4  # 4 steps of 4 records, no bad records in ShapesWorld
    assert not consumed[0] & consumed[1]
    # the two processes drew different plans: their generators are seeded per rank
    assert not torch.equal(states[0]["generator"], states[1]["generator"])

    resumed = launch(small_tokenizer, tmp_path, max_steps=6, resume=True)
    assert resumed["step"] == 6 and resumed["params_in_sync"] is True
    assert (tmp_path / "checkpoints/latest").read_text().strip() == "step-6"


def test_two_processes_train_showo_with_an_idle_projector_and_accumulation(tmp_path):
    """Show-o's CLIP variant under SFT without I2T leaves ``mm_projector`` unused by the loss:
    DDP (find_unused_parameters off) fails on the next step unless it still gets a gradient.
    Accumulation runs through accelerate's accumulate() across the two processes."""
    import yaml
    from showo_helpers import TINY_ARCH, TINY_CLIP, save_word_tokenizer

    tokenizer = save_word_tokenizer(tmp_path / "tokenizer")
    config = {
        "model": {
            "name": "showo",
            "init_from": None,
            "tokenizer": str(tokenizer),
            "arch": {**TINY_ARCH, "clip": TINY_CLIP},
            "image_size": 32,
            "max_text_len": 16,
            "hint_source": "clip",
        },
        "method": {"preset": "sft", "i2t_weight": 0.0},
        "data": {"source": "shapes", "batch_size": 2, "i2t": "none"},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "grad_accum": 2},
        "run": {"max_steps": 2, "save_every": 2, "picture_every": 0, "progress": False},
        "logging": {"tensorboard": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    config_file = str(tmp_path / "config.yaml")
    cmd = [*launcher, "-m", "segros.cli", "train", "--config", config_file, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 2 and summary["params_in_sync"] is True
    state = torch.load(out / "checkpoints/step-2/rank-0.pt", weights_only=True)
    assert state["t2i"]["order"]["position"] == 2 * 2 * 2  # 2 steps x 2 micro-batches x 2 records
