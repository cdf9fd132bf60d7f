"""Image-to-text (I2T) examples in the LLaVA conversation JSON format.

The file is a JSON list of::

    {"id": "...", "image": "relative/path.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"},
                       {"from": "gpt", "value": "Answer"}, ...]}

Turns must alternate human/gpt starting with human; each record becomes a
list of (question, answer) pairs. The ``<image>`` placeholder is removed
from questions because each model adapter inserts its own image tokens.
Like the image-caption readers, an unusable record is returned as a
``BadRecord`` rather than raised.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from segros.data.readers import BadRecord, read_image_file

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
_HUMAN = ("human", "user")
_GPT = ("gpt", "assistant")


@dataclass(frozen=True)
class I2TRecord:
    """One image with its conversation as (question, answer) pairs."""

    image: Image.Image
    turns: list[tuple[str, str]]
    key: str


def parse_turns(conversations: Any) -> list[tuple[str, str]]:
    """Turn LLaVA ``conversations`` into (question, answer) pairs; raise ValueError if malformed."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("malformed turns: 'conversations' is not a non-empty list")
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for n, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"malformed turns: turn {n} is not an object with a string 'value'")
        role, value = turn.get("from"), turn["value"]
        if role in _HUMAN:
            if question is not None:
                raise ValueError(f"malformed turns: turn {n} is a second human turn in a row")
            question = value.replace(IMAGE_TOKEN, "").strip()
        elif role in _GPT:
            if question is None:
                raise ValueError(f"malformed turns: turn {n} is an answer without a question")
            answer = value.strip()
            if not answer:
                raise ValueError(f"no answer: turn {n} is empty")
            pairs.append((question, answer))
            question = None
        else:
            raise ValueError(f"malformed turns: turn {n} has unknown role {role!r}")
    if question is not None:
        raise ValueError("no answer: the last question has no answer" if pairs else "no answer")
    return pairs


class LlavaConversations:
    """Map-style reader of a LLaVA conversation JSON file; images are resolved under ``image_root``.

    Text-only records (no ``image`` field, or ``null``: about 6 % of LLaVA's mix665k, its ShareGPT
    conversations) are left out when the file is read and counted apart (``text_only``, logged
    once), not read as bad records: the image-to-text loss every backbone here trains
    (``prepare_i2t``) conditions the answer on an image, so a text-only row has nothing for it to
    learn from, and counting it as bad would stop a run under the default 1 % budget. Indices
    run over the records with an image; keys keep each record's position in the file.
    """

    def __init__(self, json_path: str | Path, image_root: str | Path) -> None:
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        with self.json_path.open(encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{self.json_path}: expected a JSON list of conversations")
        if not data:
            raise ValueError(f"{self.json_path}: no conversations")
        # (position in the file, record) of every record that is not text-only
        self.entries: list[tuple[int, Any]] = [
            (n, e) for n, e in enumerate(data) if not (isinstance(e, dict) and e.get("image") is None)
        ]
        self.text_only = len(data) - len(self.entries)
        if self.text_only:
            log.info(
                "%s: leaving out %d text-only conversations of %d (%.1f%%): image-to-text training "
                "needs an image (docs/data.md)",
                self.json_path.name, self.text_only, len(data), 100 * self.text_only / len(data),
            )  # fmt: skip
        if not self.entries:
            raise ValueError(f"{self.json_path}: all {len(data)} conversations are text-only (no 'image')")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> I2TRecord | BadRecord:
        i, entry = self.entries[i]
        if not isinstance(entry, dict):
            return BadRecord(f"{self.json_path.name}[{i}]", "malformed record: not a JSON object")
        key = f"{self.json_path.name}[{i}] id={entry.get('id')!r}"
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            return BadRecord(key, f"malformed record: 'image' is {image!r}, not a path")
        try:
            turns = parse_turns(entry.get("conversations"))
        except ValueError as e:
            return BadRecord(key, str(e))
        decoded = read_image_file(self.image_root / image)
        if isinstance(decoded, str):
            return BadRecord(key, decoded)
        return I2TRecord(image=decoded, turns=turns, key=key)
