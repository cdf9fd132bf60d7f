"""``segros eval checkpoint`` and the demo's bookkeeping: real checkpoints, real processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segros.apps.demo import Stopwatch
from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions
from segros.eval.checkpoint import evaluate_checkpoint, resolve
from segros.shipped import PRETRAINED_TINY


@pytest.fixture(scope="module")
def checkpoint(small_tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    model = TinyBackbone.from_options(
        TinyOptions(image_tokenizer=str(small_tokenizer), image_size=32, generation_steps=2)
    )
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(path)
    return path


def test_eval_checkpoint_cli_scores_every_prompt_and_prints_the_summary_last(checkpoint, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "segros.cli", "eval", "checkpoint", str(checkpoint), "--samples", "1"]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["images"] == 319
    assert set(summary) == {"overall", "tags", "seen", "held_out", "images"}
    assert set(summary["tags"]) == {
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    }
    assert len([p for p in out.iterdir() if p.is_dir()]) == 319
    assert 0.0 <= summary["overall"] <= 1.0
    # a second call reuses the scored folder and prints the same summary
    again = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, check=True)
    assert "(reused)" in again.stdout
    assert json.loads(again.stdout.strip().splitlines()[-1]) == summary


def test_eval_checkpoint_cli_rejects_a_missing_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "segros.cli", "eval", "checkpoint", str(tmp_path / "nope")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_pretrained_names_the_shipped_model():
    assert resolve("pretrained") == PRETRAINED_TINY
    assert (PRETRAINED_TINY / "model.safetensors").is_file()


def test_evaluation_is_redone_when_the_settings_differ(checkpoint, tmp_path):
    records = [
        {
            "tag": "single_object",
            "include": [{"class": "circle", "count": 1}],
            "prompt": "a photo of a circle",
        }
    ]
    first = evaluate_checkpoint(checkpoint, tmp_path, records, samples=1, seed=0, progress=False)
    assert first["images"] == 1 and "reused" not in first
    assert evaluate_checkpoint(checkpoint, tmp_path, records, samples=1, seed=0, progress=False)["reused"]
    # the summary names its checkpoint relative to its own folder (a committed report names no
    # machine's paths); one written the older way, with the absolute path, is still reused
    from segros.eval.checkpoint import checkpoint_record

    assert checkpoint_record(PRETRAINED_TINY, tmp_path) == "segros/assets/tiny-pretrained"  # shipped
    recorded = first["checkpoint"]
    assert not Path(recorded).is_absolute() and (tmp_path / recorded).resolve() == Path(checkpoint).resolve()
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["checkpoint"] = str(Path(checkpoint).resolve())
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert evaluate_checkpoint(checkpoint, tmp_path, records, samples=1, seed=0, progress=False)["reused"]
    other = evaluate_checkpoint(checkpoint, tmp_path, records, samples=2, seed=0, progress=False)
    assert other["images"] == 2 and "reused" not in other
    assert other["decoding"] == {"guidance_scale": None, "steps": None}


def test_decoding_overrides_reach_the_sampler_and_are_part_of_the_evaluation(checkpoint, tmp_path):
    records = [
        {
            "tag": "colors",
            "include": [{"class": "circle", "count": 1, "color": "red"}],
            "prompt": "a photo of a red circle",
        }
    ]
    run = lambda folder, **decoding: evaluate_checkpoint(  # noqa: E731
        checkpoint, tmp_path / folder, records, samples=4, seed=0, progress=False, **decoding
    )
    default, sharp = run("default"), run("sharp", guidance_scale=8.0, steps=3)
    assert sharp["decoding"] == {"guidance_scale": 8.0, "steps": 3} and "reused" not in sharp
    images = [sorted((tmp_path / f / "00000" / "samples").glob("*.png")) for f in ("default", "sharp")]
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(*images, strict=True))
    assert run("sharp", guidance_scale=8.0, steps=3)["reused"]
    assert "reused" not in run("sharp", guidance_scale=1.0, steps=3)  # another scale: redone
    assert default["decoding"] == {"guidance_scale": None, "steps": None}
    with pytest.raises(ValueError, match="guidance scale"):
        run("bad", guidance_scale=-1.0)
    with pytest.raises(ValueError, match="decoding steps"):
        run("bad", steps=0)


def test_eval_checkpoint_cli_names_a_bad_decoding_option(checkpoint, tmp_path):
    cmd = [sys.executable, "-m", "segros.cli", "eval", "checkpoint", str(checkpoint), "--out", str(tmp_path)]
    done = subprocess.run([*cmd, "--guidance", "-2"], capture_output=True, text=True)
    assert done.returncode == 2 and "--guidance must be a finite number >= 0" in done.stderr
    done = subprocess.run([*cmd, "--decode-steps", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "--decode-steps must be >= 1" in done.stderr


def test_stopwatch_keeps_the_first_wall_time_of_reused_stages(tmp_path):
    record = tmp_path / "stage_times.json"
    clock = Stopwatch(record)
    clock.run("stage", lambda: sum(range(10**5)))
    first = clock.seconds["stage"]
    assert json.loads(record.read_text()) == {"stage": first}
    again = Stopwatch(record)
    again.run("stage", lambda: None, done=lambda: True)
    assert again.seconds["stage"] == first and again.reused == {"stage"}
    fresh = Stopwatch(record)
    fresh.run("stage", lambda: None, done=lambda: False)  # recomputed: its own new time
    assert fresh.reused == set() and fresh.seconds["stage"] != first


def test_quick_then_full_demo_in_the_same_folder_do_not_collide(tmp_path, monkeypatch):
    """The newcomer sequence `demo --quick` then `demo` (same --out) must work: the two runs have
    different data sizes, which made the full run refuse to resume the quick run's checkpoints."""
    import segros.apps.demo as demo

    cache = tmp_path / "cache"
    small = {"train_scenes": 64, "finetune_steps": 2, "samples": 1, "prompts_per_tag": 1}
    small |= {"pointing_scenes": 4, "pretrain_steps": 2}
    monkeypatch.setattr(demo, "settings", lambda quick: small | {"train_scenes": 48 if quick else 80})
    out = tmp_path / "demo"
    demo.run_demo(out, quick=True, cache=cache)
    report = demo.run_demo(out, quick=False, cache=cache)
    assert report.is_file()
    assert "Decoding: 16 MaskGIT steps, guidance 3," in report.read_text()  # the shipped model's own
    assert (out / "quick" / "runs" / "sft-seed0").is_dir() and (out / "full" / "runs" / "sft-seed0").is_dir()
    saved = json.loads((out / "report.json").read_text())
    assert saved["quick"] is False and saved["seeds"] == [0]
    # a rerun reuses every stage and reports the time each took when first computed
    demo.run_demo(out, quick=False, cache=cache)
    again = json.loads((out / "report.json").read_text())
    assert set(again["reused"]) >= {"fine-tune sft seed 0", "evaluate sft seed 0"}
    assert again["seconds"]["fine-tune sft seed 0"] == saved["seconds"]["fine-tune sft seed 0"]
    # a method whose settings changed is fine-tuned again, not reused; its old run is kept aside
    monkeypatch.setitem(demo.METHODS, "reca", [*demo.METHODS["reca"], "optim.lr=1e-4"])
    demo.run_demo(out, quick=False, cache=cache)
    changed = json.loads((out / "report.json").read_text())
    assert "fine-tune reca seed 0" not in changed["reused"] and "fine-tune sft seed 0" in changed["reused"]
    assert "evaluate reca seed 0" not in changed["reused"]  # its new checkpoint is evaluated anew
    assert "lr: 0.0001" in (out / "full" / "runs" / "reca-seed0" / "config.yaml").read_text()
    assert (out / "full" / "runs" / "reca-seed0.stale-1" / "checkpoints").is_dir()


