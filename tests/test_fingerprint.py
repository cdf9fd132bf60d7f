"""The end-of-run weight check (segros.train.fingerprint, Trainer.params_in_sync): it finds one
differing weight, across two real processes too, and costs no copy of the model."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from segros.train import fingerprint as fp


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


def test_equal_models_agree_and_one_nudged_weight_is_named():
    a, b = _model(), _model()
    names, da = fp.fingerprint(a)
    assert torch.equal(da, fp.fingerprint(b)[1])
    with torch.no_grad():  # the smallest float32 step on one element of one tensor
        w = b[2].weight
        w[1, 7] = torch.nextafter(w[1, 7], torch.tensor(float("inf")))
    db = fp.fingerprint(b)[1]
    assert [n for n, x, y in zip(names, da, db, strict=True) if x != y] == ["2.weight"]


def test_digest_reads_dtype_shape_and_order():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert fp.tensor_digest(t) == fp.tensor_digest(t.clone())
    assert fp.tensor_digest(t) != fp.tensor_digest(t.reshape(4, 3))  # same bytes, other shape
    assert fp.tensor_digest(t) != fp.tensor_digest(t.flip(0).contiguous())  # rows swapped
    assert fp.tensor_digest(t.bfloat16()) != fp.tensor_digest(t)
    assert fp.tensor_digest(torch.zeros(0)) == fp.tensor_digest(torch.zeros(0))
    # a transposed (strided) view hashes its row-major values, as its contiguous copy does
    assert fp.tensor_digest(t.t()) == fp.tensor_digest(t.t().contiguous())


def test_digest_does_not_depend_on_the_slice_size(monkeypatch):
    t = torch.randn(1000, 37)
    whole = fp.tensor_digest(t)
    monkeypatch.setattr(fp, "CHUNK_BYTES", 1000)  # many slices, a boundary inside a row
    assert fp.tensor_digest(t) == whole
    t[999, 36] += 1.0
    assert fp.tensor_digest(t) != whole


def test_fingerprint_makes_no_copy_of_the_model(tmp_path):
    """In a fresh process: 400 MB of float32 weights, then the fingerprint; the peak resident memory
    grows by about one slice, where the former float64 checksum grew by 24 bytes per weight."""
    script = textwrap.dedent(
        """
        import json, torch
        from segros.train.fingerprint import fingerprint
        from segros.train.memory import peak_rss_bytes
        model = torch.nn.ModuleList(torch.nn.Linear(2000, 2000) for _ in range(25))  # 100M weights
        before = peak_rss_bytes()
        names, digests = fingerprint(model)
        n = sum(p.numel() for p in model.parameters())
        print(json.dumps({"growth": peak_rss_bytes() - before, "n": n}))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] > 100_000_000
    assert result["growth"] < 64 * 2**20, result  # the old check: ~2.4 GB here


def test_sharded_parameters_are_recognised():
    model = _model()
    assert not fp.is_sharded(model)
    param = next(model.parameters())
    param.ds_id = 0  # what DeepSpeed ZeRO-3 sets on a partitioned parameter
    assert fp.is_sharded(model)


def test_two_processes_agree_then_one_nudged_weight_is_caught():
    probe = Path(__file__).with_name("_sync_probe.py")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, str(probe)], capture_output=True, text=True, env=env, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["world"] == 2 and result["equal"] is True and result["nudged"] is False
    assert result["peaks"]["peak_rss_mib"] > 10 and "peak_cuda_allocated_mib" not in result["peaks"]
