"""Every config file resolves to exactly the config it gave before the files were shrunk to
their differences (``base:``): tests/data/resolved_configs.json was dumped from the pre-change
files by the loader of that time."""

import json
from pathlib import Path

import pytest
import yaml

from segros.train.config import dump_config, load_config

REPO = Path(__file__).resolve().parents[1]
EXPECTED = json.loads((REPO / "tests/data/resolved_configs.json").read_text())
#: where a file of the fixture lives now (files moved since it was dumped)
MOVED: dict[str, str] = {}


def test_every_config_file_is_in_the_fixture():
    files = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    files |= {p.relative_to(REPO).as_posix() for p in (REPO / "src/segros/recipes").glob("*.yaml")}
    runnable = {MOVED.get(name, name) for name in EXPECTED}
    assert runnable <= files, runnable - files
    assert all(
        f in runnable or "base" not in f and "_" in Path(f).name for f in files
    ), files - runnable  # only fragments (files named with _, such as _preset-sft.yaml) are new


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_resolved_config_is_unchanged(name):
    cfg = load_config(REPO / MOVED.get(name, name))
    assert cfg.model_dump(mode="json") == EXPECTED[name]
    assert "base" not in yaml.safe_load(dump_config(cfg))
