"""The Harmon configs validate (no weights are loaded) and carry the paper's Table 7 values; the
README's ablation overrides validate too; the trainer and ``segros inspect`` run a tiny Harmon."""


import numpy as np
import pytest
import torch
from harmon_helpers import IMAGE_SIZE, records, tiny_backbone
from PIL import Image

from segros.cli import main
from segros.schedules import sample_mask_ratio
from segros.shipped import CONFIGS as SHIPPED
from segros.train.config import load_config
from segros.train.loop import Trainer

CONFIGS = SHIPPED / "harmon"
TABLE7 = {"0.5b": (3000, 96), "1.5b": (5000, 48)}  # steps, batch; lr 1e-5, wd .01, warm-up 500, accum 2
METHODS = ("sft", "reca", "segros", "segros_droploss")


@pytest.mark.parametrize("size", TABLE7)
@pytest.mark.parametrize("method", METHODS)
def test_configs_validate_with_table7_values(method, size):
    cfg = load_config(CONFIGS / f"{method}-{size}.yaml")
    steps, batch = TABLE7[size]
    assert (
        cfg.model["name"] == "harmon"
        and cfg.model["size"] == size
        and cfg.model["init_from"] == "wusize/harmon"
    )
    assert (cfg.run.max_steps, cfg.data.batch_size, cfg.optim.grad_accum) == (steps, batch, 2)
    assert (cfg.optim.lr, cfg.optim.weight_decay, tuple(cfg.optim.betas)) == (1e-5, 0.01, (0.9, 0.95))
    assert cfg.optim.warmup_steps == 500
    plan = cfg.method.plan_config()
    assert plan.grounding.text_keep_ratio == 0.4 and plan.grounding.noise_scale == 0.5
    assert cfg.method.i2t_weight == 1.0 and cfg.method.preset == method
    assert plan.hint_ratio == {"sft": 0.0, "reca": 1.0}.get(method, 0.3)
    assert plan.loss_target_ratio == (0.3 if method == "segros_droploss" else None)


ABLATIONS = [
    *[f"method.hint_ratio={r}" for r in (0, 0.1, 0.3, 0.5, 0.8, 1.0)],
    *[f"method.text_filter={f}" for f in ("intra", "inter", "both", "none")],
    *[f"method.hint_pick={h} method.seen_pick={s}" for h in ("top", "bottom") for s in ("top", "bottom")],
    "method.mask_schedule=uniform method.mask_per_batch=true",
    *[f"method.noise_scale={a}" for a in (0, 0.5, 1.0)],
    "method.preset=reca_filtered method.hint_ratio=0.3",
]


@pytest.mark.parametrize("overrides", ABLATIONS)
def test_readme_ablation_overrides_validate(overrides):
    cfg = load_config(CONFIGS / "segros-0.5b.yaml", overrides.split())
    cfg.method.plan_config()


def test_per_batch_uniform_schedule_keeps_equal_counts():
    ratio = sample_mask_ratio("uniform", 6, torch.Generator().manual_seed(0), per_batch=True)
    assert bool((ratio == ratio[0]).all())


def test_the_trainer_runs_harmon_unchanged(harmon_tokenizer, tmp_path):
    overrides = [
        "model.size=tiny", "model.init_from=null", f"model.tokenizer={harmon_tokenizer}",
        f"model.image_size={IMAGE_SIZE}", "model.max_text_len=80", "model.generation_steps=2",
        "model.diffusion_steps=2", "model.gradient_checkpointing=false", "data.source=shapes",
        "data.files=null", "data.i2t=shapes", "data.batch_size=2", "optim.mixed_precision='no'",
        "optim.warmup_steps=0", "run.max_steps=2", "run.save_every=2", "run.picture_every=0",
        "logging.tensorboard=false", "run.progress=false",
    ]  # fmt: skip
    cfg = load_config(CONFIGS / "segros_droploss-0.5b.yaml", overrides)
    trainer = Trainer(cfg, tmp_path / "run")
    # upstream's optimiser: no weight decay on the diffusion head and on 1-D parameters
    exempt = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, param in trainer.backbone.named_parameters():
        if param.requires_grad:
            assert (id(param) in exempt) == ("diffloss" in name or param.ndim <= 1), name
    result = trainer.run()
    assert result.step == 2 and all(np.isfinite(result.losses))
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "vae.safetensors").is_file()


def test_inspect_works_on_a_harmon_checkpoint(harmon_tokenizer, tmp_path, capsys):
    tiny_backbone(harmon_tokenizer).save_pretrained(tmp_path / "ckpt")
    image = tmp_path / "scene.png"
    record = records(1)[0]
    Image.fromarray(np.asarray(record.image)).save(image)
    out = tmp_path / "inspect.png"
    code = main(["inspect", "--image", str(image), "--caption", record.caption, "--checkpoint",
                 str(tmp_path / "ckpt"), "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "image tokens: 16 on a 4x4 grid" in printed and "hints 4" in printed
