"""benchmarks/real_size.py at the tiny sizes: every stage (sft, segros, resume, export) of every
backbone runs through the real Trainer and the table and JSON carry what it measured."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_size.py"


def _run(tmp_path: Path, *args: str) -> tuple[str, dict]:
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path / "work"), "--json", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _check(name: str, stages: dict) -> None:
    count = stages["segros"]["count"]
    assert 0 < count["trainable_params"] <= count["total_params"]
    assert count["estimate_gib"] > 0 and count["estimate_parts_gib"]["adamw"] > 0
    for stage in ("sft", "segros", "segros-resume"):
        s = stages[stage]
        assert s["params_in_sync"] is True and math.isfinite(s["losses"]), (name, stage, s)
        assert s["peak_rss_mib"] > 50 and s["checkpoint_bytes"] > 0
        assert len(s["step_seconds"]) == (1 if stage.endswith("resume") else 2)
        assert all(t > 0 for t in s["step_seconds"]) and all(n > 0 for n in s["tokens"])
    assert stages["segros-resume"]["step"] == 3  # resumed at 2, trained one more
    assert stages["export"]["bytes"] > 0 and stages["export"]["peak_rss_mib"] > 50


def test_every_backbone_every_stage_in_one_process(tmp_path):
    stdout, results = _run(tmp_path, "--inline", "--precision", "bf16")  # autocast, as on a GPU
    assert set(results) == {"harmon", "showo", "openuni"}
    for name, stages in results.items():
        _check(name, stages)
    # LoRA trains a small share of Show-o; OpenUni's MLLM is frozen; Harmon trains nearly all
    share = {n: r["segros"]["count"]["trainable_share"] for n, r in results.items()}
    assert share["showo"] < share["openuni"] < share["harmon"]
    assert (tmp_path / "work/showo/exported/model.safetensors").is_file()  # merged by segros export
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "tiny" in line]
    assert len(rows) == 3 and "bf16 autocast" in stdout


def test_a_stage_runs_in_its_own_process(tmp_path):
    """What the parent does for every stage of a real-size run: one process, one JSON line back,
    the peak memory of that process alone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_size", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    work = tmp_path / "showo"
    bench.make_tokenizer("showo", work / "tokenizer", tiny=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--worker", "showo", "--stage", "sft", "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["stage"] == "sft" and result["step"] == 2 and result["params_in_sync"] is True
    assert 50 < result["peak_rss_mib"] < 4096 and result["checkpoint_bytes"] > 0
