"""`segros inspect`: the picture is written through the CLI, with and without a checkpoint;
bad inputs give clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from segros.cli import main
from segros.data.shapes import ShapesWorld

CAPTION = "a red circle and a blue square"


@pytest.fixture(scope="module")
def checkpoint(small_tokenizer, tmp_path_factory):
    from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions

    torch.manual_seed(0)
    backbone = TinyBackbone.from_options(TinyOptions(image_size=32, image_tokenizer=str(small_tokenizer)))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    backbone.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A 96 px JPEG (not the model's size, not PNG): the command must resize any PIL image."""
    scene = ShapesWorld(image_size=96, seed=0).scene(1)
    path = tmp_path_factory.mktemp("img") / "scene.jpg"
    Image.fromarray(scene.image).save(path, quality=95)
    return path


def _run(capsys, *argv):
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _check_picture(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        array = np.asarray(im.convert("RGB"))
    assert 800 <= w <= 3000 and 600 <= h <= 2000
    assert array.std() > 20  # not a blank canvas
    # The three bar colours of panel (b) are present: kept (orange) and dropped (grey) tokens.
    assert (np.abs(array.astype(int) - (0xE8, 0x71, 0x0A)).sum(-1) < 12).sum() > 200
    assert (np.abs(array.astype(int) - (0xB0, 0xB0, 0xB0)).sum(-1) < 6).sum() > 200


def test_inspect_with_a_checkpoint(capsys, checkpoint, image_file, tmp_path):
    out_png = tmp_path / "sub" / "inspect.png"
    code, out, err = _run(
        capsys, "--image", image_file, "--caption", CAPTION, "--checkpoint", checkpoint, "--out", out_png
    )
    assert code == 0, err
    assert f"wrote {out_png}" in out
    _check_picture(out_png)
    # 32 px, 4 px patches -> 64 tokens; eta 0.3 -> 19 hints; gamma 0.8 -> 51 masked, 13 seen.
    assert "hints 19, seen 13, masked 51" in out
    kept = out.split("kept words (")[1].split("\n")[0]
    count, words = kept.split("): ")
    assert count == "2/7"  # rho 0.4 of 7 caption words -> floor(2.8) = 2
    assert set(words.split()) <= set(CAPTION.split())
    assert f"model: checkpoint {checkpoint}" in out


def test_out_may_be_a_folder(capsys, checkpoint, image_file, tmp_path):
    folder = tmp_path / "pictures"
    code, out, err = _run(
        capsys, "--image", image_file, "--caption", CAPTION, "--checkpoint", checkpoint, "--out", folder
    )
    assert code == 0, err
    _check_picture(folder / "segros-inspect.png")
    assert f"wrote {folder / 'segros-inspect.png'}" in out


def test_inspect_knobs_change_the_counts(capsys, checkpoint, image_file, tmp_path):
    code, out, err = _run(
        capsys, "--image", image_file, "--caption", CAPTION, "--checkpoint", checkpoint,
        "--out", tmp_path / "x.png", "--mask-ratio", "0.5", "--hint-ratio", "0.1", "--text-keep-ratio", "1.0",
    )  # fmt: skip
    assert code == 0, err
    assert "hints 6, seen 32, masked 32" in out
    assert "kept words (7/7)" in out


def test_inspect_without_checkpoint_uses_an_untrained_tiny_model(
    capsys, image_file, tmp_path, monkeypatch, small_tokenizer
):
    # The default model fits its tokenizer once and caches it (about a minute, tested in
    # test_image_tokenizer.py); here the cache entry is the session's small tokenizer.
    from segros.backbones.tiny.image_tokenizer import tokenizer_cache_path

    monkeypatch.setenv("SEGROS_CACHE", str(tmp_path / "cache"))
    cached = tokenizer_cache_path(32, 4096)
    cached.parent.mkdir(parents=True)
    shutil.copy(small_tokenizer, cached)
    out_png = tmp_path / "fresh.png"
    code, out, err = _run(capsys, "--image", image_file, "--caption", CAPTION, "--out", out_png)
    assert code == 0, err
    assert "untrained" in out
    _check_picture(out_png)
    assert "hints 19, seen 13, masked 51" in out  # default tiny model: 32 px, 8x8 tokens


def test_unknown_words_are_named_but_known_ones_still_work(capsys, checkpoint, image_file, tmp_path):
    code, out, err = _run(
        capsys, "--image", image_file, "--caption", "a red xylophone", "--checkpoint", checkpoint,
        "--out", tmp_path / "x.png",
    )  # fmt: skip
    assert code == 0, err
    assert "words unknown to the model (read as <unk>): xylophone" in out


@pytest.mark.parametrize(
    ("caption", "message"),
    [("", "caption is empty"), ("   ", "caption is empty"), ("zorblax quux!", "'zorblax', 'quux'")],
)
def test_bad_captions(capsys, checkpoint, image_file, tmp_path, caption, message):
    code, out, err = _run(
        capsys,
        "--image",
        image_file,
        "--caption",
        caption,
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "x.png",
    )
    assert code == 2
    assert message in err
    assert not (tmp_path / "x.png").exists()


def test_bad_images(capsys, checkpoint, tmp_path):
    code, _, err = _run(
        capsys, "--image", tmp_path / "nope.png", "--caption", CAPTION, "--checkpoint", checkpoint
    )
    assert code == 2 and "image file not found" in err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    code, _, err = _run(capsys, "--image", broken, "--caption", CAPTION, "--checkpoint", checkpoint)
    assert code == 2 and "cannot decode" in err


def test_bad_checkpoint_and_ratios(capsys, image_file, tmp_path):
    code, _, err = _run(capsys, "--image", image_file, "--caption", CAPTION, "--checkpoint", tmp_path)
    assert code == 2 and "config.json" in err
    code, _, err = _run(capsys, "--image", image_file, "--caption", CAPTION, "--mask-ratio", "1.5")
    assert code == 2 and "mask-ratio" in err
    code, _, err = _run(capsys, "--image", image_file, "--caption", CAPTION, "--hint-ratio", "-1")
    assert code == 2 and "hint_ratio" in err


def test_any_backbone_with_the_grounding_seam_can_be_inspected():
    """No text tokenizer, other grid: labels fall back to token numbers."""
    from test_pointing import SIZE, StubBackbone

    from segros.apps.inspection import inspect_grounding, inspection_figure

    scene = ShapesWorld(image_size=SIZE, seed=0).scene(2)
    stub = StubBackbone("objects", grid=(4, 4))
    ins = inspect_grounding(stub, scene.image, scene.caption, mask_ratio=0.75, hint_ratio=0.25)
    n_words = len(scene.caption.split())
    assert ins.words == [f"t{j}" for j in range(n_words)]
    assert ins.hint_idx.size == 4 and int(ins.seen.sum()) == 4
    assert ins.scores.shape == (16,) and ins.intra.shape == (n_words,)
    picture = inspection_figure(ins, "stub")
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[0] > 500
