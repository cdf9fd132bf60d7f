"""``segros export RUN --format merged|upstream|hub --out DIR``: a run's weights for other tools.

RUN is a run folder (its newest complete checkpoint), a checkpoint folder or a
``checkpoints/latest`` file; a LoRA run is merged first (peft's ``merge_and_unload``) in every
format.

- ``merged`` (also ``--merge``): a LoRA run's adapter folded into a plain segros model folder,
  which ``segros generate`` / ``eval`` / ``inspect`` and ``model.init_from`` read like any other.
- ``upstream``: the files upstream's own code loads: Show-o as the folder ``Showo.from_pretrained``
  reads (``config.json`` + ``pytorch_model.safetensors``), Harmon and OpenUni as the ``.pth`` their
  inference scripts load (trained parts only, upstream's key names; a plain dict of tensors). The
  parts upstream loads from their own repos (VAE, towers, tokenizer) are referenced, not copied:
  ``segros-export.json`` and the printed summary name where they come from.
- ``hub``: a folder for ``huggingface_hub.upload_folder``: sharded safetensors with an index, the
  config and tokenizer files, and a model card (README.md, :mod:`segros.model_card`); segros's
  ``load_backbone`` reads it back. ``--push REPO`` uploads it when the Hub is reachable.

``--weights ema`` writes, in any format, the run's EMA of the trained weights (``optim.ema_decay``;
:mod:`segros.train.ema`) instead of the trained weights themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

FORMATS = ("merged", "upstream", "hub")
MANIFEST = "segros-export.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder, checkpoint folder or checkpoints/latest")
    parser.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="what to write (see above)")
    parser.add_argument("--merge", action="store_true", help="same as --format merged")
    parser.add_argument(
        "--max-shard-size", default="5GB", help="--format hub: largest weights file (default 5GB)"
    )
    parser.add_argument("--push", metavar="REPO", default=None, help="--format hub: upload to this Hub repo")
    parser.add_argument("--private", action="store_true", help="--push: create the repo private")
    parser.add_argument(
        "--weights",
        choices=("raw", "ema"),
        default="raw",
        help="export the trained weights (raw, default) or their EMA (ema: runs with optim.ema_decay)",
    )


def run(args: argparse.Namespace) -> int:
    fmt = args.format or ("merged" if args.merge else None)
    if fmt is None:
        print(f"segros export: choose --format ({', '.join(FORMATS)}) or --merge", file=sys.stderr)
        return 2
    if args.merge and fmt != "merged":
        print("segros export: --merge is --format merged; drop one of them", file=sys.stderr)
        return 2
    if args.push and fmt != "hub":
        print("segros export: --push needs --format hub", file=sys.stderr)
        return 2
    from segros.backbones.lora import has_adapter
    from segros.backbones.registry import load_backbone, resolve_checkpoint

    folder = resolve_checkpoint(args.run)
    if fmt == "merged" and not has_adapter(folder):
        raise ValueError(
            f"{folder} has no LoRA adapter (adapter/adapter_config.json): nothing to merge; "
            "it already is a model folder"
        )
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty")
    # merges a LoRA adapter (segros.backbones.lora.merge_adapter); --weights ema: the EMA over the weights
    backbone = load_backbone(folder, weights=args.weights)
    if fmt == "merged":
        backbone.save_pretrained(out)
        print(f"merged {folder} into {out}")
        return 0
    if fmt == "upstream":
        written = export_upstream(backbone, out)
        manifest = {"source": str(folder), "backbone": backbone.name, "weights": args.weights, **written}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        print(f"wrote {', '.join(written['files'])} to {out} in upstream's layout")
        for what, where in written["references"].items():
            print(f"  upstream loads {what} separately: {where}")
        return 0
    export_hub(backbone, folder, out, args.max_shard_size, weights=args.weights)
    print(f"wrote a Hub folder to {out} (sharded weights, config, README.md model card)")
    if args.push:
        return push(out, args.push, args.private)
    return 0


def export_upstream(backbone: Any, out: Path) -> dict[str, Any]:
    """Write ``backbone`` in its upstream release layout (the inverse of each adapter's loader,
    kept beside it); returns ``{"files": [...], "references": {part: folder or hub id}}``."""
    if backbone.name == "showo":
        from segros.backbones.showo.weights import write_upstream
    elif backbone.name == "harmon":
        from segros.backbones.harmon.weights import write_upstream
    elif backbone.name == "openuni":
        from segros.backbones.openuni.weights import write_upstream
    elif backbone.name == "bagel":
        from segros.backbones.bagel.weights import write_upstream
    else:
        raise ValueError(
            f"backbone {backbone.name!r} has no upstream release layout (showo, harmon, openuni, bagel do)"
        )
    return write_upstream(backbone, out)


def export_hub(
    backbone: Any, checkpoint: Path, out: Path, max_shard_size: int | str = "5GB", weights: str = "raw"
) -> None:
    """``save_pretrained`` with sharded weights, plus README.md (:func:`segros.model_card.build_card`);
    ``weights`` says which the backbone holds (``raw``, or ``ema``: recorded in the card)."""
    from segros.model_card import build_card, run_facts

    backbone.save_pretrained(out, max_shard_size=max_shard_size)
    config = json.loads((out / "config.json").read_text())
    facts = run_facts(Path(checkpoint)) | {"weights": weights}
    build_card(config, facts).save(str(out / "README.md"))


def hub_unreachable() -> str | None:
    """Why the Hub cannot be used right now (offline mode), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return "HF_HUB_OFFLINE is set"
    return None


def push(out: Path, repo: str, private: bool = False) -> int:
    """Upload ``out`` to ``repo``; one clear line and exit status 1 when the Hub is not reachable."""
    later = f"upload it later with `hf upload {repo} {out}`"
    if reason := hub_unreachable():
        print(f"segros export: not pushed to {repo}: {reason}; {later}", file=sys.stderr)
        return 1
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo, commit_message="segros export")
    except Exception as e:  # no network, no token, no permission: say which, keep the folder
        detail = str(e).splitlines()[0] if str(e) else ""
        print(
            f"segros export: not pushed to {repo}: the Hub is not reachable or refused "
            f"({type(e).__name__}: {detail}); {later}",
            file=sys.stderr,
        )
        return 1
    print(f"pushed {out} to https://huggingface.co/{repo}")
    return 0
