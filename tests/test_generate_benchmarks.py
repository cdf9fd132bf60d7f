"""``segros generate``: benchmark prompt files in, each scorer's layout out, reproducible, resumable."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segros.cli import main
from segros.eval.benchmarks import PromptFileError, image_grid, read_benchmark_prompts
from segros.shipped import PRETRAINED_TINY

SHIPPED = PRETRAINED_TINY
# a folder with the public benchmark prompt files (geneval/, dpg-bench/, t2i-compbench/), if you have one
BENCHMARKS = Path(os.environ.get("SEGROS_BENCHMARK_DIR", "/nonexistent"))


def _geneval_file(tmp_path: Path) -> Path:
    """The real GenEval metadata when SEGROS_BENCHMARK_DIR has it, else lines in its format."""
    real = BENCHMARKS / "geneval/evaluation_metadata.jsonl"
    if real.is_file():
        return real
    path = tmp_path / "evaluation_metadata.jsonl"
    rows = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {"tag": "colors", "include": [{"class": "cow", "count": 1}], "prompt": "a photo of a red cow"},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _generate(*args: str, checkpoint: Path = SHIPPED) -> int:
    return main(["generate", "--checkpoint", str(checkpoint), "--batch-size", "3", *args])


def diverse_copy(folder: Path) -> Path:
    """The shipped model with sampling noise on (temperature 1, noise on the unmasking order): its
    default decoding is close to the mode, so samples of one prompt can coincide."""
    shutil.copytree(SHIPPED, folder)
    config = json.loads((folder / "config.json").read_text())
    config["options"] |= {"temperature": 1.0, "generation_temperature": 1.0, "guidance_scale": 1.0}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_geneval_layout_and_same_seed_same_pixels(tmp_path):
    prompts = _geneval_file(tmp_path)
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["--benchmark", "geneval", "--prompts", str(prompts), "--out", str(out)]
        assert _generate(*args, "--limit", "2", "--samples", "2") == 0
    first = json.loads(prompts.read_text().splitlines()[0])
    assert json.loads((tmp_path / "a/00000/metadata.jsonl").read_text()) == first
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png"))
    assert files == [
        "00000/samples/0.png",
        "00000/samples/1.png",
        "00001/samples/0.png",
        "00001/samples/1.png",
    ]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_dpg_writes_one_two_by_two_grid_per_item(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"partiprompts1.txt": "a red circle", "coco7.txt": "two blue squares"}))
    out = tmp_path / "dpg"
    model = diverse_copy(tmp_path / "model")
    args = ["--benchmark", "dpg", "--prompts", str(prompts), "--out", str(out)]
    assert _generate(*args, checkpoint=model) == 0
    assert sorted(p.name for p in out.iterdir()) == ["coco7.png", "partiprompts1.png"]
    grid = np.asarray(Image.open(out / "coco7.png"))
    side = json.loads((SHIPPED / "config.json").read_text())["options"]["image_size"]
    assert grid.shape == (2 * side, 2 * side, 3)  # four samples, 2 x 2
    quarters = [grid[:side, :side], grid[:side, side:], grid[side:, :side], grid[side:, side:]]
    assert not all(np.array_equal(quarters[0], q) for q in quarters[1:])  # four different samples


def test_t2i_compbench_names_and_resume_after_a_kill(tmp_path):
    prompts = tmp_path / "color_val.txt"
    prompts.write_text("a green bench and a blue bowl\n\na red cake\n")
    out = tmp_path / "comp"
    args = ["--benchmark", "t2i-compbench", "--prompts", str(prompts), "--out", str(out), "--samples", "2"]
    assert _generate(*args) == 0
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == [
        "a green bench and a blue bowl_000000.png",
        "a green bench and a blue bowl_000001.png",
        "a red cake_000002.png",
        "a red cake_000003.png",
    ]
    # a killed run: one image missing, another untouched; --skip-existing makes only the missing one
    (out / "samples" / names[3]).unlink()
    kept = (out / "samples" / names[0]).stat().st_mtime_ns
    assert _generate(*args, "--skip-existing") == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == names
    assert (out / "samples" / names[0]).stat().st_mtime_ns == kept


@pytest.mark.parametrize(
    ("benchmark", "content", "message"),
    [
        ("geneval", '{"prompt": "a cow"}\nnot json\n', r":2: not a JSON line"),
        ("geneval", '{"tag": "colors"}\n', r":1: no prompt"),
        ("dpg", '["a list"]', "expected"),
        ("dpg", '{"x.txt": "  "}', "x.txt: no prompt"),
        ("t2i-compbench", "\n\n", "holds no prompts"),
    ],
)
def test_bad_prompt_files_stop_with_file_and_line(tmp_path, benchmark, content, message):
    path = tmp_path / "prompts"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message):
        read_benchmark_prompts(path, benchmark)
    code = main(["generate", "--checkpoint", str(SHIPPED), "--benchmark", benchmark, "--prompts", str(path),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and not (tmp_path / "out").exists()  # nothing loaded, nothing written


def test_image_grid_tiles_row_by_row():
    tiles = [np.full((2, 3, 3), k, dtype=np.uint8) for k in range(5)]
    grid = image_grid(tiles)
    assert grid.shape == (4, 9, 3)  # 5 images: 3 columns, 2 rows
    assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 1 and grid[0, 6, 0] == 2 and grid[2, 0, 0] == 3
    assert grid[2, 3, 0] == 4 and grid[2, 6, 0] == 0  # the empty cell stays black


@pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="set SEGROS_BENCHMARK_DIR to the benchmark prompt files")
def test_the_real_prompt_files_read_completely():
    assert len(read_benchmark_prompts(BENCHMARKS / "geneval/evaluation_metadata.jsonl", "geneval")) == 553
    dpg = read_benchmark_prompts(BENCHMARKS / "dpg-bench/prompts.json", "dpg")
    assert len(dpg) == 1065 and len({r["key"] for r in dpg}) == 1065
    assert all(not r["key"].endswith(".txt") for r in dpg)
    color = BENCHMARKS / "t2i-compbench/color_val.txt"
    lines = [line for line in color.read_text().splitlines() if line.strip()]
    prompts = [r["prompt"] for r in read_benchmark_prompts(color, "t2i-compbench")]
    assert prompts == [line.strip() for line in lines]