def test_report_says_when_every_score_is_at_the_floor():
    from segros.apps.report import near_floor

    low = {"sft": [{"overall": 0.01}], "segros": [{"overall": 0.02}, {"overall": 0.0}]}
    assert near_floor(low)
    assert not near_floor(low | {"reca": [{"overall": 0.3}]})


def test_the_report_states_the_decoding_a_checkpoint_uses(checkpoint, tmp_path):
    from segros.apps.report import decoding_settings

    assert decoding_settings(checkpoint).startswith("2 MaskGIT steps, guidance 3, temperature 0.7, no noise")
    model = TinyBackbone.from_pretrained(checkpoint, guidance_scale=1.5, generation_temperature=2.0)
    model.save_pretrained(tmp_path / "other")
    assert decoding_settings(tmp_path / "other").startswith(
        "2 MaskGIT steps, guidance 1.5, temperature 0.7, unmasking-order noise 2"
    )


def test_demo_from_another_pretrained_model_with_some_methods(checkpoint, tmp_path, monkeypatch):
    """`segros demo --pretrained RUN --methods sft`: every run starts from that checkpoint, only SFT
    is fine-tuned, the report names the start, and the pointing table has the pretrained rows only."""
    import segros.apps.demo as demo

    small = {"train_scenes": 32, "finetune_steps": 2, "samples": 1, "prompts_per_tag": 1}
    monkeypatch.setattr(demo, "settings", lambda quick: small | {"pointing_scenes": 4, "pretrain_steps": 2})
    out = tmp_path / "demo"
    report = demo.run_demo(out, cache=tmp_path / "cache", pretrained=checkpoint, methods=["sft"])
    assert sorted(p.name for p in (out / "full" / "runs").iterdir()) == ["sft-seed0"]
    assert demo.world_of(out / "full" / "runs" / "sft-seed0") == demo.world_of(checkpoint)  # a run folder too
    saved_cfg = (out / "full" / "runs" / "sft-seed0" / "config.yaml").read_text()
    assert f"init_from: {checkpoint}" in saved_cfg
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["results"]) == {"pretrained", "sft"}
    assert set(saved["paired_differences"]) == {"sft - pretrained"}
    assert saved["pointing"] and all(k.startswith("pretrained, ") for k in saved["pointing"])
    text = report.read_text()
    assert text.count("SFT fine-tuning of the same pretrained TinyUMM") == 1 and "RecA" not in text
    assert f"Pretrained model: {os.path.relpath(checkpoint, out)}." in text  # no machine path
    summary = (out / "full" / "eval" / "pretrained-seed0" / "summary.json").read_text()
    assert '"checkpoint": "../../../../' in summary


def test_demo_refuses_a_start_that_is_not_a_tiny_model_and_unknown_methods(tmp_path):
    import segros.apps.demo as demo

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"backbone": "showo"}))
    with pytest.raises(ValueError, match="a showo checkpoint"):
        demo.pretrained_checkpoint(tmp_path, None, other)
    with pytest.raises(ValueError, match="no segros checkpoint"):
        demo.pretrained_checkpoint(tmp_path, None, tmp_path / "missing")
    with pytest.raises(ValueError, match="methods must be some of"):
        demo.run_demo(tmp_path / "demo", methods=["dpo"])
