"""LLaVA conversation JSON becomes (question, answer) pairs with a decoded image, or a BadRecord."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data_files import CORRUPT, pixels, png_bytes

from segros.data.llava import I2TRecord, LlavaConversations, parse_turns
from segros.data.readers import BadRecord


def human(text: str) -> dict:
    return {"from": "human", "value": text}


def gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


def write(tmp_path: Path, entries: list) -> LlavaConversations:
    (tmp_path / "conv.json").write_text(json.dumps(entries))
    return LlavaConversations(tmp_path / "conv.json", tmp_path / "images")


@pytest.fixture
def images(tmp_path: Path) -> dict[str, np.ndarray]:
    (tmp_path / "images" / "coco").mkdir(parents=True)
    arrays = {"coco/a.png": pixels(1), "b.png": pixels(2)}
    for name, arr in arrays.items():
        (tmp_path / "images" / name).write_bytes(png_bytes(arr))
    (tmp_path / "images" / "corrupt.png").write_bytes(CORRUPT)
    return arrays


def test_single_and_multi_turn(tmp_path: Path, images) -> None:
    ds = write(
        tmp_path,
        [
            {
                "id": "one",
                "image": "coco/a.png",
                "conversations": [human("<image>\nWhat is this?"), gpt("A cat.")],
            },
            {
                "id": "multi",
                "image": "b.png",
                "conversations": [
                    human("How many squares?\n<image>"),
                    gpt("Two."),
                    {"from": "user", "value": "What colour?"},
                    {"from": "assistant", "value": " Blue. "},
                ],
            },
        ],
    )
    assert len(ds) == 2
    first, second = ds[0], ds[1]
    assert isinstance(first, I2TRecord) and isinstance(second, I2TRecord)
    np.testing.assert_array_equal(np.asarray(first.image), images["coco/a.png"])
    assert first.turns == [("What is this?", "A cat.")]
    assert second.turns == [("How many squares?", "Two."), ("What colour?", "Blue.")]
    assert "multi" in second.key


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"id": "m", "image": "missing.png", "conversations": [human("q"), gpt("a")]}, "not found"),
        ({"id": "c", "image": "corrupt.png", "conversations": [human("q"), gpt("a")]}, "cannot decode"),
        ({"id": "n", "image": "b.png", "conversations": [human("q")]}, "no answer"),
        ({"id": "e", "image": "b.png", "conversations": [human("q"), gpt("  ")]}, "no answer"),
        ({"id": "tail", "image": "b.png", "conversations": [human("q"), gpt("a"), human("q2")]}, "no answer"),
        ({"id": "g", "image": "b.png", "conversations": [gpt("a"), human("q")]}, "answer without a question"),
        ({"id": "hh", "image": "b.png", "conversations": [human("q"), human("q"), gpt("a")]}, "second human"),
        ({"id": "r", "image": "b.png", "conversations": [{"from": "system", "value": "x"}]}, "unknown role"),
        ({"id": "v", "image": "b.png", "conversations": [{"from": "human"}, gpt("a")]}, "string 'value'"),
        ({"id": "s", "image": "b.png", "conversations": ["q", "a"]}, "malformed turns"),
        ({"id": "none", "image": "b.png"}, "malformed turns"),
        ({"id": "empty", "image": "b.png", "conversations": []}, "malformed turns"),
        ({"id": "i", "image": 3, "conversations": [human("q"), gpt("a")]}, "not a path"),
        ("just a string", "not a JSON object"),
    ],
)
def test_bad_records(tmp_path: Path, images, entry, reason: str) -> None:
    record = write(tmp_path, [entry])[0]
    assert isinstance(record, BadRecord), record
    assert reason in record.reason


def test_parse_turns_raises_value_error() -> None:
    assert parse_turns([human("<image>"), gpt("caption")]) == [("", "caption")]
    with pytest.raises(ValueError, match="no answer"):
        parse_turns([human("q")])


def test_text_only_rows_are_left_out_and_counted_apart(tmp_path: Path, images) -> None:
    entries = [
        {"id": "t", "conversations": [human("hi"), gpt("hello")]},
        {"id": "one", "image": "coco/a.png", "conversations": [human("<image>\nWhat?"), gpt("A cat.")]},
        {"id": "null", "image": None, "conversations": [human("hi"), gpt("hello")]},
        {"id": "c", "image": "corrupt.png", "conversations": [human("q"), gpt("a")]},
    ]
    ds = write(tmp_path, entries)
    assert (len(ds), ds.text_only) == (2, 2)
    assert isinstance(ds[0], I2TRecord) and "conv.json[1]" in ds[0].key  # keys keep the file position
    assert isinstance(ds[1], BadRecord) and "conv.json[3]" in ds[1].key  # still a bad record
    with pytest.raises(ValueError, match="text-only"):
        write(tmp_path, [entries[0]])


def test_not_a_list_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "conv.json").write_text(json.dumps({"id": "x"}))
    with pytest.raises(ValueError, match="JSON list"):
        LlavaConversations(tmp_path / "conv.json", tmp_path)
