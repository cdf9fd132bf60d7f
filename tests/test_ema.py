"""EMA of the trainable weights (``optim.ema_decay``, segros.train.ema): the update against the
formula by hand, skipped steps, exact resume, the checkpoint file and its integrity check, and
``--weights ema`` in load_backbone, ``segros generate``, ``segros eval checkpoint`` and
``segros export``, on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_engines import launch_env  # noqa: F401  (the fixture of the FSDP2 case)
from train_helpers import tiny_config

from segros.backbones.registry import load_backbone
from segros.cli import main
from segros.data.sources import ShapesImageText
from segros.plan import preset
from segros.supervision import ground_and_plan, sample_ratio
from segros.train import checkpoint as ckpt
from segros.train.config import ConfigError
from segros.train.ema import EMA_FILE
from segros.train.loop import Trainer, train

DECAY = 0.5  # large steps, so that three updates move the EMA well away from both ends


def test_config_is_checked(small_tokenizer):
    assert tiny_config(small_tokenizer).optim.ema_decay is None  # off by default
    for bad, said in [
        ("optim.ema_decay=1.0", "optim.ema_decay"),
        ("optim.ema_decay=0", "optim.ema_decay"),
        ("optim.ema_device=gpu", "optim.ema_device"),
    ]:
        with pytest.raises(ConfigError, match=said):
            tiny_config(small_tokenizer, "optim.ema_decay=0.9", bad)
    with pytest.raises(ConfigError, match="no effect without optim.ema_decay"):
        tiny_config(small_tokenizer, "optim.ema_every=4")
    with pytest.raises(ConfigError, match="LoRA is not supported"):
        tiny_config(small_tokenizer, "optim.ema_decay=0.9", "lora.rank=2")


@pytest.mark.parametrize(("device", "every"), [("same", 1), ("cpu", 2)])
def test_ema_follows_the_formula_by_hand(small_tokenizer, tmp_path, device, every):
    cfg = tiny_config(small_tokenizer, f"optim.ema_decay={DECAY}", f"optim.ema_device={device}",
                      f"optim.ema_every={every}")  # fmt: skip
    trainer = Trainer(cfg, tmp_path)
    params = trainer.ema.params
    assert params == {n: p for n, p in trainer.backbone.named_parameters() if p.requires_grad}
    start = {n: p.detach().double().clone() for n, p in params.items()}
    hand = dict(start)
    for step in range(1, 4):
        assert not trainer.train_step().skipped
        if step % every == 0:  # ema_t = decay * ema_(t-1) + (1 - decay) * w_t, from ema_0 = w_0
            hand = {n: DECAY * hand[n] + (1 - DECAY) * params[n].detach().double() for n in hand}
    assert trainer.ema.updates == 3 // every
    for name, value in trainer.ema.tensors.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        torch.testing.assert_close(value.double(), hand[name], rtol=0, atol=1e-6)
    # not trivially the start or the current weights
    assert any(not torch.allclose(trainer.ema.tensors[n].double(), start[n]) for n in params)
    assert any(not torch.allclose(trainer.ema.tensors[n], params[n].detach()) for n in params)


def test_a_skipped_step_leaves_the_ema_unchanged(small_tokenizer, tmp_path):
    trainer = Trainer(tiny_config(small_tokenizer, f"optim.ema_decay={DECAY}"), tmp_path)
    trainer.train_step()
    before = {n: t.clone() for n, t in trainer.ema.tensors.items()}
    original = trainer.backbone.reconstruction_loss
    trainer.backbone.reconstruction_loss = lambda b, p: original(b, p) * float("nan")
    assert trainer.train_step().skipped
    assert trainer.ema.updates == 1
    assert all(torch.equal(before[n], t) for n, t in trainer.ema.tensors.items())
    trainer.backbone.reconstruction_loss = original
    assert not trainer.train_step().skipped  # and the next good step updates it again
    assert trainer.ema.updates == 2
    assert any(not torch.equal(before[n], t) for n, t in trainer.ema.tensors.items())


def test_resume_gives_bit_identical_ema_weights(small_tokenizer, tmp_path):
    k = 3
    common = (f"optim.ema_decay={DECAY}", f"run.save_every={k}", f"optim.schedule_steps={2 * k}")
    train(tiny_config(small_tokenizer, f"run.max_steps={2 * k}", *common), tmp_path / "full")
    train(tiny_config(small_tokenizer, f"run.max_steps={k}", *common), tmp_path / "split")
    train(tiny_config(small_tokenizer, f"run.max_steps={2 * k}", *common), tmp_path / "split", resume=True)
    full = load_file(str(tmp_path / "full/checkpoints" / f"step-{2 * k}" / EMA_FILE))
    split = load_file(str(tmp_path / "split/checkpoints" / f"step-{2 * k}" / EMA_FILE))
    assert full.keys() == split.keys() and full
    for name in full:
        assert torch.equal(full[name], split[name]), name
    # plain names, as in model.safetensors, and only the trainable ones
    weights = load_file(str(tmp_path / "full/checkpoints" / f"step-{2 * k}" / "model.safetensors"))
    assert set(full) <= set(weights) and all(full[n].shape == weights[n].shape for n in full)
    middle = load_file(str(tmp_path / "split/checkpoints" / f"step-{k}" / EMA_FILE))
    assert any(not torch.equal(middle[n], full[n]) for n in full)  # the resumed run did update it
    state = json.loads((tmp_path / "full/checkpoints" / f"step-{2 * k}/trainer_state.json").read_text())
    assert state["ema_decay"] == DECAY and state["ema_every"] == 1


@pytest.fixture(scope="module")
def ema_run(small_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema-run")
    cfg = tiny_config(small_tokenizer, f"optim.ema_decay={DECAY}", "run.max_steps=4", "run.save_every=2")
    train(cfg, out)
    return out


@pytest.fixture(scope="module")
def raw_run(small_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw-run")
    train(tiny_config(small_tokenizer, "run.max_steps=1", "run.save_every=1"), out)
    return out


def test_a_missing_or_cut_short_ema_file_is_a_broken_checkpoint(ema_run, tmp_path):
    import shutil

    folder = tmp_path / "step-4"
    shutil.copytree(ema_run / "checkpoints/step-4", folder)
    assert ckpt.checkpoint_problem(folder) is None
    data = (folder / EMA_FILE).read_bytes()
    (folder / EMA_FILE).write_bytes(data[:-10])
    assert "ema.safetensors is cut short" in ckpt.checkpoint_problem(folder)
    (folder / EMA_FILE).unlink()
    assert "ema.safetensors is missing" in ckpt.checkpoint_problem(folder)


def _loss(bb) -> torch.Tensor:
    """The reconstruction loss of a fixed batch and plan: a function of all the weights."""
    batch = bb.prepare_t2i([ShapesImageText(32, 0, 8)[i] for i in range(2)])
    gen = torch.Generator().manual_seed(0)
    plan = ground_and_plan(bb, batch, preset("segros"), sample_ratio(bb, len(batch), gen), gen)
    torch.manual_seed(1)  # any other random draw: the same for every model compared
    with torch.no_grad():
        return bb.reconstruction_loss(batch, plan)


def test_weights_ema_loads_the_ema_tensors(ema_run, raw_run):
    raw = load_backbone(ema_run).eval()
    ema = load_backbone(ema_run, weights="ema").eval()
    tensors = load_file(str(ema_run / "checkpoints/step-4" / EMA_FILE))
    by_hand = load_backbone(ema_run).eval()
    with torch.no_grad():
        for name, param in by_hand.named_parameters():
            if name in tensors:
                param.copy_(tensors[name])
    assert torch.equal(_loss(ema), _loss(by_hand))
    assert not torch.equal(_loss(ema), _loss(raw))
    for name, value in ema.state_dict().items():
        assert torch.equal(value, by_hand.state_dict()[name]), name
    with pytest.raises(ValueError, match="no EMA weights.*--weights raw"):
        load_backbone(raw_run, weights="ema")


def test_commands_refuse_ema_of_a_run_without_one_in_one_line(raw_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    generate = ["generate", "--checkpoint", str(raw_run), "--benchmark", "t2i-compbench",
                "--prompts", str(prompts), "--out", str(tmp_path / "g")]  # fmt: skip
    assert main([*generate, "--weights", "ema"]) != 0
    assert main(["eval", "checkpoint", str(raw_run), "--weights", "ema", "--out", str(tmp_path / "e")]) != 0
    export = ["export", str(raw_run), "--format", "hub", "--out", str(tmp_path / "x")]
    assert main([*export, "--weights", "ema"]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 3 and all("holds no EMA weights" in line for line in lines), lines


def test_generate_with_ema_weights_differs_from_raw(ema_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    pictures = {}
    for weights in ("raw", "ema"):
        out = tmp_path / weights
        args = ["generate", "--checkpoint", str(ema_run), "--benchmark", "t2i-compbench", "--prompts",
                str(prompts), "--out", str(out), "--samples", "1", "--weights", weights]  # fmt: skip
        assert main(args) == 0
        (image,) = sorted(p for p in out.rglob("*.png"))
        pictures[weights] = image.read_bytes()
    assert pictures["raw"] != pictures["ema"]


def test_eval_checkpoint_with_ema_weights_says_so(ema_run, tmp_path):
    from segros.data.shapes_prompts import load_prompts
    from segros.eval.checkpoint import evaluate_checkpoint

    records = load_prompts()[:2]
    ema = evaluate_checkpoint(ema_run, tmp_path / "ema", records, samples=1, progress=False, weights="ema")
    raw = evaluate_checkpoint(ema_run, tmp_path / "raw", records, samples=1, progress=False)
    assert ema["weights"] == "ema" and raw["weights"] == "raw" and ema["images"] == raw["images"] == 2
    pictures = [sorted(p.read_bytes() for p in (tmp_path / w).rglob("*.png")) for w in ("ema", "raw")]
    assert pictures[0] != pictures[1]
    again = evaluate_checkpoint(ema_run, tmp_path / "ema", records, samples=1, progress=False)
    assert not again.get("reused") and again["weights"] == "raw"  # raw over an EMA evaluation: redone


def test_an_evaluation_of_other_weights_is_not_reused(ema_run, tmp_path):
    from segros.eval.checkpoint import saved_evaluation

    summary = {"checkpoint": str(ema_run / "checkpoints/step-4"), "samples": 1, "seed": 0, "prompts": 3,
               "decoding": {"guidance_scale": None, "steps": None}}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))  # written before --weights existed
    assert saved_evaluation(ema_run, tmp_path, 3, 1, 0) is not None
    assert saved_evaluation(ema_run, tmp_path, 3, 1, 0, weights="ema") is None
    (tmp_path / "summary.json").write_text(json.dumps(summary | {"weights": "ema"}))
    assert saved_evaluation(ema_run, tmp_path, 3, 1, 0, weights="ema") is not None


def test_export_with_ema_weights(ema_run, tmp_path):
    out = tmp_path / "hub"
    assert main(["export", str(ema_run), "--format", "hub", "--weights", "ema", "--out", str(out)]) == 0
    exported, ema = load_backbone(out), load_backbone(ema_run, weights="ema")
    for name, value in ema.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name
    assert not (out / EMA_FILE).exists()  # the EMA is the exported model's weights

    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict()["segros"]["weights"] == "ema"
    assert f"EMA of the trained weights (decay {DECAY})" in card.text


# --- FSDP2: each process averages its shards; gathered at save, cut again at resume -------------
def test_fsdp2_ema_of_the_shards_is_gathered_and_resumes_exactly(launch_env, tmp_path):  # noqa: F811
    """Two processes over gloo (tests/test_engines.py's launcher; about 40 s). The EMA
    saved at each step follows the formula from the previous one and the gathered weights, which
    fails if a shard were averaged or gathered in the wrong place, and resuming from step 2 gives
    step 3's EMA bit for bit; the checkpoint's EMA also loads on one process."""
    from test_engines import CONFIGS, accelerate, killed_after

    steps = ["run.max_steps=3", "run.save_every=1", "run.keep_last=3", "optim.schedule_steps=3",
             "run.picture_every=0", "run.progress=off", "logging.tensorboard=false",
             f"optim.ema_decay={DECAY}"]  # fmt: skip
    command = ["-m", "segros.cli", "train", "--config", str(CONFIGS["openuni"])]
    run = tmp_path / "straight"
    accelerate(launch_env, "fsdp2", *command, "--out", str(run), *steps)
    folders = {k: run / "checkpoints" / f"step-{k}" for k in (1, 2, 3)}
    assert ckpt.load_trainer_state(folders[3])["engine"] == "fsdp2"
    ema = {k: load_file(str(f / EMA_FILE)) for k, f in folders.items()}
    weights = {k: load_file(str(f / "model.safetensors")) for k, f in folders.items()}
    assert ema[1] and set(ema[1]) < set(weights[1])  # the trainable parameters only, plain names
    for k in (2, 3):
        for name, value in ema[k].items():
            assert value.shape == weights[k][name].shape, name
            expected = DECAY * ema[k - 1][name] + (1 - DECAY) * weights[k][name]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6, msg=name)
    resumed = killed_after(run, 2, tmp_path / "resumed")
    accelerate(launch_env, "fsdp2", *command, "--out", str(resumed), "--resume", *steps)
    again = load_file(str(resumed / "checkpoints/step-3" / EMA_FILE))
    assert again.keys() == ema[3].keys()
    assert all(torch.equal(again[n], ema[3][n]) for n in again)
    # on one process (no launcher) the gathered tensors load as they are
    from segros.train.config import load_config

    one = Trainer(load_config(CONFIGS["openuni"], steps), killed_after(run, 2, tmp_path / "one"), resume=True)
    one._unlock_folder()
    assert one.engine == "single" and one.ema.tensors.keys() == ema[2].keys()
    assert all(torch.equal(one.ema.tensors[n], ema[2][n]) for n in ema[2])
