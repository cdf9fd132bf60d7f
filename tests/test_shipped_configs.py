"""Every config file resolves to exactly the config it gave before the files were shrunk to
their differences (``base:``): tests/data/resolved_configs.json was dumped from the pre-change
files by the loader of that time, plus options added since with their defaults (``model.corpus:
shapes`` for tiny, Harmon and OpenUni; ``model.positions: learned`` for tiny) and the one
deliberate recipe change since: the shipped model's pretraining (``demo/pretrain.yaml``: 4,000
steps, ``web_noise.aligned`` 0.5)."""

import json
from pathlib import Path

import pytest
import yaml

from segros.shipped import CONFIGS
from segros.train.config import ConfigError, dump_config, load_config

EXPECTED = json.loads((Path(__file__).parent / "data" / "resolved_configs.json").read_text())
#: the fixture's names (repository paths when it was dumped) -> the file's path under segros/configs
# the earlier shipped model's recipe is pretrain-coarse.yaml now; demo/pretrain.yaml is the web recipe
MOVED = {"src/segros/recipes/demo-pretrain.yaml": "demo/pretrain-coarse.yaml"}
MOVED |= {"src/segros/recipes/demo-finetune.yaml": "demo/finetune.yaml"}


def shipped(name: str) -> str:
    return MOVED.get(name, name.removeprefix("configs/"))


def test_every_config_file_is_in_the_fixture():
    """Configs have one home (segros/configs, shipped with the package) and each is checked."""
    assert {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")} == set(map(shipped, EXPECTED))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_resolved_config_is_unchanged(name):
    cfg = load_config(CONFIGS / shipped(name))
    assert cfg.model_dump(mode="json") == EXPECTED[name]
    assert "base" not in yaml.safe_load(dump_config(cfg))


def test_configs_paths_read_the_shipped_files_unless_one_exists_here(tmp_path, monkeypatch):
    """``--config configs/tiny/segros.yaml`` runs from a clone and from an installed package alike;
    a file of that name in the working directory wins."""
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/tiny/sft.yaml") == load_config(CONFIGS / "tiny" / "sft.yaml")
    (tmp_path / "configs" / "tiny").mkdir(parents=True)
    (tmp_path / "configs" / "tiny" / "sft.yaml").write_text("run: {max_steps: 7}\n")
    assert load_config("configs/tiny/sft.yaml").run.max_steps == 7
    with pytest.raises(ConfigError, match="nor among the shipped configs"):
        load_config("configs/tiny/nope.yaml")
