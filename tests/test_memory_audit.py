"""benchmarks/memory_audit.py: saving a checkpoint, resuming from it and finishing a run add no
model-sized temporary beyond the optimizer's own state (the first step, which creates gradients and
AdamW state, shows the measurement sees one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_audit.py"


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's clear_refs")
def test_save_resume_and_finish_make_no_copy_of_the_model():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(SCRIPT), "--hidden", "768", "--layers", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    x = result["growth_x_weights"]
    assert result["weights_mib"] > 100
    assert x["first_step"] > 2.5  # gradients + two AdamW moments: the audit sees model-sized memory
    assert x["save"] < 0.25 and x["finish"] < 0.25, result  # the former checksum: 6x at finish
    # resume brings AdamW's two moments (2x) and one tensor at a time; a whole second copy of the
    # weights (the former load_file + load_state_dict) made it 3.0x. The lower bound only says the
    # moments are seen: measured 1.98-2.09 alone, once 1.34 inside a full CI run (file-backed
    # pages of the state read through the page cache count in RSS only once touched)
    assert 1.0 < x["resume"] < 2.3, result
