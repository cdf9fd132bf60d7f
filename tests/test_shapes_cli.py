"""The three commands, end to end: render-eval, eval shapes, make-dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from segros.cli import main
from segros.data.shapes import HELD_OUT_PAIRS, ShapeObject
from segros.data.shapes_prompts import load_prompts
from segros.eval.geneval import TAGS

SRC = Path(__file__).resolve().parents[1] / "src"
# GenEval's own metadata file, if you have it: $SEGROS_BENCHMARK_DIR/geneval/evaluation_metadata.jsonl
BENCHMARKS = Path(os.environ.get("SEGROS_BENCHMARK_DIR", "/nonexistent"))
GENEVAL_METADATA = BENCHMARKS / "geneval/evaluation_metadata.jsonl"


def _segros(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "segros.cli", *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


def test_render_eval_then_eval_shapes_as_real_commands(tmp_path):
    out = tmp_path / "gt"
    _segros("shapes", "render-eval", "--out", str(out), "--samples-per-prompt", "1", "--seed", "3")
    n_prompts = len(load_prompts())
    assert (out / "00000" / "metadata.jsonl").is_file()
    assert (out / f"{n_prompts - 1:05d}" / "samples" / "0.png").is_file()
    assert json.loads((out / "00005" / "metadata.jsonl").read_text()) == load_prompts()[5]
    with Image.open(out / "00000" / "samples" / "0.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    summary = json.loads(_segros("eval", "shapes", str(out)).strip().splitlines()[-1])
    assert set(summary) == {"overall", "tags", "images"} and set(summary["tags"]) == set(TAGS)
    assert summary["images"] == n_prompts and summary["overall"] >= 0.98
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == n_prompts
    assert set(rows[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}


def test_permuted_colour_renderings_fail_colour_tags(tmp_path, capsys):
    out = tmp_path / "permuted"
    subset = [r for r in load_prompts() if r["tag"] in ("colors", "color_attr", "position")][::3]
    (tmp_path / "subset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in subset))
    args = ["--out", str(out), "--prompts", str(tmp_path / "subset.jsonl"), "--corrupt", "permute-colors"]
    args += ["--samples-per-prompt", "2"]
    assert main(["shapes", "render-eval", *args]) == 0
    assert main(["eval", "shapes", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tags"]["colors"] <= 0.2 and summary["tags"]["color_attr"] <= 0.2
    assert summary["tags"]["position"] >= 0.98


def test_render_eval_is_deterministic(tmp_path):
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in load_prompts()[::10]))
    for name in ("a", "b"):
        out = str(tmp_path / name)
        main(["shapes", "render-eval", "--out", out, "--prompts", str(subset), "--seed", "4"])
    for sub in ("00000", "00012", "00031"):
        assert (tmp_path / "a" / sub / "samples" / "3.png").read_bytes() == (
            tmp_path / "b" / sub / "samples" / "3.png"
        ).read_bytes()


@pytest.mark.skipif(not GENEVAL_METADATA.exists(), reason="GenEval metadata not available")
def test_real_geneval_prompts_are_reported_unsupported(tmp_path, capsys):
    out = tmp_path / "geneval"
    args = ["--out", str(out), "--samples-per-prompt", "1", "--prompts", str(GENEVAL_METADATA)]
    main(["shapes", "render-eval", *args])
    assert main(["eval", "shapes", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "553 unsupported" in lines[-2]
    assert json.loads(lines[-1])["images"] == 0


def test_make_dataset_writes_images_and_records(tmp_path):
    out = tmp_path / "train"
    assert main(["shapes", "make-dataset", "--out", str(out), "--n", "60", "--seed", "2"]) == 0
    records = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(records) == 60
    for rec in records:
        assert set(rec) == {"image", "caption", "objects"}
        with Image.open(out / rec["image"]) as im:
            pixels = im.convert("RGB")
            assert pixels.size == (64, 64)
            for obj in rec["objects"]:
                assert (obj["color"], obj["shape"]) not in HELD_OUT_PAIRS
                mask = ShapeObject.from_json(obj, 64).mask
                ys, xs = mask.nonzero()
                assert tuple(obj["box"]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    again = tmp_path / "again"
    main(["shapes", "make-dataset", "--out", str(again), "--n", "60", "--seed", "2"])
    assert (again / "data.jsonl").read_bytes() == (out / "data.jsonl").read_bytes()
    assert (again / "images" / "000059.png").read_bytes() == (out / "images" / "000059.png").read_bytes()


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "shapes" in text and "eval" in text
