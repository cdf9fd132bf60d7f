"""The pre-encoded image cache on the tiny configs of every backbone: training from it gives the
losses of training from images; a cache made with another encoder or data is refused, naming
what differs; a killed ``segros cache`` resumes and never leaves a shard training would read."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_model_section

from segros.backbones.base import Backbone
from segros.cli import main
from segros.train.config import apply_overrides, validate
from segros.train.loop import Trainer, train

SCENES = 24


def _raw(name, request, small_tokenizer, *overrides):
    raw = {
        "model": tiny_model_section(name, request, small_tokenizer),
        "method": {"preset": "segros"},
        "data": {"source": "shapes", "batch_size": 4, "i2t": "shapes", "shapes": {"scenes": SCENES}},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "run": {"max_steps": 3, "save_every": 3, "picture_every": 0, "log_every": 1, "progress": False},
        "logging": {"tensorboard": False},
    }
    return apply_overrides(raw, list(overrides))


def _cache(raw, out, *extra):
    config = out.parent / f"{out.name}.yaml"
    config.write_text(json.dumps(raw))  # JSON is YAML
    return main(["cache", "--config", str(config), "--out", str(out), "--shard-size", "10", *extra])


@pytest.mark.parametrize("name", ["tiny", "showo", "harmon"])
def test_training_from_the_cache_gives_the_losses_of_training_from_images(
    name, request, small_tokenizer, tmp_path
):
    raw = _raw(name, request, small_tokenizer)
    assert _cache(raw, tmp_path / "cache") == 0
    index = json.loads((tmp_path / "cache/index.json").read_text())
    assert index["count"] == SCENES and len(index["shards"]) == 3
    plain = train(validate(raw), tmp_path / "images")
    cached = train(validate(apply_overrides(raw, [f"data.cache={tmp_path / 'cache'}"])), tmp_path / "cached")
    assert len(plain.losses) == 3 and all(math.isfinite(x) for x in plain.losses)
    if name == "harmon":  # VAE latents of another batch composition: float rounding only
        assert cached.losses == pytest.approx(plain.losses, rel=1e-4)
    else:  # codes: exactly
        assert cached.losses == plain.losses


def test_a_cache_made_with_another_encoder_or_data_is_refused(request, small_tokenizer, tmp_path):
    raw = _raw("showo", request, small_tokenizer)
    assert _cache(raw, tmp_path / "cache") == 0
    # another seed: other random MAGVIT weights
    other = apply_overrides(raw, ["run.seed=1", f"data.cache={tmp_path / 'cache'}"])
    with pytest.raises(
        ValueError, match=r"another encoder or data: encoders\.vq: cache '[0-9a-f]+', this run"
    ):
        Trainer(validate(other), tmp_path / "a")
    other = apply_overrides(raw, ["data.shapes.seed=3", f"data.cache={tmp_path / 'cache'}"])
    with pytest.raises(ValueError, match=r"data\.shapes\.seed: cache 0, this run 3"):
        Trainer(validate(other), tmp_path / "b")
    # web captions at other rates than the cache's
    web = apply_overrides(raw, ["data.shapes.caption_style=web"])
    assert _cache(web, tmp_path / "web") == 0
    other = apply_overrides(web, ["data.shapes.web_noise.wrong=0.3", f"data.cache={tmp_path / 'web'}"])
    with pytest.raises(ValueError, match=r"data\.shapes\.web_noise\.wrong: cache 0\.1, this run 0\.3"):
        Trainer(validate(other), tmp_path / "w")
    # another backbone entirely
    tiny = apply_overrides(_raw("tiny", request, small_tokenizer), [f"data.cache={tmp_path / 'cache'}"])
    with pytest.raises(ValueError, match=r"backbone: cache 'showo', this run 'tiny'"):
        Trainer(validate(tiny), tmp_path / "c")


def test_a_killed_cache_run_resumes_and_training_never_reads_it_half_done(
    small_tokenizer, tmp_path, monkeypatch, capsys
):
    raw = _raw("tiny", None, small_tokenizer)
    calls = []
    original = Backbone.cache_fields

    def dies_on_the_second_shard(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while encoding shard 1
        return original(self, images)

    monkeypatch.setattr(Backbone, "cache_fields", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        _cache(raw, tmp_path / "cache")
    capsys.readouterr()
    written = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != ".segros-lock")  # runlock's
    assert written == ["shard-00000.safetensors"]
    with pytest.raises(FileNotFoundError, match="did not finish"):
        Trainer(validate(apply_overrides(raw, [f"data.cache={tmp_path / 'cache'}"])), tmp_path / "x")
    # a shard cut short (a crash while the OS wrote it) is encoded again, not read
    shard = tmp_path / "cache/shard-00000.safetensors"
    monkeypatch.setattr(Backbone, "cache_fields", original)
    assert _cache(raw, tmp_path / "cache") == 0
    assert json.loads((tmp_path / "cache/index.json").read_text())["count"] == SCENES
    assert "encoded 10/24" not in capsys.readouterr().err  # shard 0 was kept, not encoded again
    before = {k: v.clone() for k, v in load_file(str(shard)).items()}  # not a view of the file
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    (tmp_path / "cache/index.json").unlink()
    assert _cache(raw, tmp_path / "cache") == 0
    assert "encoded 10/24" in capsys.readouterr().err  # only shard 0, again
    after = load_file(str(shard))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    plain = train(validate(raw), tmp_path / "images")
    cached = train(validate(apply_overrides(raw, [f"data.cache={tmp_path / 'cache'}"])), tmp_path / "cached")
    assert cached.losses == plain.losses


def test_a_cache_of_a_reweighted_world_is_read_back_by_the_same_weights_only(
    request, small_tokenizer, tmp_path
):
    raw = _raw("tiny", request, small_tokenizer, "data.shapes.kind_weights=[1, 1, 1, 5, 1]")
    assert _cache(raw, tmp_path / "cache") == 0
    # the weights are a tuple in the config and a list in the index's JSON: the same data
    same = apply_overrides(raw, [f"data.cache={tmp_path / 'cache'}"])
    assert len(train(validate(same), tmp_path / "same").losses) == 3
    weights = "data.shapes.kind_weights=[1, 1, 1, 1, 1]"
    other = apply_overrides(raw, [weights, f"data.cache={tmp_path / 'cache'}"])
    cached = r"data\.shapes\.kind_weights: cache \[1\.0, 1\.0, 1\.0, 5\.0, 1\.0\]"
    with pytest.raises(ValueError, match=cached):
        Trainer(validate(other), tmp_path / "other")


def test_two_processes_write_the_one_process_cache(small_tokenizer, tmp_path):
    """``segros cache`` under torchrun (2 CPU processes, gloo): each writes its shards, the first
    the index; shards, index and bad records are the one-process cache's, record for record."""
    import os
    import subprocess
    import sys

    from _data_files import CORRUPT, pixels, png_bytes

    lines = []
    for i in range(13):
        (tmp_path / f"{i}.png").write_bytes(CORRUPT if i == 6 else png_bytes(pixels(i, (20, 24))))
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"a red circle {i}"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    raw = _raw("tiny", None, small_tokenizer, "data.source=files", f"data.files.path={tmp_path / 'm.jsonl'}")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(raw))
    args = ["cache", "--config", str(config), "--shard-size", "4"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "segros.cli", *args, "--out", str(tmp_path / "two")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "process 1/2: encoded 8/13" in proc.stderr and "process 0/2: encoded 12/13" in proc.stderr
    import re

    def same(value: dict) -> str:  # PIL's reason names the BytesIO it failed on by its address
        return re.sub(r"object at 0x[0-9a-f]+", "object", json.dumps(value, sort_keys=True))

    one, two = (json.loads((tmp_path / d / "index.json").read_text()) for d in ("one", "two"))
    assert same(one) == same(two)
    assert one["count"] == 13 and [b["index"] for b in one["bad"]] == [6] and len(one["shards"]) == 4
    from safetensors import safe_open

    for name in one["shards"]:
        a, b = (safe_open(str(tmp_path / d / name), "pt") for d in ("one", "two"))
        assert same(a.metadata()) == same(b.metadata())
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118
