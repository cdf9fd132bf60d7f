"""``base:``: a config starts from other files and states only what differs."""

import pytest
import yaml

from segros.train.config import ConfigError, dump_config, load_config, read_config


def put(folder, name, data):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_chains_merge_mappings_and_replace_lists_and_scalars(tmp_path):
    root = {"optim": {"lr": 1e-3, "freeze": ["a*", "b*"]}, "run": {"max_steps": 50, "seed": 3}}
    put(tmp_path, "root.yaml", root)
    put(tmp_path, "mid/mid.yaml", {"base": "../root.yaml", "optim": {"freeze": ["c*"]}, "run": {"seed": 4}})
    leaf = put(tmp_path, "mid/leaf/leaf.yaml", {"base": "../mid.yaml", "method": {"preset": "sft"}})
    cfg = load_config(leaf)
    assert cfg.optim.lr == 1e-3 and cfg.optim.freeze == ["c*"]  # list replaced whole, lr kept
    assert (cfg.run.max_steps, cfg.run.seed) == (50, 4)
    assert cfg.method.preset == "sft"
    assert load_config(leaf, ["run.seed=9"]).run.seed == 9  # overrides still win
    raw, origins = read_config(leaf)
    assert "base" not in raw and raw["optim"] == {"lr": 1e-3, "freeze": ["c*"]}
    assert origins[("optim", "freeze")].name == "mid.yaml" and origins[("optim", "lr")].name == "root.yaml"
    assert ("method", "preset") not in origins  # the file's own keys: nothing to name
    dumped = yaml.safe_load(dump_config(cfg))
    assert "base" not in dumped and dumped["run"]["max_steps"] == 50  # the run folder's: fully resolved
    assert load_config(put(tmp_path, "again.yaml", dumped)) == cfg


def test_a_list_of_bases_applies_in_order_and_null_replaces_a_section(tmp_path):
    put(tmp_path, "a.yaml", {"run": {"seed": 1, "max_steps": 7}, "lora": {"rank": 4}})
    put(tmp_path, "b.yaml", {"run": {"seed": 2}})
    cfg = load_config(put(tmp_path, "c.yaml", {"base": ["a.yaml", "b.yaml"], "lora": None}))
    assert (cfg.run.seed, cfg.run.max_steps, cfg.lora) == (2, 7, None)


def test_cycles_are_refused_naming_the_files(tmp_path):
    put(tmp_path, "one.yaml", {"base": "two.yaml"})
    put(tmp_path, "two.yaml", {"base": "one.yaml"})
    with pytest.raises(ConfigError, match="cycle") as info:
        load_config(tmp_path / "one.yaml")
    assert "one.yaml" in str(info.value) and "two.yaml" in str(info.value)
    with pytest.raises(ConfigError, match="cycle"):
        load_config(put(tmp_path, "self.yaml", {"base": "self.yaml"}))


def test_missing_or_malformed_bases_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: base .*nope\.yaml does not exist"):
        load_config(put(tmp_path, "c.yaml", {"base": "nope.yaml"}))
    with pytest.raises(ConfigError, match="file path or a list"):
        load_config(put(tmp_path, "d.yaml", {"base": 3}))
    (tmp_path / "broken.yaml").write_text("run: [unclosed")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML"):
        load_config(put(tmp_path, "e.yaml", {"base": "broken.yaml"}))


def test_errors_in_a_base_name_the_key_path_and_that_base(tmp_path):
    put(tmp_path, "base.yaml", {"run": {"colour": 3, "max_steps": 0}, "optim": {"lr": 1e-3}})
    child = put(tmp_path, "child.yaml", {"base": "base.yaml", "optim": {"lr": "fast"}})
    with pytest.raises(ConfigError) as info:
        load_config(child)
    lines = str(info.value).splitlines()
    colour = next(x for x in lines if "run.colour" in x)
    steps = next(x for x in lines if "run.max_steps" in x)
    lr = next(x for x in lines if "optim.lr" in x)
    assert "Extra inputs" in colour and "base.yaml" in colour
    assert "greater than or equal to 1" in steps and "base.yaml" in steps
    assert "valid number" in lr and "base.yaml" not in lr  # the child's own value: no file named
    with pytest.raises(ConfigError) as info:  # an override replaces the base's value: no base named
        load_config(child, ["run={max_steps: 0}", "optim.lr=0.1"])
    assert "run.max_steps" in str(info.value) and "base.yaml" not in str(info.value)
    assert load_config(child, ["run={max_steps: 5}", "optim.lr=0.1"]).run.max_steps == 5
