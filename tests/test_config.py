"""Config validation: every bad key names its path, overrides validate like the file does."""

import pytest
import yaml

from segros.train.config import ConfigError, dump_config, load_config


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"method": {"hint_ratio": 1.5}}, "method.hint_ratio", "less than or equal to 1"),
        ({"method": {"preset": "magic"}}, "method.preset", "sft"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "valid number"),
        ({"run": {"max_steps": 0}}, "run.max_steps", "greater than or equal to 1"),
        ({"run": {"colour": 3}}, "run.colour", "Extra inputs"),
        ({"surprise": {}}, "surprise", "Extra inputs"),
        ({"model": {"name": "tiny", "size": "huge"}}, "model.size", "'tiny', 'small' or 'base'"),
        ({"model": {"name": "tiny", "layers": 3}}, "model.layers", "Extra inputs"),
        ({"model": {"name": "gpt5"}}, "model.name", "tiny"),
        ({"data": {"source": "files"}}, "data.path", "required"),
        ({"method": {"temperature": 0.0}}, "method.temperature", "greater than or equal"),
    ],
)
def test_file_errors_name_the_key_path(tmp_path, data, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    message = str(info.value)
    assert key in message and words in message, message


def test_overrides_are_validated_the_same_way(tmp_path):
    path = write(tmp_path, {"method": {"preset": "sft"}})
    with pytest.raises(ConfigError, match=r"method\.hint_ratio"):
        load_config(path, ["method.hint_ratio=2"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["nonsense"])
    cfg = load_config(path, ["method.preset=segros", "optim.betas=[0.9, 0.99]", "run.seed=7"])
    assert cfg.method.preset == "segros" and cfg.optim.betas == (0.9, 0.99) and cfg.run.seed == 7


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_presets_and_knobs_become_plan_configs():
    assert load_config(None, ["method.preset=sft"]).method.plan_config().hint_pick == "none"
    reca = load_config(None, ["method.preset=reca"]).method.plan_config()
    assert reca.hint_pick == "all" and not reca.text_condition
    drop = load_config(None, ["method.preset=segros_droploss"]).method.plan_config()
    assert drop.loss_target_ratio == 0.3
    undrop = load_config(None, ["method.preset=segros_droploss", "method.loss_targets=all"])
    assert undrop.method.plan_config().loss_target_ratio is None
    ablation = load_config(None, ["method.hint_ratio=0.5", "method.hint_pick=bottom", "method.noise_scale=0"])
    plan = ablation.method.plan_config()
    assert (plan.hint_ratio, plan.hint_pick, plan.grounding.noise_scale) == (0.5, "bottom", 0.0)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["method.preset=reca", "model.size=small"])
    again = load_config(write(tmp_path, yaml.safe_load(dump_config(cfg))))
    assert again == cfg


def test_data_path_with_shapes_source_is_an_error_naming_both_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.path=/data/my-images"])
    message = str(info.value)
    assert "data.path" in message and "data.source" in message
    files = load_config(None, ["data.source=files", "data.path=/data/my-images"])
    assert files.data.path == "/data/my-images"
