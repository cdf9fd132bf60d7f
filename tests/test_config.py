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
        ({"data": {"source": "files"}}, "data.files.path", "required"),
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
        load_config(None, ["data.files.path=/data/my-images"])
    message = str(info.value)
    assert "data.files.path" in message and "data.source" in message
    files = load_config(None, ["data.source=files", "data.files.path=/data/my-images"])
    assert files.data.files.path == "/data/my-images"


def test_a_parquet_run_has_no_shapes_keys_and_a_shapes_run_no_files_keys(tmp_path):
    """A source's options live under it: data.files only for data.source=files, data.shapes only
    when a stream is ShapesWorld; a resolved config holds the sections its run reads."""
    from segros.shipped import CONFIGS

    def keys(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{prefix}{k}"
                yield from keys(v, f"{prefix}{k}.")

    parquet = load_config(CONFIGS / "showo" / "segros-256.yaml", ["data.files.path=/data/shards/*.parquet"])
    dumped = yaml.safe_load(dump_config(parquet))
    assert dumped["data"]["files"]["path"] == "/data/shards/*.parquet" and parquet.data.shapes is None
    assert [k for k in keys(dumped) if "shapes" in k] == []
    parquet_data = {"source": "files", "files": {"path": "x.parquet"}, "i2t": "none"}
    own = load_config(write(tmp_path, {"data": parquet_data}))
    # (the tiny backbone's own model.shapes_layout, the layout its tokenizer is fitted on, is a
    # model option: only the data section is checked here)
    assert [k for k in keys(yaml.safe_load(dump_config(own))["data"]) if "shapes" in k] == []
    # ShapesWorld as the image-to-text stream of a files run: its options are there again
    mixed = load_config(None, ["data.source=files", "data.files.path=x.parquet", "data.shapes.seed=5"])
    assert mixed.data.shapes.seed == 5 and mixed.data.i2t == "shapes"
    world = yaml.safe_load(dump_config(load_config(None, ["data.shapes.layout=grid"])))["data"]
    shapes = world["shapes"]
    assert shapes["layout"] == "grid" and shapes["seed"] == 0 and shapes["web_noise"]["relation"] == 0.3
    assert "files" not in world and "path" not in world and "streaming" not in world
    with pytest.raises(ConfigError, match=r"data\.shapes is set but neither"):
        load_config(None, ["data.source=files", "data.files.path=x", "data.i2t=none", "data.shapes.seed=5"])


@pytest.mark.parametrize(
    "old, new, value",
    [
        ("shapes_seed", "seed", 7),
        ("shapes_scenes", "scenes", 11),
        ("shapes_layout", "layout", "grid"),
        ("shapes_caption_style", "caption_style", "coarse"),
        ("shapes_coarse_color_rate", "coarse_color_rate", 0.25),
        ("shapes_coarse_relation_rate", "coarse_relation_rate", 0.5),
        ("shapes_kind_weights", "kind_weights", (1.0, 1.0, 1.0, 5.0, 1.0)),
        ("shapes_i2t_caption_style", "i2t_caption_style", "dense"),
        ("path", "path", "/data/shards/*.parquet"),
        ("image_column", "image_column", "jpg"),
        ("caption_column", "caption_column", "txt"),
        ("split", "split", "test"),
        ("hf_cache_dir", "hf_cache_dir", "/cache/hf"),
        ("streaming", "streaming", True),
        ("shuffle_buffer", "shuffle_buffer", 5),
    ],
)
def test_old_data_keys_still_read_with_a_warning_naming_the_new_key(tmp_path, old, new, value):
    from segros.train.config import OldKeyWarning

    section = "shapes" if old.startswith("shapes_") else "files"
    files = {"source": "files", "path": "x.parquet"} if section == "files" and old != "path" else {}
    if old == "path":
        files = {"source": "files"}
    yaml_value = list(value) if isinstance(value, tuple) else value
    with pytest.warns(OldKeyWarning, match=rf"data\.{old} is now data\.{section}\.{new}"):
        from_file = load_config(write(tmp_path, {"data": {**files, old: yaml_value}}))
    flags = [f"data.{k}={v}" for k, v in files.items()]
    with pytest.warns(OldKeyWarning, match=rf"data\.{section}\.{new}"):
        from_override = load_config(None, [*flags, f"data.{old}={yaml_value}"])
    got = getattr(from_file.data, section), getattr(from_override.data, section)
    assert getattr(got[0], new) == getattr(got[1], new) == value
    current = [f.replace("data.path=", "data.files.path=") for f in flags]
    assert from_file == load_config(None, [*current, f"data.{section}.{new}={yaml_value}"])
    assert old not in yaml.safe_load(dump_config(from_file))["data"]


def test_old_web_noise_keys_merge_under_the_new_ones_and_the_new_key_wins(tmp_path):
    from segros.train.config import OldKeyWarning

    data = {"shapes_web_noise": {"relation": 0.9, "omit": 0.6}, "shapes": {"web_noise": {"relation": 0.2}}}
    with pytest.warns(OldKeyWarning, match=r"data\.shapes_web_noise is now data\.shapes\.web_noise"):
        cfg = load_config(write(tmp_path, {"data": data}))
    assert cfg.data.shapes.web_noise.relation == 0.2 and cfg.data.shapes.web_noise.omit == 0.6
    with pytest.warns(OldKeyWarning):
        over = load_config(None, ["data.shapes_web_noise.relation=0.7"])
    assert over.data.shapes.web_noise.relation == 0.7
    with pytest.warns(OldKeyWarning), pytest.raises(ConfigError, match=r"data\.shapes\.seed"):
        load_config(None, ["data.shapes_seed=1000000"])  # a validation seed: named by its new key


def test_a_resolved_config_saved_before_the_sections_still_reads(tmp_path):
    """A run folder's config.yaml of before holds every data key flat, the other source's at their
    defaults: it reads as the same run (those defaults dropped, not refused as unused)."""
    from segros.train.config import OldKeyWarning, WebNoiseConfig

    flat_files = {"path": None, "image_column": "image", "caption_column": "caption", "split": "train",
                  "hf_cache_dir": None, "streaming": False, "shuffle_buffer": 1000}  # fmt: skip
    noise = WebNoiseConfig().model_dump()
    flat_shapes = {"shapes_seed": 0, "shapes_layout": "free", "shapes_web_noise": noise}
    with pytest.warns(OldKeyWarning):
        shapes = load_config(write(tmp_path, {"data": {"source": "shapes", **flat_files, **flat_shapes}}))
    assert shapes == load_config(None) and shapes.data.files is None
    files_run = {"source": "files", "i2t": "none", **flat_files, "path": "/d", **flat_shapes}
    with pytest.warns(OldKeyWarning):
        files = load_config(write(tmp_path, {"data": files_run}))
    assert files.data.files.path == "/d" and files.data.shapes is None


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
