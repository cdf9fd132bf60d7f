"""A backbone on disk: the construction and save / load skeleton every adapter shares, and the
helpers that read weights into a module (used by every adapter's ``weights.py``).

Three ways to make a backbone, chosen by :meth:`BackboneFiles.from_options` from the config's
``model:`` section (docs/write-a-backbone.md):

- ``init_from`` names a folder :meth:`~BackboneFiles.save_pretrained` wrote: :meth:`from_pretrained`,
  which checks the folder and calls the adapter's :meth:`from_saved`;
- ``init_from`` names anything else (a hub id, a folder of upstream's files): the adapter's
  :meth:`from_upstream` reads the published checkpoint;
- no ``init_from``: the adapter's :meth:`build`, random weights.

The helpers are the same for every adapter: :func:`load_exact` (a state dict that must fit a
module key for key), :func:`unwrap` (the state dict inside a loaded ``torch.load`` file),
:func:`load_weights` / :func:`plain_state` (safetensors in and out, shards included) and
:func:`saved_config`.
"""

from __future__ import annotations

import fnmatch
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from pydantic import BaseModel
from safetensors.torch import save_file
from torch import nn

from segros.storage import resolve_checkpoint

WEIGHTS_INDEX = "model.safetensors.index.json"


def saved_config(folder: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a folder :meth:`BackboneFiles.save_pretrained` wrote (it names its
    backbone), or None for anything else (a hub id, an upstream release folder, a missing path)."""
    file = Path(folder).expanduser() / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None
    return config if isinstance(config, dict) and "backbone" in config else None


def plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as safetensors stores it: contiguous CPU tensors, where a tensor sharing
    storage with an earlier one (a tied output head) becomes a copy of its own."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone().contiguous() if key in seen else v.contiguous()
        seen.add(key)
    return out


def _sharded(folder: Path, name: str) -> bool:
    return name == "model.safetensors" and (folder / WEIGHTS_INDEX).is_file()


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The state dict a folder holds: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` lists (``segros export --format hub``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / WEIGHTS_INDEX
    if not (folder / "model.safetensors").is_file() and index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state |= load_file(str(folder / shard))
        return state
    return load_file(str(folder / "model.safetensors"))


def load_exact(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    what: str,
    *,
    ignore: Sequence[str] = (),
    assign: bool = False,
) -> None:
    """Load ``state`` into ``module``, failing with one message (naming ``what``) on any missing
    or unexpected key or other shape, except keys matching an ``ignore`` pattern (fnmatch: what
    the adapter recomputes rather than stores, e.g. rotary ``inv_freq``). ``assign`` assigns the
    tensors (so a module built on the meta device gets them; they keep the file's dtype)."""

    def ignored(key: str) -> bool:
        return any(fnmatch.fnmatch(key, p) for p in ignore)

    own = module.state_dict()
    missing = [k for k in own if k not in state and not ignored(k)]
    extra = [k for k in state if k not in own and not ignored(k)]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        wrong = [(k, tuple(state[k].shape)) for k in shapes[:5]]
        parts = [f"missing {len(missing)} (e.g. {missing[:5]})" if missing else "",
                 f"unexpected {len(extra)} (e.g. {extra[:5]})" if extra else "",
                 f"other shapes {wrong}" if shapes else ""]  # fmt: skip
        raise ValueError(f"{what}: the weights do not fit the model: {'; '.join(p for p in parts if p)}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=assign)


def unwrap(state: Any, source: Any) -> dict[str, torch.Tensor]:
    """The flat state dict inside a loaded checkpoint file (``source`` names it in the error): the
    dict under ``model`` / ``state_dict`` / ``module`` of a wrapper (``{"model": ...}`` as
    ``kl16.ckpt``, xtuner's ``state_dict``), or the dict itself; DeepSpeed's ``module.`` prefix
    dropped."""
    if isinstance(state, dict):
        for key in ("model", "state_dict", "module"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


class BackboneFiles(ABC):
    """Construction and storage of a :class:`~segros.backbones.base.Backbone`: the skeleton
    (``from_options``, ``from_pretrained``, ``save_pretrained``) and the adapter's hooks
    (``build``, ``from_upstream``, ``from_saved``, ``architecture``, ``save_components``)."""

    __slots__ = ()  # a mixin of an nn.Module: adds no instance layout (FSDP2 swaps the class)

    #: the registry name (``model.name``), written as ``backbone`` into a saved ``config.json``
    name: ClassVar[str]
    #: the pydantic schema of the config's ``model:`` section
    Options: ClassVar[type[Any]]
    #: options that only change how a loaded model runs: a config's values replace a saved
    #: checkpoint's when ``init_from`` reloads it (every other option is the checkpoint's)
    reload_options: ClassVar[frozenset[str]] = frozenset({"caption_dropout"})
    #: what a folder :meth:`save_pretrained` wrote holds besides ``config.json``
    saved_files: ClassVar[tuple[str, ...]] = ("model.safetensors",)

    options: BaseModel

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: BaseModel) -> Self:
        """The backbone a config's ``model:`` section asks for: a segros folder ``init_from`` names
        (or a run folder's newest checkpoint), reloaded with the config's :attr:`reload_options`;
        another ``init_from``, the published checkpoint (:meth:`from_upstream`); none, random
        weights (:meth:`build`)."""
        folder = resolve_checkpoint(options.init_from) if options.init_from else None  # a run: its newest
        if folder is not None and saved_config(folder) is not None:
            runtime = options.model_dump(include=set(cls.reload_options))
            return cls.from_pretrained(folder, **runtime)
        if options.init_from:
            return cls.from_upstream(options.init_from, options)
        return cls.build(options)

    @classmethod
    @abstractmethod
    def build(cls, options: BaseModel) -> Self:
        """Random weights of the architecture ``options`` describe (``init_from`` is None)."""

    @classmethod
    def from_upstream(cls, source: str, options: BaseModel) -> Self:
        """The published checkpoint ``source`` names (a hub id or a folder of upstream's files,
        ``model.init_from``), in upstream's layout (the adapter's ``weights.py``); every file is
        located before anything is built, so a missing one stops at once naming it. A backbone
        without a published release refuses (the default)."""
        folder = Path(source)
        if (folder / "checkpoints").is_dir():
            raise FileNotFoundError(f"{source} is a run folder with no complete checkpoint yet")
        missing = [f for f in ("config.json", *cls.saved_files) if not (folder / f).exists()]
        raise FileNotFoundError(
            f"{source} is not a {cls.name} checkpoint (missing {', '.join(missing)}), and {cls.name} "
            "has no published release to read"
        )

    # --- storage: config.json names the backbone, its architecture and options ------------------
    def save_pretrained(
        self,
        path: str | Path,
        max_shard_size: int | str | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write ``model.safetensors`` (the module's state dict, or ``state_dict``: the full one a
        sharded engine gathered), :meth:`save_components` and, last, ``config.json``
        (``backbone``, :meth:`architecture`, ``options``) to ``path``. With ``max_shard_size`` the
        weights are cut into ``model-0000k-of-0000n.safetensors`` shards with a
        ``model.safetensors.index.json`` (huggingface_hub's layout, as the Hub serves it)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = plain_state(self.state_dict() if state_dict is None else state_dict)
        if max_shard_size is None:
            save_file(state, str(path / "model.safetensors"))
        else:
            from huggingface_hub import save_torch_state_dict

            save_torch_state_dict(state, str(path), max_shard_size=max_shard_size)
        self.save_components(path)
        config = {"backbone": self.name, **self.architecture(), "options": self.options.model_dump()}
        (path / "config.json").write_text(json.dumps(config, indent=2))

    def save_components(self, path: Path) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Files a reload needs besides the weights and config (tokenizers, a VAE kept outside the
        module tree); none by default."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """The ``config.json`` entries (besides backbone and options) :meth:`from_saved` rebuilds
        the modules from."""

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> Self:
        """Load a folder :meth:`save_pretrained` wrote, ``overrides`` replacing saved options; a
        path that is no such folder goes to :meth:`from_options` as ``init_from`` (an upstream
        release, for the backbones that read one)."""
        folder = Path(path).expanduser()
        config = saved_config(folder)
        if config is None:
            return cls.from_options(cls.Options(**{**overrides, "init_from": str(path)}))
        if config["backbone"] != cls.name:
            raise ValueError(f"{folder} holds a {config['backbone']!r} checkpoint, not {cls.name}")
        missing = [f for f in cls.saved_files if not (folder / f).exists() and not _sharded(folder, f)]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a complete {cls.name} checkpoint: missing {', '.join(missing)}"
            )
        unknown = sorted(set(config["options"]) - set(cls.Options.model_fields))
        if unknown:  # e.g. an option renamed since (docs/design.md lists the renames)
            raise ValueError(
                f"{folder / 'config.json'} has options the {cls.name} backbone does not know: "
                f"{', '.join(unknown)} (saved by an older segros? docs/design.md, 'Saved option names', "
                "lists the renamed ones: rename them in that file)"
            )
        options = cls.Options(**{**config["options"], **overrides, "init_from": None})
        return cls.from_saved(folder, config, options)

    @classmethod
    @abstractmethod
    def from_saved(cls, folder: Path, config: dict[str, Any], options: BaseModel) -> Self:
        """The backbone rebuilt from a saved ``config.json`` (with ``options`` already merged), its
        weights loaded from ``folder`` (:func:`load_weights`)."""
