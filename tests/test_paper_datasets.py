"""The paper's datasets, in the layout they ship in, train with the flags docs/data.md gives.

Each test builds a small copy (tests/paper_data.py), checks that the reader finds the published
columns, and runs ``segros train`` for three steps of the tiny model on it.
"""

from __future__ import annotations

import json

import numpy as np
import paper_data
import pytest

from segros.cli import main
from segros.data.formats import open_image_text
from segros.data.llava import LlavaConversations
from segros.data.readers import ImageTextRecord


def train_cli(small_tokenizer, out, *flags: str) -> dict:
    base = [
        f"model.image_tokenizer={small_tokenizer}",
        "model.image_size=32",
        "data.batch_size=4",
        "run.save_every=3",
        "run.log_every=1",
        "run.picture_every=0",
        "run.progress=off",
        "logging.tensorboard=false",
    ]
    assert main(["train", "--out", str(out), "--max-steps", "3", *base, *flags]) == 0
    return json.loads((out / "train_summary.json").read_text())


def test_blip3o_60k_tar_shards_in_the_hub_cache(small_tokenizer, tmp_path):
    repo = paper_data.blip3o_60k(tmp_path / "hub")
    ds = open_image_text(repo)
    assert len(ds) == 36
    record = ds[5]
    assert isinstance(record, ImageTextRecord) and record.caption == "a photo number 5"
    flags = ("data.source=files", f"data.files.path={repo}", "data.i2t=none")
    summary = train_cli(small_tokenizer, tmp_path / "run", *flags)
    assert summary["step"] == 3 and summary["bad_records"] == 0


def test_midjourney_v6_parquet_repository_with_its_prompt_column(small_tokenizer, tmp_path):
    folder = paper_data.midjourney_v6(tmp_path)
    ds = open_image_text(folder, cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == 40 and (ds.image_column, ds.caption_column) == ("image", "prompt")
    record = ds[7]
    np.testing.assert_array_equal(np.asarray(record.image), paper_data.picture(107))  # PNG: exact
    assert record.caption == "a cinematic painting of scene 7 --v 6"
    summary = train_cli(
        small_tokenizer, tmp_path / "run", "data.source=files", f"data.files.path={folder}",
        f"data.files.hf_cache_dir={tmp_path / 'hf-cache'}", "data.i2t=none",
    )  # fmt: skip
    assert summary["step"] == 3 and summary["bad_records"] == 0


def test_midjourney_v6_release_is_links_and_its_img2dataset_shards_train(small_tokenizer, tmp_path):
    """The release holds prompts and image links: reading it says how to fetch the images; the
    shards img2dataset writes from it (tars next to metadata Parquet) train with no column flags."""
    release = paper_data.midjourney_v6_release(tmp_path)
    with pytest.raises(
        ValueError, match=r"links to images \(column 'image_url'\).*img2dataset --url_col image_url"
    ):
        open_image_text(release, cache_dir=str(tmp_path / "hf-cache"))
    shards = paper_data.img2dataset_output(tmp_path, release)
    ds = open_image_text(shards)
    assert len(ds) == 24 and ds[13].caption == "a cinematic painting of scene 13 --v 6"
    flags = ("data.source=files", f"data.files.path={shards}", "data.i2t=none")
    summary = train_cli(small_tokenizer, tmp_path / "run", *flags)
    assert summary["step"] == 3 and summary["bad_records"] == 0


def test_sharegpt_4o_image_text_to_image_json(small_tokenizer, tmp_path):
    path = paper_data.sharegpt_4o_image(tmp_path)
    ds = open_image_text(path)
    assert (ds.image_key, ds.caption_key) == ("output_image", "input_prompt")
    np.testing.assert_array_equal(np.asarray(ds[3].image), paper_data.picture(203))
    assert ds[3].caption == "a poster with the word 3"
    flags = ("data.source=files", f"data.files.path={path}", "data.i2t=none")
    summary = train_cli(small_tokenizer, tmp_path / "run", *flags)
    assert summary["step"] == 3 and summary["bad_records"] == 0


def test_llava_mix665k_with_six_percent_text_only_rows_trains_to_the_end(small_tokenizer, tmp_path):
    """50 conversations, 3 of them text-only (6 %). The 16-record I2T batches read 64 records in
    four steps, more than one pass, so the budget judges the share: counted as bad, 6 % > 1 % would
    stop the run; left out and counted apart, it trains to the end."""
    path, images = paper_data.llava_mix665k(tmp_path, rows=50, text_only=3)
    ds = LlavaConversations(path, images)
    assert (len(ds), ds.text_only) == (47, 3)
    assert "id='000000000000'" in ds[0].key
    out = tmp_path / "run"
    flags = llava_flags(path, images)
    assert main(["train", "--out", str(out), "--max-steps", "4", *_tiny(small_tokenizer), *flags]) == 0
    assert json.loads((out / "train_summary.json").read_text())["step"] == 4


def llava_flags(path, images) -> list[str]:
    return [
        "data.i2t=llava", f"data.i2t_path={path}", f"data.i2t_image_root={images}", "data.i2t_batch_size=16"
    ]  # fmt: skip


def _tiny(small_tokenizer) -> list[str]:
    return [
        f"model.image_tokenizer={small_tokenizer}",
        "model.image_size=32",
        "data.batch_size=4",
        "run.save_every=4",
        "run.picture_every=0",
        "run.progress=off",
        "logging.tensorboard=false",
    ]


def test_the_same_share_of_bad_records_stops_the_run(small_tokenizer, tmp_path, capsys):
    """The control for the test above: rows with an image that is missing (bad records) at the
    same 6 % do stop a run with the default budget, so the budget is really judged there."""
    path, images = paper_data.llava_mix665k(tmp_path, rows=50, text_only=0)
    rows = json.loads(path.read_text())
    for i in (10, 26, 42):
        rows[i]["image"] = "coco/train2017/missing.jpg"
    path.write_text(json.dumps(rows))
    out = tmp_path / "run"
    flags = llava_flags(path, images)
    assert main(["train", "--out", str(out), "--max-steps", "4", *_tiny(small_tokenizer), *flags]) == 1
    assert "3 of 50 records (6.00%) were bad" in capsys.readouterr().err
