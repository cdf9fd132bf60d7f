"""``segros pretrain --export``: the exported folder loads, and PROVENANCE.md tells the truth."""

import hashlib

from segros.backbones.registry import load_backbone
from segros.cli import main


def test_export_records_the_weights_hash_and_only_the_threads_it_trained_with(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["pretrain", "--out", "run", "--max-steps", "2", "run.save_every=2", "run.picture_every=0"]
    assert main([*common, "--export", "first"]) == 0
    first = (tmp_path / "first" / "PROVENANCE.md").read_text()
    weights = (tmp_path / "first" / "model.safetensors").read_bytes()
    assert f"sha256(model.safetensors): {hashlib.sha256(weights).hexdigest()}" in first
    assert "- steps: 2 " in first and " threads" in first and "as the run was trained" not in first
    load_backbone(tmp_path / "first")  # a complete checkpoint folder

    # exporting the finished run again trains nothing: the thread count of this call says nothing
    assert main([*common, "--export", "again"]) == 0
    again = (tmp_path / "again" / "PROVENANCE.md").read_text()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == weights
    assert "threads: as the run was trained" in again
