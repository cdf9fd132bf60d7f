"""``segros generate`` on two gloo processes (torchrun) writes the very bytes one process writes,
and resumes with ``--skip-existing`` the same way; the prompts' batches are split, not the seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_generate_benchmarks import diverse_copy

from segros.cli import main


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _args(model: Path, benchmark: str, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--checkpoint", str(model), "--benchmark", benchmark, "--prompts", str(prompts),
            "--out", str(out), "--batch-size", "3", "--steps", "4", *extra]  # fmt: skip


def _two_processes(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "segros.cli", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 processes" in done.stdout


def test_geneval_two_processes_write_what_one_writes(tmp_path):
    model = diverse_copy(tmp_path / "model")
    prompts = tmp_path / "evaluation_metadata.jsonl"
    rows = [{"tag": "colors", "include": [{"class": c, "count": 1}], "prompt": f"a photo of a red {c}"}
            for c in ("circle", "square", "triangle")]  # fmt: skip
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(_args(model, "geneval", prompts, tmp_path / "one", "--samples", "3")) == 0
    _two_processes(_args(model, "geneval", prompts, tmp_path / "two", "--samples", "3"))
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len([f for f in one if f.endswith(".png")]) == 9  # 3 batches of 3: split 2 / 1
    assert one == two
    assert len({v for k, v in one.items() if k.endswith(".png")}) > 1  # the seeds do differ


def test_dpg_grids_shared_by_processes_and_resume_match_one_process(tmp_path):
    model = diverse_copy(tmp_path / "model")
    prompts = tmp_path / "prompts.json"
    items = {f"item{k}.txt": f"a {c} circle" for k, c in enumerate(("red", "blue", "green"))}
    prompts.write_text(json.dumps(items))
    # 4 samples per prompt in batches of 3: every prompt's samples straddle the two processes
    assert main(_args(model, "dpg", prompts, tmp_path / "one")) == 0
    _two_processes(_args(model, "dpg", prompts, tmp_path / "two"))
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one) == ["item0.png", "item1.png", "item2.png"] and one == two  # no .parts left
    for root in ("one", "two"):  # a killed run: one grid missing
        (tmp_path / root / "item1.png").unlink()
    assert main(_args(model, "dpg", prompts, tmp_path / "one", "--skip-existing")) == 0
    _two_processes(_args(model, "dpg", prompts, tmp_path / "two", "--skip-existing"))
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert _files(tmp_path / "two")["item0.png"] == two["item0.png"]  # kept as it was
