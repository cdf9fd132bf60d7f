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
        ({"method": {"hint_ratio": 1.5}}, "method.hint_ratio", "[0, 1]"),
        ({"method": {"preset": "magic"}}, "method.preset", "sft"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "valid number"),
        ({"run": {"max_steps": 0}}, "run.max_steps", "greater than or equal to 1"),
        ({"run": {"colour": 3}}, "run.colour", "Extra inputs"),
        ({"surprise": {}}, "surprise", "Extra inputs"),
        ({"model": {"name": "tiny", "size": "huge"}}, "model.size", "'tiny', 'small' or 'base'"),
        ({"model": {"name": "tiny", "layers": 3}}, "model.layers", "Extra inputs"),
        ({"model": {"name": "gpt5"}}, "model.name", "tiny"),
        ({"data": {"source": "files"}}, "data.path", "required"),
        ({"method": {"temperature": 0.0}}, "method.temperature", ">= 0.005"),
        ({"method": {"text_filter": "words"}}, "method.text_filter", "'intra'"),
        ({"method": {"loss_target_ratio": -1}}, "method.loss_target_ratio", "[0, 1]"),
        ({"method": {"mask_schedule": "linear"}}, "method.mask_schedule", "'truncnorm'"),
        ({"method": {"hint_pick": 3}}, "method.hint_pick", "valid string"),
        ({"method": {"colour": "red"}}, "method.colour", "Extra inputs"),
    ],
)
def test_file_errors_name_the_key_path(tmp_path, data, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    message = str(info.value)
    assert key in message and words in message, message


def test_method_keys_are_the_core_knobs_validated_once_by_the_core(monkeypatch):
    """method: is generated from PlanConfig and GroundingConfig (no second copy of their knobs,
    choices or ranges), and a bad value is refused by the core's own check, once."""
    import dataclasses

    from segros import plan as plan_module
    from segros.grounding import GroundingConfig
    from segros.plan import PlanConfig
    from segros.train.config import MethodConfig

    knobs = {f.name for f in dataclasses.fields(PlanConfig) if f.name != "grounding"}
    knobs |= {f.name for f in dataclasses.fields(GroundingConfig)}
    extra = {"preset", "loss_targets", "i2t_weight", "mask_schedule", "mask_per_batch"}
    assert set(MethodConfig.model_fields) == knobs | extra
    assert all(not f.metadata for k, f in MethodConfig.model_fields.items() if k in knobs)  # no ranges
    checked = []
    original = plan_module.check_ratio
    monkeypatch.setattr(plan_module, "check_ratio", lambda n, v: (checked.append(n), original(n, v)))
    assert load_config(None, ["method.hint_ratio=0.5"]).method.plan_config().hint_ratio == 0.5
    assert checked.count("hint_ratio") == 1


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


def test_method_knobs_are_checked_against_each_capability_on_its_own():
    """The config layer reads a backbone's declared Capabilities, not its name: a masking model
    whose image-to-text loss trains nothing refuses i2t_weight only; a non-masking one that trains
    it refuses the masking knobs only; a model with both refuses nothing."""
    from segros.backbones.base import Capabilities
    from segros.train.capabilities import refused_knobs

    method = load_config(
        None, ["method.seen_pick=top", "method.mask_schedule=uniform", "method.i2t_weight=0.5"]
    ).method
    frozen_i2t = Capabilities(masks_tokens=True, trains_image_to_text=False, generation="masked")
    assert set(refused_knobs(method, frozen_i2t, "x")) == {"i2t_weight"}
    no_masks = Capabilities(masks_tokens=False, trains_image_to_text=True, generation="flow")
    refused = refused_knobs(method, no_masks, "x")
    assert set(refused) == {"seen_pick", "mask_schedule"} and "masks_tokens=False" in refused["seen_pick"]
    both = Capabilities(masks_tokens=True, trains_image_to_text=True, generation="masked-autoregressive")
    assert refused_knobs(method, both, "x") == {}
    with pytest.raises(ValueError, match="generation must be one of"):
        Capabilities(masks_tokens=True, trains_image_to_text=True, generation="autoregressive")
