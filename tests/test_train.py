"""The training loop on the tiny model: exact resume, NaN handling, bad data, logs, freezing."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_helpers import tiny_config

from segros.data.budget import TooManyBadRecords
from segros.train import checkpoint as ckpt
from segros.train.loop import Trainer, TrainingDivergedError, lr_factor, train


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_resume_reproduces_the_uninterrupted_run_exactly(small_tokenizer, tmp_path):
    k = 3
    common = (f"run.save_every={k}", f"optim.schedule_steps={2 * k}")  # same lr schedule in both runs
    full = train(tiny_config(small_tokenizer, f"run.max_steps={2 * k}", *common), tmp_path / "full")
    first = train(tiny_config(small_tokenizer, f"run.max_steps={k}", *common), tmp_path / "split")
    second = train(
        tiny_config(small_tokenizer, f"run.max_steps={2 * k}", *common), tmp_path / "split", resume=True
    )
    assert first.losses + second.losses == full.losses  # exactly, float for float
    assert len(full.losses) == 2 * k and all(math.isfinite(x) for x in full.losses)
    w_full = weights(tmp_path / "full/checkpoints" / f"step-{2 * k}")
    w_split = weights(tmp_path / "split/checkpoints" / f"step-{2 * k}")
    assert w_full.keys() == w_split.keys()
    for name in w_full:
        assert torch.equal(w_full[name], w_split[name]), name
    # and training did change the weights
    w_start = weights(tmp_path / "split/checkpoints" / f"step-{k}")
    assert any(not torch.equal(w_start[n], w_full[n]) for n in w_full)


def test_resume_onto_another_lr_schedule_says_so(small_tokenizer, tmp_path, caplog):
    """--max-steps 3 then --max-steps 6 --resume re-plans the cosine schedule over 6 steps: not the
    uninterrupted run of either length, so the resume warns and names the setting that keeps it."""
    train(tiny_config(small_tokenizer, "run.max_steps=3", "run.save_every=3"), tmp_path)
    state = json.loads((tmp_path / "checkpoints/step-3/trainer_state.json").read_text())
    assert state["schedule_steps"] == 3
    with caplog.at_level("WARNING", logger="segros.train.loop"):
        Trainer(tiny_config(small_tokenizer, "run.max_steps=6"), tmp_path, resume=True)
    assert "lr schedule of 3 steps, this run plans 6" in caplog.text
    assert "optim.schedule_steps=3" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="segros.train.loop"):
        same = tiny_config(small_tokenizer, "run.max_steps=6", "optim.schedule_steps=3")
        Trainer(same, tmp_path, resume=True)
    assert "lr schedule" not in caplog.text


def test_checkpoint_layout_and_keep_last(small_tokenizer, tmp_path):
    train(tiny_config(small_tokenizer, "run.max_steps=8", "run.save_every=2", "run.keep_last=2"), tmp_path)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-8"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-6", "step-8"]
    for name in (
        "model.safetensors",
        "config.json",
        "optimizer.pt",
        "scheduler.pt",
        "rank-0.pt",
        "trainer_state.json",
    ):
        assert (root / "step-8" / name).is_file(), name
    assert json.loads((root / "step-8/trainer_state.json").read_text())["step"] == 8
    assert "method:" in (tmp_path / "config.yaml").read_text()


def test_a_half_written_checkpoint_never_becomes_latest(small_tokenizer, tmp_path):
    train(tiny_config(small_tokenizer, "run.max_steps=3", "run.save_every=3"), tmp_path)
    root = tmp_path / "checkpoints"
    # a kill during saving leaves a temporary folder, or a renamed one without its marker
    (root / ".tmp-step-6").mkdir()
    (root / ".tmp-step-6" / "model.safetensors").write_bytes(b"partial")
    broken = root / "step-9"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    (root / "latest").write_text("step-9\n")  # even if latest pointed at it
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-3"
    result = train(tiny_config(small_tokenizer, "run.max_steps=5", "run.save_every=5"), tmp_path, resume=True)
    assert result.step == 5 and len(result.losses) == 2


def test_resume_without_checkpoint_is_a_clear_error(small_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Trainer(tiny_config(small_tokenizer), tmp_path, resume=True)


def test_nan_steps_are_skipped_then_stop_the_run(small_tokenizer, tmp_path):
    trainer = Trainer(
        tiny_config(small_tokenizer, "run.max_steps=6", "run.save_every=2", "run.max_bad_steps=3"), tmp_path
    )
    original = trainer.backbone.reconstruction_loss
    nan_steps = {2}

    def flaky(batch, plan):
        loss = original(batch, plan)
        return loss * float("nan") if trainer.step in nan_steps else loss

    trainer.backbone.reconstruction_loss = flaky
    result = trainer.run()
    assert result.skipped_steps == 1 and math.isnan(result.losses[2])
    assert all(math.isfinite(x) for i, x in enumerate(result.losses) if i != 2)

    # now every step from 6 on is NaN: three in a row stop the run, the last good checkpoint stays
    trainer = Trainer(
        tiny_config(small_tokenizer, "run.max_steps=20", "run.save_every=2", "run.max_bad_steps=3"),
        tmp_path,
        resume=True,
    )
    original = trainer.backbone.reconstruction_loss
    trainer.backbone.reconstruction_loss = lambda b, p: original(b, p) * float("nan")
    before = weights(tmp_path / "checkpoints/step-6")
    with pytest.raises(TrainingDivergedError, match=r"3 steps in a row.*step-6"):
        trainer.run()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-6"
    after = weights(tmp_path / "checkpoints/step-6")
    assert all(torch.equal(before[n], after[n]) for n in before)


def write_jsonl(tmp_path, n_good, n_bad):
    lines = []
    for i in range(n_good):
        Image.new("RGB", (32, 32), (40 * (i % 6), 90, 200)).save(tmp_path / f"{i}.png")
        lines.append({"image": f"{i}.png", "caption": "a photo of a red circle"})
    for i in range(n_bad):
        (tmp_path / f"bad{i}.png").write_bytes(b"not a png")
        lines.append({"image": f"bad{i}.png", "caption": "a photo of a blue star"})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    return path


def test_bad_records_are_counted_and_too_many_stop_the_run(small_tokenizer, tmp_path):
    data = write_jsonl(tmp_path, n_good=400, n_bad=2)
    overrides = [
        "data.source=files",
        f"data.files.path={data}",
        "data.i2t=none",
        "run.max_steps=4",
        "data.batch_size=64",
    ]
    result = train(tiny_config(small_tokenizer, *overrides, "data.max_bad_share=0.01"), tmp_path / "ok")
    assert result.bad_records >= 1  # 256 of 402 records read: the bad ones were skipped, not trained on
    assert json.loads((tmp_path / "ok/train_summary.json").read_text())["bad_records"] == result.bad_records

    data2_dir = tmp_path / "many"
    data2_dir.mkdir()
    data2 = write_jsonl(data2_dir, n_good=300, n_bad=30)
    with pytest.raises(TooManyBadRecords, match=r"bad"):
        train(
            tiny_config(
                small_tokenizer,
                "data.source=files",
                f"data.files.path={data2}",
                "data.i2t=none",
                "run.max_steps=8",
                "data.batch_size=64",
            ),
            tmp_path / "stop",
        )


def test_tensorboard_curves_and_pictures_are_written(small_tokenizer, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from segros.data.shapes_prompts import SAMPLE_PROMPTS
    from segros.train.logger import sample_pictures

    cfg = tiny_config(small_tokenizer, "logging.tensorboard=true", "run.picture_every=2", "run.max_steps=2")
    train(cfg, tmp_path, pictures=sample_pictures(SAMPLE_PROMPTS))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in (
        "loss/total",
        "loss/recon",
        "loss/i2t",
        "lr",
        "grad_norm",
        "steps_per_second",
        "grounding/hint_mean",
    ):
        assert tag in tags["scalars"], tag
    assert {"grounding", "samples"} <= set(tags["images"])
    pictures = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert pictures == ["grounding-step000002.png", "samples-step000002.png"]


def test_pictures_are_the_applications_the_grounding_panel_the_trainers(small_tokenizer, tmp_path):
    """Without a callback only the grounding panel is drawn; a callback's pictures are logged
    under its tags, given the backbone and the step."""
    cfg = tiny_config(small_tokenizer, "run.picture_every=2", "run.max_steps=4", "run.save_every=4")
    train(cfg, tmp_path / "plain")
    assert sorted(p.name for p in (tmp_path / "plain/pictures").iterdir()) == [
        "grounding-step000002.png",
        "grounding-step000004.png",
    ]
    calls = []

    def draw(backbone, step):
        calls.append((type(backbone).__name__, step))
        return {"custom/dots": np.full((8, 8, 3), 255, dtype=np.uint8)}

    train(cfg, tmp_path / "custom", pictures=draw)
    assert calls == [("TinyBackbone", 2), ("TinyBackbone", 4)]
    assert (tmp_path / "custom/pictures/custom-dots-step000004.png").is_file()


def test_the_train_command_draws_shapes_prompts_only_for_shapes_data(tmp_path):
    from segros.train.cli import sample_pictures_for

    assert sample_pictures_for("auto", "shapes") is not None
    assert sample_pictures_for("auto", "files") is None and sample_pictures_for("none", "shapes") is None
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n\n")
    assert callable(sample_pictures_for(str(prompts), "files"))
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    with pytest.raises(OSError, match="no prompt"):
        sample_pictures_for(str(empty), "files")


def test_train_step_returns_what_happened(small_tokenizer, tmp_path):
    trainer = Trainer(tiny_config(small_tokenizer, "optim.grad_accum=2"), tmp_path)
    out = trainer.train_step()
    assert trainer.step == 1 and not out.skipped and math.isfinite(out.loss)
    assert set(out.losses) == {"recon", "i2t", "total"}
    assert out.losses["total"] == pytest.approx(out.losses["recon"] + out.losses["i2t"])
    assert out.grad_norm > 0 and len(out.batch) == 4 and out.plan.num_hints == int(0.3 * 64)
    assert {"grounding/hint_mean", "grounding/seen_mean", "grounding/masked_mean"} <= set(out.grounding)
    original = trainer.backbone.reconstruction_loss
    trainer.backbone.reconstruction_loss = lambda b, p: original(b, p) * float("nan")
    bad = trainer.train_step()
    assert bad.skipped and math.isnan(bad.loss) and trainer.skipped_steps == 1 and trainer.step == 2


def test_freezing_by_name_pattern_keeps_those_weights(small_tokenizer, tmp_path):
    cfg = tiny_config(
        small_tokenizer, "optim.freeze=['model.embed.*']", "run.max_steps=2", "run.save_every=1"
    )
    train(cfg, tmp_path)
    w1, w2 = weights(tmp_path / "checkpoints/step-1"), weights(tmp_path / "checkpoints/step-2")
    assert torch.equal(w1["model.embed.weight"], w2["model.embed.weight"])
    assert not torch.equal(w1["model.head.weight"], w2["model.head.weight"])
    with pytest.raises(ValueError, match="match no parameter"):
        train(tiny_config(small_tokenizer, "optim.freeze=['nothing.*']"), tmp_path / "x")


def test_segros_and_sft_plan_the_same_batch_differently(small_tokenizer, tmp_path):
    plans = {}
    for preset in ("segros", "sft"):
        trainer = Trainer(tiny_config(small_tokenizer, f"method.preset={preset}"), tmp_path / preset)
        records = next(iter(trainer.t2i))
        batch = trainer.backbone.prepare_t2i(records)
        trainer.generator.manual_seed(0)
        plans[preset] = trainer.plan_for(batch)
    assert plans["segros"].num_hints == int(0.3 * 64) and plans["sft"].num_hints == 0  # 8x8 tokens
    assert not torch.equal(plans["segros"].seen, plans["sft"].seen)
    g = plans["segros"].grounding.scores
    seen = plans["segros"].seen
    for b in range(g.shape[0]):  # segros keeps the least grounded tokens visible (noise aside)
        assert g[b][seen[b]].mean() <= g[b][~seen[b]].mean() + 0.5


def test_lr_schedule():
    assert lr_factor(0, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 10, 100, "constant", 0.1) == 1.0


def test_gradient_accumulation_steps_once_per_group(small_tokenizer, tmp_path):
    result = train(
        tiny_config(small_tokenizer, "optim.grad_accum=3", "run.max_steps=2", "run.save_every=2"), tmp_path
    )
    state = torch.load(tmp_path / "checkpoints/step-2/rank-0.pt", weights_only=True)
    assert state["t2i"]["order"]["position"] == 2 * 3 * 4  # 2 optimizer steps x 3 micro-batches x 4
    assert len(result.losses) == 2
    scheduler = torch.load(tmp_path / "checkpoints/step-2/scheduler.pt", weights_only=True)
    assert scheduler["last_epoch"] == 2  # the lr schedule counts optimizer steps, not micro-batches


def test_accumulation_marks_only_the_last_micro_batch_as_a_sync_boundary(small_tokenizer, tmp_path):
    """DeepSpeed and DDP both read accelerate's boundary flag: it must be set on the last
    micro-batch of each group only, and stay in phase after a skipped (NaN) group."""
    cfg = tiny_config(small_tokenizer, "optim.grad_accum=3", "run.max_steps=3", "run.save_every=3")
    trainer = Trainer(cfg, tmp_path)
    flags: list[bool] = []
    backward = trainer.accelerator.backward

    def recording_backward(loss, **kwargs):
        flags.append(trainer.accelerator.sync_gradients)
        return backward(loss, **kwargs)

    trainer.accelerator.backward = recording_backward
    original = trainer.backbone.reconstruction_loss
    calls = {"n": 0}

    def nan_on_fourth_micro_batch(batch, plan):
        calls["n"] += 1
        loss = original(batch, plan)
        return loss * float("nan") if calls["n"] == 4 else loss

    trainer.backbone.reconstruction_loss = nan_on_fourth_micro_batch
    result = trainer.run()
    # group 1: three backwards; group 2: NaN on its first micro-batch, no backward at all;
    # group 3: three backwards, in phase again
    assert flags == [False, False, True, False, False, True]
    assert result.skipped_steps == 1 and math.isnan(result.losses[1])


def test_launcher_accumulation_that_disagrees_with_the_config_stops_the_run(
    small_tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")  # what accelerate launch sets
    with pytest.raises(ValueError, match=r"optim.grad_accum is 2 .* sets 4"):
        Trainer(tiny_config(small_tokenizer, "optim.grad_accum=2"), tmp_path)


def test_param_groups_exempt_patterns_and_one_d_parameters_from_weight_decay():
    from segros.train.loop import param_groups

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, 0.05, ["0.weight"], one_d=True)
    decay, exempt = groups
    assert decay == {"params": [], "weight_decay": 0.05}  # 0.weight by pattern, 2.weight frozen
    assert exempt["weight_decay"] == 0.0
    assert {id(p) for p in exempt["params"]} == {
        id(model[0].weight),
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[2].bias),
    }
    plain = param_groups(model, 0.05, [], one_d=False)
    assert len(plain) == 1 and len(plain[0]["params"]) == 5
    with pytest.raises(ValueError, match="match no parameter"):
        param_groups(model, 0.05, ["*diffloss*"], one_d=False)


def _has_cxx_compiler() -> bool:
    import os
    import shutil

    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


@pytest.mark.skipif(not _has_cxx_compiler(), reason="torch.compile (inductor) needs a C++ compiler on CPU")
def test_compiled_blocks_train_like_eager_ones_and_save_the_same_weights(small_tokenizer, tmp_path):
    common = ("run.max_steps=3", "run.save_every=3", "run.seed=3")
    eager = train(tiny_config(small_tokenizer, *common), tmp_path / "eager")
    trainer = Trainer(tiny_config(small_tokenizer, *common, "run.compile=true"), tmp_path / "compiled")
    blocks = trainer.backbone.transformer_blocks()
    assert len(blocks) == 2 and all(b._compiled_call_impl is not None for b in blocks)
    compiled = trainer.run()
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5, abs=1e-6)
    w_eager, w_compiled = (
        weights(tmp_path / "eager/checkpoints/step-3"),
        weights(tmp_path / "compiled/checkpoints/step-3"),
    )
    assert w_eager.keys() == w_compiled.keys()  # no "_orig_mod." prefixes: loads without compile
    for key in w_eager:
        torch.testing.assert_close(w_compiled[key], w_eager[key], rtol=1e-4, atol=1e-5, msg=key)
