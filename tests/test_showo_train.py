"""Show-o through the unchanged trainer and CLI: the Table 7 configs validate (without loading
anything), one training step runs for each method on the tiny model, and ``segros inspect`` reads
the checkpoint it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from showo_helpers import TINY_ARCH

from segros.backbones.registry import load_backbone
from segros.backbones.showo.adapter import ShowoBackbone, ShowoOptions
from segros.cli import main
from segros.data.shapes import ShapesWorld
from segros.shipped import CONFIGS as SHIPPED
from segros.train.config import load_config, validate
from segros.train.loop import train

CONFIGS = SHIPPED / "showo"


@pytest.mark.parametrize("res", [256, 512])
@pytest.mark.parametrize("method", ["sft", "reca", "segros"])
def test_table7_configs_validate(method, res, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("validating a config must not load a model")

    monkeypatch.setattr(ShowoBackbone, "from_options", no_loading)
    cfg = load_config(CONFIGS / f"{method}-{res}.yaml")
    opts = cfg.model_options()
    assert isinstance(opts, ShowoOptions) and opts.image_size == res
    assert opts.init_from == (
        "showlab/show-o-w-clip-vit" if res == 256 else "showlab/show-o-w-clip-vit-512x512"
    )
    o = cfg.optim
    assert (o.lr, o.weight_decay, o.betas, o.warmup_steps) == (5e-7, 0.01, (0.9, 0.999), 1000)
    assert (cfg.data.batch_size, o.grad_accum) == ((4, 5) if res == 256 else (2, 20))
    assert cfg.run.max_steps == 5000 and o.freeze == ["clip.*"]
    plan = cfg.method.plan_config()
    assert cfg.method.i2t_weight == 1.0 and plan.grounding.text_keep_ratio == 0.4
    if method == "segros":
        assert plan.hint_ratio == (0.3 if res == 256 else 0.4) and plan.hint_pick == "top"
    assert plan.text_condition == (method != "reca")
    assert plan.hint_pick == {"sft": "none", "reca": "all", "segros": "top"}[method]


def tiny_run_config(tokenizer: Path, method: str):
    raw = {
        "model": {
            "name": "showo",
            "init_from": None,
            "tokenizer": str(tokenizer),
            "arch": {**TINY_ARCH, "clip": None},
            "image_size": 32,
            "max_text_len": 16,
            "generation_steps": 2,
        },
        "method": {"preset": method},
        "data": {"source": "shapes", "batch_size": 2, "i2t": "shapes"},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "run": {"max_steps": 1, "save_every": 1, "picture_every": 0, "log_every": 1, "progress": False},
        "logging": {"tensorboard": False},
    }
    return validate(raw)


@pytest.mark.parametrize("method", ["sft", "reca", "segros"])
def test_one_training_step_per_method_then_inspect_the_checkpoint(showo_tokenizer, tmp_path, method):
    cfg = tiny_run_config(showo_tokenizer, method)
    result = train(cfg, tmp_path / "run")
    assert result.step == 1 and result.skipped_steps == 0
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses[0]))
    torch.manual_seed(cfg.run.seed)  # the trainer's initial weights (set_seed before building)
    initial = ShowoBackbone.from_options(cfg.model_options())
    trained = load_backbone(tmp_path / "run")
    assert isinstance(trained, ShowoBackbone)
    delta = (trained.model.showo.lm_head.weight - initial.model.showo.lm_head.weight).abs().max()
    assert delta > 0  # the step updated the LLM
    assert torch.equal(trained.vq.encoder.conv_in.weight, initial.vq.encoder.conv_in.weight)  # frozen
    if method == "sft":  # the trainer's resume reloads model.safetensors into the backbone
        cfg.run.max_steps = 2
        assert train(cfg, tmp_path / "run", resume=True).step == 2
    if method != "segros":
        return
    image = tmp_path / "scene.png"
    Image.fromarray(ShapesWorld(image_size=32, seed=0).scene(0).image).save(image)
    out = tmp_path / "inspect.png"
    argv = ["--image", image, "--caption", "a red circle", "--checkpoint", tmp_path / "run", "--out", out]
    code = main(["inspect", *map(str, argv)])
    assert code == 0 and out.is_file() and Image.open(out).size[0] > 32
