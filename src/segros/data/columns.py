"""Which column of an image-caption table holds the image and which the caption.

The paper's datasets name them differently (``jpg``/``txt`` in WebDataset shards, ``prompt`` in
MidjourneyV6, ``output_image``/``input_prompt`` in ShareGPT-4o-Image; docs/data.md): the configured
name wins when the table has it, else the first known alternative is read and logged.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Names the paper's datasets (and common hub datasets) give their image and caption columns, tried
# in order when the configured name is not a column (docs/data.md lists which dataset uses which).
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img", "output_image")
CAPTION_COLUMNS = ("caption", "prompt", "txt", "text", "input_prompt")
LINK_COLUMNS = ("image_url", "url", "URL")  # image links (MidjourneyV6's release): not readable as images


def resolve_columns(names: list[str], image_column: str, caption_column: str, where: str) -> tuple[str, str]:
    """The image and caption columns to read among ``names``: each configured one if present,
    else the first known alternative (logged); a ``ValueError`` naming the columns if none is."""
    chosen = []
    wanted_columns = (("image", image_column, IMAGE_COLUMNS), ("caption", caption_column, CAPTION_COLUMNS))
    for kind, wanted, known in wanted_columns:
        if wanted in names:
            chosen.append(wanted)
            continue
        found = next((c for c in known if c in names), None)
        links = [c for c in names if c in LINK_COLUMNS]
        if found is None and kind == "image" and links:
            raise ValueError(
                f"{where} holds links to images (column {links[0]!r}), not images: download them first, "
                f"e.g. img2dataset --url_col {links[0]} --caption_col {caption_column} --output_format "
                "webdataset, and set data.files.path to the shards it writes (docs/data.md)"
            )
        if found is None:
            raise ValueError(
                f"{where} has no {kind} column {wanted!r} (nor any of {list(known)}); its columns are "
                f"{names}: set data.files.{kind}_column"
            )
        log.info("%s: no column %r, reading the %s from %r", where, wanted, kind, found)
        chosen.append(found)
    return chosen[0], chosen[1]
