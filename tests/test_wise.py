"""WISE's layout: its ``data/*.json`` prompt files in, ``OUT/<prompt_id>.png`` out (what WISE's
``gpt_eval.py --image_dir OUT`` opens), one image per prompt, resumable; bad files are named."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from segros.cli import main
from segros.eval.benchmarks import PromptFileError, read_benchmark_prompts
from segros.shipped import PRETRAINED_TINY

# records in WISE's format (PKU-YuanGroup/WISE data/*.json: a JSON list; gpt_eval.py reads
# prompt_id, Prompt, Explanation and Subcategory), numbered as the real files are (from 1)
WISE = [
    {"prompt_id": 1, "Prompt": "The shape with three sides, painted red", "Explanation": "A red triangle",
     "Category": "Cultural knowledge", "Subcategory": "Shapes"},
    {"prompt_id": 2, "Prompt": "A circle the colour of a clear sky", "Explanation": "A blue circle",
     "Category": "Natural science", "Subcategory": "Colours"},
    {"prompt_id": 10, "Prompt": "A square the colour of grass", "Explanation": "A green square",
     "Category": "Natural science", "Subcategory": "Colours"},
]  # fmt: skip


def _write(path, items) -> str:
    path.write_text(json.dumps(items, indent=2))
    return str(path)


def _generate(prompts: str, out, *extra: str) -> int:
    return main(["generate", "--checkpoint", str(PRETRAINED_TINY), "--benchmark", "wise", "--prompts",
                 prompts, "--out", str(out), "--batch-size", "2", "--steps", "4", *extra])  # fmt: skip


def test_wise_writes_one_image_per_prompt_id_and_resumes(tmp_path):
    prompts = _write(tmp_path / "natural_science.json", WISE)
    assert _generate(prompts, tmp_path / "a") == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["1.png", "10.png", "2.png"]
    with Image.open(tmp_path / "a" / "10.png") as im:
        assert im.size[0] == im.size[1] and im.mode == "RGB"
    before = {f: (tmp_path / "a" / f).read_bytes() for f in files}
    (tmp_path / "a" / "2.png").unlink()
    assert _generate(prompts, tmp_path / "a", "--skip-existing") == 0
    assert (tmp_path / "a" / "2.png").is_file()
    assert (tmp_path / "a" / "1.png").read_bytes() == before["1.png"]  # left alone
    assert _generate(prompts, tmp_path / "b") == 0  # same seed, same bytes
    assert all((tmp_path / "b" / f).read_bytes() == before[f] for f in files)


def test_wise_reads_its_fields(tmp_path):
    records = read_benchmark_prompts(_write(tmp_path / "w.json", WISE), "wise")
    assert [(r["key"], r["prompt"]) for r in records] == [(str(w["prompt_id"]), w["Prompt"]) for w in WISE]
    assert records[0]["Explanation"] == "A red triangle" and records[0]["Subcategory"] == "Shapes"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"1": "a prompt"}, "expected a JSON list"),
        ([WISE[0], WISE[0]], "prompt_id 1 appears twice"),
        ([{**WISE[0], "prompt_id": "one"}], "prompt_id must be a whole number"),
        ([{k: v for k, v in WISE[0].items() if k != "Prompt"}], "record 0: no prompt"),
    ],
)
def test_bad_wise_files_are_named(tmp_path, items, message):
    with pytest.raises(PromptFileError, match=message):
        read_benchmark_prompts(_write(tmp_path / "bad.json", items), "wise")


def test_wise_refuses_several_samples(tmp_path, capsys):
    assert _generate(_write(tmp_path / "w.json", WISE), tmp_path / "o", "--samples", "2") == 2
    assert "one image per prompt" in capsys.readouterr().err
