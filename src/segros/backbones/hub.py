"""Find a published checkpoint's files: in a local folder, in the Hugging Face cache, or on the Hub.

Real backbones name their weights by where they were published (``showlab/show-o``,
``wusize/harmon``). A user may instead point the config at a local copy. Either way this module
returns local paths, or stops at once with a message that names every missing file and says how
to point the config at a local copy; it never returns a partial set. With ``HF_HUB_OFFLINE=1``
(as in CI) nothing is downloaded: files already in the cache are used, anything else is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class MissingCheckpointError(FileNotFoundError):
    """A checkpoint's files are neither in the given folder nor obtainable from the Hub."""


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def resolve_files(
    source: str | Path,
    files: Sequence[str],
    what: str,
    config_key: str,
    optional: Sequence[str] = (),
) -> dict[str, Path]:
    """Local paths of ``files`` (and of whichever ``optional`` files exist) from ``source``.

    ``source`` is a folder or a hub id (``owner/name``). ``what`` names the checkpoint in the
    message and ``config_key`` is the config entry a user sets to point at a local copy.
    """
    source_str = str(source)
    folder = Path(source_str).expanduser()
    if folder.is_dir():
        found = {f: folder / f for f in [*files, *optional] if (folder / f).is_file()}
        missing = [f for f in files if f not in found]
        if missing:
            raise MissingCheckpointError(
                f"{what}: {folder} lacks {', '.join(missing)}. Put the published files there, or set "
                f"{config_key} to a hub id or another folder that has them."
            )
        return found
    if not _looks_like_hub_id(source_str):
        raise MissingCheckpointError(
            f"{what}: {source_str!r} is neither an existing folder nor a hub id (owner/name). "
            f"Set {config_key} to a local folder holding {', '.join(files)}."
        )
    return _from_hub(source_str, files, optional, what, config_key)


def _from_hub(
    repo_id: str, files: Sequence[str], optional: Sequence[str], what: str, config_key: str
) -> dict[str, Path]:
    from huggingface_hub import hf_hub_download

    found: dict[str, Path] = {}
    missing: list[str] = []
    reasons: list[str] = []
    for name in [*files, *optional]:
        try:
            found[name] = Path(hf_hub_download(repo_id, name))
        except Exception as error:  # offline, not cached, no such repo or file, no network
            if name in files:
                missing.append(name)
                reasons.append(f"{name}: {type(error).__name__}")
    if missing:
        raise MissingCheckpointError(
            f"{what}: could not obtain {', '.join(missing)} from the Hugging Face Hub repo "
            f"{repo_id!r} ({'; '.join(reasons)}). Download them on a machine with access "
            f"(e.g. `huggingface-cli download {repo_id} {' '.join(missing)} --local-dir DIR`) and set "
            f"{config_key}=DIR."
        )
    return found
