"""Checkpoint files from a folder or a hub id, with messages that name what is missing."""

import pytest

from segros.backbones.hub import MissingCheckpointError, resolve_files


def test_folder_with_all_files_resolves(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    found = resolve_files(
        tmp_path, ["config.json", "weights.safetensors"], "Test", "model.path", optional=["extra.json"]
    )
    assert found == {
        "config.json": tmp_path / "config.json",
        "weights.safetensors": tmp_path / "weights.safetensors",
    }


def test_folder_missing_a_file_names_it_and_the_config_key(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingCheckpointError, match=r"lacks weights\.safetensors.*model\.path"):
        resolve_files(tmp_path, ["config.json", "weights.safetensors"], "Test", "model.path")


def test_neither_folder_nor_hub_id(tmp_path):
    with pytest.raises(MissingCheckpointError, match="neither an existing folder nor a hub id"):
        resolve_files(tmp_path / "no" / "such" / "dir", ["a.bin"], "Test", "model.path")


def test_offline_hub_id_stops_at_once_naming_files(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to find
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingCheckpointError, match=r"a\.bin, b\.bin.*owner/absent.*model\.path=DIR"):
        resolve_files("owner/absent", ["a.bin", "b.bin"], "Test", "model.path")
